"""Follow, the worker's step after the fusion: each source's results in frame order get their tracks,
counts and device overlay; the overlay's colours follow the tracks; a reconnect or a timestamp going
back ends every track of that source and counts nothing across the gap."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from helpers import boxes_frame

from streamer.frames import LABEL_DIVISOR, Category, Frame, Line, Panoptic
from streamer.inference.counting import Counter
from streamer.inference.tracking import TrackingParams
from streamer.inference.worker import Follow, Fused
from streamer.outputs.render import Renderer

CATEGORIES = (Category(1, "road", False, (128, 64, 128)), Category(2, "sky", False, (70, 130, 180)),
              Category(3, "car", True, (0, 0, 142)), Category(4, "person", True, (220, 20, 60)))
NAMES = {c.id: c.name for c in CATEGORIES}
CAR = 3
SIZE = (120, 200)  # H, W
TRACKING = TrackingParams(True, "ocsort", 2.0, 1)
GATE = Line("gate", (100, 0), (100, 120))  # pointing down: "in" is towards smaller x


def fused(index: int, boxes, source: str = "cam0", connection: int = 0, pts_ms: float | None = None) -> Fused:
    """A frame's fusion result with per-frame ids (things numbered by rank), and the image and map as the
    models' device holds them (its own memory, as on a GPU)."""
    panoptic, segments = boxes_frame(boxes, SIZE)
    image = np.random.default_rng(index).integers(0, 256, (*SIZE, 3), np.uint8)
    frame = Frame(source, index, image, index * 100.0 if pts_ms is None else pts_ms, time.time(), time.monotonic(), connection)
    return Fused(Panoptic(frame, panoptic.copy(), segments), torch.from_numpy(image), torch.from_numpy(panoptic))


def crossing_cars(index: int):
    """Two cars on their own rows: the upper one drives right, the lower one left. The per-frame ids
    number them from the left, so the two swap ids once they pass each other (frame 18)."""
    return sorted([(CAR, 10 + 4 * index, 10, 30, 20), (CAR, 150 - 4 * index, 70, 30, 20)], key=lambda box: box[1])


def renderer() -> Renderer:
    return Renderer(CATEGORIES, LABEL_DIVISOR, 0.6, True, False, 0.5)


def test_tracks_counts_and_the_device_overlay_follow_each_car_while_its_rank_changes():
    follow = Follow(TRACKING, LABEL_DIVISOR, {"cam0": Counter([GATE], [], NAMES)},
                    renderer().device_overlay(torch.device("cpu")))
    by_row: dict[int, set] = {10: set(), 70: set()}
    events = []
    for index in range(30):
        step = fused(index, crossing_cars(index))
        out = follow(step)
        cars = [s for s in out.segments if s.isthing]
        assert len(cars) == 2 and all(s.track_id is not None for s in cars), "min_hits 1: tracked from the first frame"
        for car in cars:
            by_row[car.box[1]].add((car.track_id, car.id))
            assert (out.panoptic_map == car.id).sum() == car.area, "the map holds the segment's new value"
        # The overlay drawn on the device is the host's overlay of the tracked map: colours come from the track.
        host = renderer().overlay(step.result.frame.image, out.panoptic_map, ())
        assert np.array_equal(out.drawn, host)
        assert "tracking" in out.timings
        events += out.events
    assert all(len(ids) == 1 for ids in by_row.values()), by_row
    assert len({ids.pop() for ids in by_row.values()}) == 2
    assert [(e.name, e.category, e.direction) for e in events] == [("gate", "car", "in"), ("gate", "car", "out")]
    counts = out.counts
    assert counts.objects_total == {"car": 2} and counts.visible == {"car": 2}
    assert counts.line_crossings == {("gate", "car", "in"): 1, ("gate", "car", "out"): 1}


@pytest.mark.parametrize("gap", ["reconnect", "timestamp back"])
def test_a_gap_ends_the_tracks_and_counts_no_crossing_over_it(gap):
    follow = Follow(TRACKING, LABEL_DIVISOR, {"cam0": Counter([GATE], [], NAMES)})
    before = [follow(fused(index, [(CAR, 86, 40, 20, 20)])) for index in range(3)]  # just left of the gate
    after = fused(3, [(CAR, 92, 40, 20, 20)], connection=1 if gap == "reconnect" else 0,
                  pts_ms=300.0 if gap == "reconnect" else 50.0)  # just right of it after the gap
    out = follow(after)
    old, new = before[-1].segments[-1].track_id, out.segments[-1].track_id
    assert old is not None and new is not None and new != old, "a new track after the gap"
    assert out.events == () and out.counts.line_crossings == {}, "nothing crossed: the car was not seen moving"
    assert out.counts.objects_total == {"car": 2}, "the tracks before the gap stay counted"
    assert before[-1].drawn is None, "no overlay given: the host draws"


def test_each_source_has_its_own_tracks_and_untracked_sources_pass_through():
    follow = Follow(TRACKING, LABEL_DIVISOR, {"cam0": Counter([GATE], [], NAMES), "cam1": None})
    for index in range(6):  # the sources' frames interleave, as in the worker
        a = follow(fused(index, crossing_cars(index), source="cam0"))
        b = follow(fused(index, crossing_cars(index), source="cam1"))
        assert [(s.id, s.track_id) for s in a.segments] == [(s.id, s.track_id) for s in b.segments], "independent trackers"
    assert a.counts is not None and b.counts is None and b.events == ()
    off = Follow(None, LABEL_DIVISOR)
    step = fused(0, crossing_cars(0))
    out = off(step)
    assert all(s.track_id is None for s in out.segments) and out.segments == step.result.segments
    assert np.array_equal(out.panoptic_map, step.result.panoptic_map) and out.counts is None


def test_speeds_follow_each_track_in_stream_time_and_end_with_a_reconnect():
    from streamer.analytics.calibration import GroundPlane
    from streamer.analytics.speed import SpeedEstimator

    plane = GroundPlane.from_points([[0, 0], [200, 0], [200, 120], [0, 120]], [[0, 0], [20, 0], [20, 12], [0, 12]])  # 0.1 m a pixel
    follow = Follow(TRACKING, LABEL_DIVISOR, speeds={"cam0": SpeedEstimator(plane, 1.0, 0.6, 250 / 3.6)})
    shown = []
    for index in range(12):  # 2 px down the frame every 100 ms: 2 m/s
        out = follow(fused(index, [(CAR, 90, 10 + 2 * index, 20, 10)]))
        (car,) = [s for s in out.segments if s.isthing]
        shown.append(out.speeds.get(car.track_id))
    assert shown[:6] == [None] * 6 and all(s is not None and s.mps == pytest.approx(2.0) for s in shown[6:])
    after = follow(fused(12, [(CAR, 90, 34, 20, 10)], connection=1, pts_ms=1200.0))
    assert after.speeds == {}  # a reconnect: no speed across the gap
