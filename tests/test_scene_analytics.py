"""Time in zones and heatmaps through the pipeline's parts: Follow gives each result its zone times,
the export writes them on the segments, the metrics observe ended visits, the heatmap output writes
its files, the overlay shows times and the heatmap, and the config takes a zone's loitering_s."""
from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest
import torch
from helpers import boxes_frame

from streamer.analytics.heatmap import Heatmap
from streamer.analytics.zone_time import ZoneTimes
from streamer.config import load_config
from streamer.errors import ConfigError
from streamer.frames import LABEL_DIVISOR, Category, Frame, Panoptic, Zone, ZoneVisits
from streamer.inference.tracking import TrackingParams
from streamer.inference.worker import Follow, Fused
from streamer.outputs.export import PanopticExport, segment_info
from streamer.outputs.heatmap import HeatmapOutput, file_stem

CATEGORIES = (Category(1, "road", False, (128, 64, 128)), Category(3, "car", True, (0, 0, 142)))
NAMES = {c.id: c.name for c in CATEGORIES}
CAR = 3
SIZE = (120, 200)  # H, W
TRACKING = TrackingParams(True, "ocsort", 2.0, 1)
LEFT = Zone("left", ((0, 0), (60, 0), (60, 120), (0, 120)))


def fused(index: int, boxes) -> Fused:
    """Frame `index` (at index / 10 s) of boxes (category, x, y, w, h) on a road."""
    panoptic, segments = boxes_frame(boxes, SIZE)
    frame = Frame("cam0", index, np.zeros((*SIZE, 3), np.uint8), index * 100.0, time.time(), time.monotonic())
    return Fused(Panoptic(frame, panoptic.copy(), segments), None, None)


def test_follow_gives_each_result_its_tracks_time_in_zones():
    follow = Follow(TRACKING, LABEL_DIVISOR, zone_times={"cam0": ZoneTimes([LEFT], NAMES)})
    seen = []
    for index in range(12):  # a car driving right 8 px per 0.1 s: its ground point leaves x < 60 between frames 4 and 5
        out = follow(fused(index, [(CAR, 10 + 8 * index, 10, 30, 20)]))
        (car,) = [s for s in out.segments if s.isthing]
        assert out.zone_times is not None
        seen.append((out.zone_times.of(car.track_id), out.zone_times.ended))
    assert seen[0][0] == {"left": 0.0} and seen[3][0] == {"left": pytest.approx(0.3)}
    exits = [ended for _, ended in seen if ended]
    assert exits == [(("left", "car", pytest.approx(0.5)),)]  # ground x = 25 + 8 i: inside for frames 0-4, outside from 5
    assert seen[-1][0] == {"left": pytest.approx(0.5)}


def test_the_export_writes_each_things_zone_times(tmp_path):
    follow = Follow(TRACKING, LABEL_DIVISOR, zone_times={"cam0": ZoneTimes([LEFT], NAMES)})
    export = PanopticExport(tmp_path, (), images=False, overwrite=False)
    for index in range(3):
        out = follow(fused(index, [(CAR, 10, 10, 30, 20)]))
        export.write(out, None)
    export.close()
    last = json.loads((tmp_path / "segments.jsonl").read_text().splitlines()[-1])
    (car,) = [info for info in last["segments_info"] if "track_id" in info]
    assert car["zones"] == {"left": 0.2}
    assert "zones" not in segment_info(out.segments[0])  # stuff: none


def test_metrics_observe_each_ended_visit(tmp_path):
    from streamer import control as ctl
    from streamer.service.metrics import Metrics

    metrics = Metrics([], ctl.Control(), 60.0, torch.device("cpu"))
    frame = Frame("cam0", 0, np.zeros((4, 4, 3), np.uint8), 0.0, time.time(), time.monotonic())
    visits = ZoneVisits((), ("left",), np.zeros((0, 1)), (("left", "car", 2.5), ("left", "person", 40.0)))
    metrics.observe(Panoptic(frame, np.zeros((4, 4), np.int32), (), zone_times=visits), {})
    text = metrics.exposition()[1].decode()
    assert 'streamer_zone_time_seconds_count{source="cam0",zone="left"} 2.0' in text
    assert 'streamer_zone_time_seconds_bucket{le="5.0",source="cam0",zone="left"} 1.0' in text


def test_the_heatmap_output_writes_pictures_and_raw_counts_at_its_end(tmp_path):
    output = HeatmapOutput("cam0", Heatmap({CAR: "car", 9: "traffic light"}, max_width=100), tmp_path)
    for index in range(4):
        output.write(fused(index, [(CAR, 10, 10, 30, 20)]).result, None)
    output.close()
    counts = np.load(tmp_path / "heatmap-car.npy")
    meta = json.loads((tmp_path / "heatmap.json").read_text())
    assert meta["cell"] == 2 and meta["frames"] == 4 and meta["categories"] == ["car"] and counts.dtype == np.float32
    assert counts.shape == (60, 100) and counts.max() == 4 and counts.sum() == 4 * 15 * 10  # a 30 x 20 box: 15 x 10 cells
    ground = np.load(tmp_path / "heatmap-car-ground.npy")
    assert ground.sum() == 4 and ground[15, 12] == 4  # the box bottom centre (25, 30) at cell size 2
    picture = cv2.imread(str(tmp_path / "heatmap-car.png"))
    assert picture.shape == (60, 100, 3)
    assert file_stem("traffic light") == "heatmap-traffic_light" and file_stem("../x") == "heatmap-.._x"


def test_the_heatmap_overlay_colours_only_where_things_were(tmp_path):
    output = HeatmapOutput("cam0", Heatmap({CAR: "car"}, max_width=200), overlay=True)
    assert output.needs_picture
    rendered = np.full((120, 200, 3), 128, np.uint8)
    output.write(fused(0, [(CAR, 10, 10, 30, 20)]).result, rendered)
    assert (rendered[15, 20] != 128).any() and (rendered[100, 150] == 128).all()


def test_a_zone_takes_loitering_s_and_refuses_a_bad_one():
    config = load_config(None, ['source.zones={"door": {"points": [[0, 0], [10, 0], [0, 10]], "loitering_s": 30}, '
                                '"road": [[0, 0], [20, 0], [0, 20]]}'])
    zones = config.source.counting_zones()
    assert [(z.name, z.loitering_s) for z in zones] == [("door", 30.0), ("road", None)]
    with pytest.raises(ConfigError, match=r"source.zones.door.settings.loitering_s: Input should be greater than or equal to 0"):
        load_config(None, ['source.zones={"door": {"points": [[0, 0], [10, 0], [0, 10]], "loitering_s": -1}}'])
    with pytest.raises(ConfigError):
        load_config(None, ['source.zones={"door": {"points": [[0, 0], [10, 0], [20, 0]]}}'])  # on one line
