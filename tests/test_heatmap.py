"""Occupancy heatmaps (streamer.analytics.heatmap) on hand-made maps."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from streamer.analytics.heatmap import Heatmap, cell_size, colorize, png, sample
from streamer.boxes import of_mask
from streamer.frames import Segment

CAR, PERSON, ROAD = 5, 6, 1


def segments_of(panoptic: np.ndarray) -> list[Segment]:
    out = []
    for value in np.unique(panoptic):
        category = int(value) // 1000
        mask = panoptic == value
        thing = category in (CAR, PERSON)
        out.append(Segment(int(value), category, thing, None, int(mask.sum()), of_mask(mask), int(value) % 1000 or None))
    return out


def frame_with(*things: tuple[int, int, int, int, int]) -> np.ndarray:
    """A 12 x 16 road with things (id, x0, y0, x1, y1) painted in order."""
    panoptic = np.full((12, 16), ROAD * 1000, np.int32)
    for value, x0, y0, x1, y1 in things:
        panoptic[y0:y1, x0:x1] = value
    return panoptic


def test_counts_are_exact_at_full_resolution():
    heatmap = Heatmap({CAR: "car", PERSON: "person"}, max_width=16)
    first = frame_with((5001, 2, 3, 6, 7), (6001, 10, 0, 12, 12))
    second = frame_with((5001, 4, 3, 8, 7))
    for t, panoptic in enumerate((first, second)):
        heatmap.add(panoptic, segments_of(panoptic), float(t))
    snap = heatmap.snapshot()
    assert snap is not None and snap.cell == 1 and snap.frames == 2
    expected = np.zeros((12, 16), np.float32)
    expected[3:7, 2:6] += 1
    expected[3:7, 4:8] += 1
    assert np.array_equal(snap.masks["car"], expected)
    assert snap.masks["person"].sum() == 24 and set(snap.masks) == {"car", "person"}  # stuff is not mapped
    assert snap.occupancy("car")[3, 4] == 1.0 and snap.occupancy("car")[3, 2] == 0.5
    assert snap.ground["car"][7, 4] == 1 and snap.ground["car"][7, 6] == 1  # the boxes' bottom centres (x, y1)
    assert snap.ground["person"][11, 11] == 1  # a ground point on the frame's bottom edge stays in the last row


def test_reduced_resolution_samples_each_cells_centre_pixel():
    rng = np.random.default_rng(3)
    for _ in range(30):
        height, width = (int(v) for v in rng.integers(5, 40, 2))
        panoptic = np.full((height, width), ROAD * 1000, np.int32)
        for k in range(1, 4):
            y0, x0 = int(rng.integers(0, height)), int(rng.integers(0, width))
            panoptic[y0 : int(rng.integers(y0 + 1, height + 1)), x0 : int(rng.integers(x0 + 1, width + 1))] = CAR * 1000 + k
        max_width = int(rng.integers(1, width + 1))
        heatmap = Heatmap({CAR: "car"}, max_width=max_width)
        heatmap.add(panoptic, segments_of(panoptic), 0.0)
        snap = heatmap.snapshot()
        assert snap is not None and snap.cell == cell_size(width, max_width) and snap.shape[1] <= max_width
        reference = (sample(panoptic, snap.cell) // 1000 == CAR).astype(np.float32)
        assert np.array_equal(snap.masks.get("car", np.zeros_like(reference)), reference)


def test_cell_size_keeps_the_grid_within_max_width():
    assert cell_size(1920, 480) == 4 and cell_size(1920, 481) == 4 and cell_size(1921, 480) == 5 and cell_size(640, 640) == 1
    with pytest.raises(ValueError):
        cell_size(0, 10)


def test_decay_halves_a_count_every_half_life():
    heatmap = Heatmap({CAR: "car"}, max_width=16, half_life_s=2.0)
    car = frame_with((5001, 0, 0, 4, 4))
    empty = frame_with()
    heatmap.add(car, segments_of(car), 10.0)
    heatmap.add(empty, segments_of(empty), 12.0)
    snap = heatmap.snapshot()
    assert snap is not None
    assert snap.masks["car"][0, 0] == pytest.approx(0.5)  # one half-life old
    assert snap.frames == pytest.approx(1.5)
    heatmap.add(empty, segments_of(empty), 16.0)
    assert heatmap.snapshot().masks["car"][0, 0] == pytest.approx(0.125)  # three half-lives


def test_decay_survives_rebasing_over_a_long_run():
    heatmap = Heatmap({CAR: "car"}, max_width=16, half_life_s=1.0)
    car = frame_with((5001, 0, 0, 4, 4))
    for t in range(100):  # 2^100: rebased on the way
        heatmap.add(car, segments_of(car), float(t))
    snap = heatmap.snapshot()
    assert snap is not None and snap.occupancy("car")[0, 0] == pytest.approx(1.0)
    assert snap.frames == pytest.approx(2.0, rel=1e-6)  # 1 + 1/2 + 1/4 + ...


def test_a_new_frame_size_starts_over():
    heatmap = Heatmap({CAR: "car"}, max_width=100)
    car = frame_with((5001, 0, 0, 4, 4))
    heatmap.add(car, segments_of(car), 0.0)
    bigger = np.full((20, 30), ROAD * 1000, np.int32)
    heatmap.add(bigger, segments_of(bigger), 1.0)
    snap = heatmap.snapshot()
    assert snap is not None and snap.size == (30, 20) and snap.frames == 1 and snap.masks == {}


def test_nothing_before_the_first_frame_and_bad_settings_are_refused():
    assert Heatmap({CAR: "car"}).snapshot() is None
    with pytest.raises(ValueError):
        Heatmap({CAR: "car"}, half_life_s=0.0)
    with pytest.raises(ValueError):
        Heatmap({CAR: "car"}, max_width=0)


def test_the_picture_is_resized_cell_by_cell_and_blended_only_where_there_is_something():
    values = np.array([[0.0, 1.0], [0.5, 0.0]], np.float32)
    picture = colorize(values, size=(4, 4))
    assert picture.shape == (4, 4, 3) and np.array_equal(picture[0, 2], picture[1, 3])  # nearest neighbour: whole cells
    background = np.full((4, 4, 3), 200, np.uint8)
    over = colorize(values, size=(4, 4), background=background)
    assert np.array_equal(over[0, 0], background[0, 0]) and not np.array_equal(over[0, 3], background[0, 3])
    decoded = cv2.imdecode(np.frombuffer(png(values, size=(4, 4)), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decoded, picture)
