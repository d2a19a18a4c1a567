"""eval's time-in-zone and heatmap scores (streamer.tools.analytics_eval) on the synthetic street's own truth."""
from __future__ import annotations

import numpy as np
import pytest

from streamer.frames import Segment, Zone
from streamer.inputs.synthetic import CATEGORIES, StreetScene
from streamer.tools.analytics_eval import HeatmapScore, ZoneTimeScore, apply_homography, match_tracks, scene_zones

SAME = {c.id: c.id for c in CATEGORIES}


@pytest.fixture(scope="module")
def street():
    scene = StreetScene(3, (320, 180))
    return scene, [scene.render(i) for i in range(0, 90)]


def test_the_scenes_zones_are_the_ground_zones_seen_through_its_camera(street):
    scene, _ = street
    image, ground = scene_zones(scene)
    assert [z.name for z in image] == ["crosswalk", "lane"]
    for a, b in zip(image, ground):
        assert np.allclose(apply_homography(scene.ground_to_image(), np.array(b.points)), np.array(a.points))
    own = [Zone("mine", ((10, 150), (300, 150), (300, 170), (10, 170)))]
    image, ground = scene_zones(scene, own)
    assert image == own and np.allclose(apply_homography(scene.ground_to_image(), np.array(ground[0].points)), np.array(own[0].points))


def test_the_truth_scored_against_itself_agrees(street):
    scene, frames = street
    image, ground = scene_zones(scene)
    zones = ZoneTimeScore(image, ground, SAME)
    heat = HeatmapScore({c.id: c.name for c in CATEGORIES if c.isthing}, {c.id: c.name for c in CATEGORIES if c.isthing})
    for i, frame in enumerate(frames):
        zones.observe(i / 15, frame.panoptic, frame.segments, frame)
        heat.observe(i / 15, frame.panoptic, frame.segments, frame)
    assert heat.figures() == {"correlation": 1.0}
    figures = zones.figures()
    assert figures["zones"] == ["crosswalk", "lane"] and figures["pairs"] > 0
    assert figures["within_0_2s"] == 1.0  # cars on the road: the box's bottom and the true centre differ by a constant


def test_tracks_match_by_class_and_iou_of_one_half():
    truth = np.zeros((10, 10), np.int64)
    truth[0:4, 0:4] = 5001
    predicted = np.zeros((10, 10), np.int64)
    predicted[0:4, 0:2] = 5001  # IoU 8 / 16: a match
    predicted[6:10, 6:10] = 5002
    truth_segments = [Segment(5001, 5, True, None, 16, (0, 0, 4, 4), 77)]
    segments = [Segment(5001, 5, True, 0.9, 8, (0, 0, 2, 4), 1), Segment(5002, 5, True, 0.9, 16, (6, 6, 10, 10), 2)]
    assert match_tracks(predicted, segments, truth, truth_segments, SAME) == {1: 77}
    assert match_tracks(predicted, segments, truth, truth_segments, {5: 6}) == {}  # another class
    predicted[0:4, 0:2] = 0
    predicted[0:3, 0:2] = 5001  # IoU 6 / 16
    smaller = [Segment(5001, 5, True, 0.9, 6, (0, 0, 2, 3), 1)]
    assert match_tracks(predicted, smaller, truth, truth_segments, SAME) == {}


def test_visits_the_run_cut_are_left_out():
    from streamer.inputs.synthetic import GroundTruth

    square = [Zone("z", ((0, 0), (10, 0), (10, 10), (0, 10)))]
    score = ZoneTimeScore(square, square, SAME)
    paths = {7: (5, 5, 20, 20), 8: (20, 5, 5, 20)}  # 7 starts inside (cut), 8 enters and leaves while the run goes on
    for index in range(4):
        panoptic = np.zeros((30, 30), np.int64)
        segments, ground = [], []
        for n, (track, path) in enumerate(paths.items()):
            x, y = path[index], 3 + 3 * n  # its ground point: the bottom centre of a 2 x 2 box
            panoptic[y - 2:y, x - 1:x + 1] = 5000 + track
            segments.append(Segment(5000 + track, 5, True, 0.9, 4, (x - 1, y - 2, x + 1, y), track))
            ground.append(GroundTruth(track, 5, (float(x), float(y)), (0.0, 0.0)))
        score.add(index / 10, panoptic, segments, panoptic, segments, ground)
    assert score.figures() == {"within_0_2s": 1.0, "pairs": 1, "cut": 1, "zones": ["z"]}
