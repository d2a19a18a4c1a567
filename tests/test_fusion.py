"""Fusion: the project's tensor implementation against the plain loop of the Panoptic FPN rule
(streamer.tools.baselines.reference_fusion, which the bench also holds it to)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import mask_box

from streamer.inference.fusion import FusionParams, fuse
from streamer.inference.masks import BoxMasks
from streamer.tools.baselines import reference_fusion

DIV = 1000


def segment_table(panoptic):
    """id -> (area, box) computed from the pixels."""
    table = {}
    for value in np.unique(panoptic):
        if value == 0:
            continue
        mask = panoptic == value
        table[int(value)] = (int(mask.sum()), mask_box(mask))
    return table


def check_against_reference(semantic, masks, scores, categories, is_thing, params):
    panoptic, segments = fuse(
        torch.from_numpy(semantic), BoxMasks.from_dense(torch.from_numpy(masks)), torch.from_numpy(scores),
        torch.from_numpy(categories), torch.from_numpy(is_thing), params,
    )
    expected, expected_segments = reference_fusion(semantic, masks, scores, categories, is_thing, params)
    assert panoptic.dtype == torch.int32
    np.testing.assert_array_equal(panoptic.numpy(), expected)
    # The same segments in the same order (things by placement, with their scores; then stuff), and
    # they agree with the pixels.
    assert segments == expected_segments
    assert {s.id: (s.area, s.box) for s in segments} == segment_table(expected)
    for s in segments:
        assert s.category_id == s.id // params.label_divisor
        assert s.isthing == bool(is_thing[s.category_id])
    return panoptic.numpy(), segments


def random_case(rng: np.random.Generator):
    height, width = rng.integers(4, 60, size=2)
    num_categories = int(rng.integers(2, 8))
    is_thing = np.zeros(num_categories + 1, dtype=bool)
    is_thing[1:] = rng.random(num_categories) < 0.4
    if not is_thing[1:].any():
        is_thing[num_categories] = True
    thing_ids = np.nonzero(is_thing)[0]
    # Blocky semantic maps so stuff regions have varied areas around the minimum.
    block = int(rng.integers(1, 8))
    small = rng.integers(0, num_categories + 1, size=(height // block + 1, width // block + 1))
    semantic = np.kron(small, np.ones((block, block), dtype=np.int64))[:height, :width]
    n = int(rng.choice([0, 1, 2, 5, 20, 60, 120]))
    masks = np.zeros((n, height, width), dtype=np.float32)
    for i in range(n):
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        y1, x1 = y0 + rng.integers(0, height), x0 + rng.integers(0, width)
        masks[i, y0:y1, x0:x1] = rng.random((min(y1, height) - y0, min(x1, width) - x0))
    scores = rng.choice([0.3, 0.5, 0.7, 0.9], size=n) if rng.random() < 0.5 else rng.random(n)
    categories = rng.choice(thing_ids, size=n)
    params = FusionParams(
        score_threshold=float(rng.choice([0.0, 0.3, 0.5])),
        mask_threshold=float(rng.choice([0.3, 0.5, 0.7])),
        overlap_threshold=float(rng.choice([0.0, 0.2, 0.5, 0.8, 1.0])),
        stuff_area_min=int(rng.choice([0, 1, 10, 100])),
        label_divisor=DIV,
    )
    return semantic, masks, scores.astype(np.float32), categories.astype(np.int64), is_thing, params


@pytest.mark.parametrize("seed", range(250))
def test_matches_reference_on_random_cases(seed):
    check_against_reference(*random_case(np.random.default_rng(seed)))


@pytest.mark.parametrize("seed", range(20))
def test_matches_reference_when_a_category_runs_out_of_ids(seed):
    """label_divisor 3: ids 1 and 2 only; later instances of a category leave their pixels void."""
    semantic, masks, scores, categories, is_thing, params = random_case(np.random.default_rng(seed))
    params = FusionParams(params.score_threshold, params.mask_threshold, params.overlap_threshold, params.stuff_area_min, 3)
    panoptic, segments = check_against_reference(semantic, masks, scores, categories, is_thing, params)
    assert all(s.id % 3 in (1, 2) for s in segments if s.isthing)


# Hand-made cases. Categories: 1 road (stuff), 2 sky (stuff), 3 car (thing), 4 person (thing).
IS_THING = np.array([False, False, False, True, True])
ROAD, SKY, CAR, PERSON = 1, 2, 3, 4
P = FusionParams(score_threshold=0.5, mask_threshold=0.5, overlap_threshold=0.5, stuff_area_min=4, label_divisor=DIV)


def run(semantic, masks, scores, categories, params=P):
    return check_against_reference(
        np.asarray(semantic, dtype=np.int64), np.asarray(masks, dtype=np.float32).reshape(len(scores), *np.shape(semantic)),
        np.asarray(scores, dtype=np.float32), np.asarray(categories, dtype=np.int64), IS_THING, params,
    )


def box(shape, y0, y1, x0, x1, value=1.0):
    m = np.zeros(shape, dtype=np.float32)
    m[y0:y1, x0:x1] = value
    return m


def test_car_on_road_pixels_instance_wins():
    semantic = np.full((10, 10), ROAD)
    panoptic, segments = run(semantic, [box((10, 10), 2, 5, 2, 6)], [0.9], [CAR])
    assert (panoptic[2:5, 2:6] == CAR * DIV + 1).all()
    assert (panoptic == ROAD * DIV).sum() == 100 - 12
    assert [s.id for s in segments] == [CAR * DIV + 1, ROAD * DIV]


def test_semantic_car_pixels_without_instance_are_void():
    semantic = np.full((10, 10), ROAD)
    semantic[0:3, 0:3] = CAR
    panoptic, segments = run(semantic, np.zeros((0, 10, 10)), [], [])
    assert (panoptic[0:3, 0:3] == 0).all()
    assert {s.id for s in segments} == {ROAD * DIV}


def test_stuff_under_area_minimum_is_void():
    semantic = np.full((10, 10), ROAD)
    semantic[0, 0:3] = SKY  # 3 pixels < stuff_area_min 4
    panoptic, _ = run(semantic, np.zeros((0, 10, 10)), [], [])
    assert (panoptic[0, 0:3] == 0).all()
    semantic[0, 0:4] = SKY  # 4 pixels: kept
    panoptic, _ = run(semantic, np.zeros((0, 10, 10)), [], [])
    assert (panoptic[0, 0:4] == SKY * DIV).all()


def test_higher_score_placed_first_regardless_of_input_order():
    semantic = np.full((10, 10), ROAD)
    low = box((10, 10), 0, 5, 0, 5)
    high = box((10, 10), 0, 5, 3, 8)  # overlaps low on 10 of its 25 pixels -> 40 % <= 50 %
    panoptic, segments = run(semantic, [low, high], [0.6, 0.95], [CAR, CAR])
    assert (panoptic[0:5, 3:8] == CAR * DIV + 1).all()  # the 0.95 mask is car 1 and keeps its pixels
    assert (panoptic[0:5, 0:3] == CAR * DIV + 2).all()  # the 0.6 mask keeps only what was free
    assert [s.score for s in segments if s.isthing] == pytest.approx([0.95, 0.6])


def test_instance_mostly_covered_is_rejected():
    semantic = np.full((10, 10), ROAD)
    big = box((10, 10), 0, 6, 0, 6)
    inside = box((10, 10), 1, 4, 1, 5)  # fully covered by the higher-scoring mask
    partly = box((10, 10), 4, 8, 4, 8)  # 4 of 16 pixels covered: placed
    panoptic, segments = run(semantic, [big, inside, partly], [0.9, 0.8, 0.7], [CAR, PERSON, PERSON])
    ids = [s.id for s in segments if s.isthing]
    assert ids == [CAR * DIV + 1, PERSON * DIV + 1]
    assert (panoptic[6:8, 6:8] == PERSON * DIV + 1).all()


def test_below_score_threshold_and_empty_masks_are_dropped():
    semantic = np.full((10, 10), ROAD)
    panoptic, segments = run(
        semantic, [box((10, 10), 0, 3, 0, 3), box((10, 10), 0, 3, 0, 3, value=0.4), box((10, 10), 5, 8, 5, 8)],
        [0.49, 0.9, 0.8], [CAR, CAR, PERSON],
    )
    assert [s.id for s in segments if s.isthing] == [PERSON * DIV + 1]
    assert (panoptic[0:3, 0:3] == ROAD * DIV).all()


def test_three_hundred_instances_get_unique_ids_that_never_collide_with_categories():
    rng = np.random.default_rng(7)
    size = 120
    masks = np.zeros((300, size, size), dtype=np.float32)
    for i in range(300):  # a 20 x 15 grid of 6 x 8 tiles with a little overlap
        y, x = divmod(i, 15)
        masks[i, y * 6 : y * 6 + 7, x * 8 : x * 8 + 9] = 1.0
    scores = rng.random(300).astype(np.float32) * 0.5 + 0.5
    categories = np.where(np.arange(300) % 3 == 0, PERSON, CAR)
    panoptic, segments = run(np.full((size, size), ROAD), masks, scores, categories)
    things = [s for s in segments if s.isthing]
    assert len(things) == 300
    ids = [s.id for s in things]
    assert len(set(ids)) == 300
    assert all(s.id // DIV == s.category_id and 1 <= s.id % DIV < DIV for s in things)
    assert not set(ids) & {c * DIV for c in range(5)}
