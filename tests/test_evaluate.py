"""PQ / SQ / RQ and the baseline fusions, checked on tiny maps worked out by hand.

Maps are written as category_id * 1000 + instance_id (0 = void). Unless a test says otherwise,
category 1 is stuff and category 2 a thing.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import random_rectangles

from streamer.frames import Category
from streamer.inference.fusion import FusionParams, fuse
from streamer.inference.masks import BoxMasks
from streamer.inputs.synthetic import CATEGORIES, StreetScene
from streamer.tools.baselines import naive_fusion, semantic_only
from streamer.tools.pq import PQAccumulator, format_pq_table, match_frame

TABLE = {1: False, 2: True}
DIVISOR = 1000  # the label divisor the maps below are written with


def pq_of(*frames, table=TABLE):
    acc = PQAccumulator(table, DIVISOR)
    for pred, gt in frames:
        acc.add(np.array(pred), np.array(gt))
    return acc.result()


def cls(result, category_id):
    return next(c for c in result.per_class if c.category_id == category_id)


# --------------------------------------------------------------------------------------------
# PQ on hand-made maps


def test_perfect_prediction_scores_one():
    gt = [[1000, 1000, 1000, 1000],
          [1000, 2001, 2001, 1000],
          [2002, 2002, 1000, 1000]]
    r = pq_of((gt, gt))
    for group in (r.all, r.things, r.stuff):
        assert (group.pq, group.sq, group.rq) == (1.0, 1.0, 1.0)
    assert (r.all.n, r.things.n, r.stuff.n) == (2, 1, 1)
    assert (cls(r, 2).tp, cls(r, 2).fp, cls(r, 2).fn) == (2, 0, 0)


def test_missed_instance_is_a_false_negative():
    gt = [[1000, 1000, 2001, 2001],
          [1000, 1000, 2002, 2002]]
    pred = [[1000, 1000, 2001, 2001],
            [1000, 1000, 0, 0]]  # 2002 not found
    r = pq_of((pred, gt))
    thing = cls(r, 2)
    assert (thing.tp, thing.fp, thing.fn) == (1, 0, 1)
    # PQ = 1 / (1 + 0 + 1/2) = 2/3; SQ = 1; RQ = 2/3.
    assert thing.pq == pytest.approx(2 / 3) and thing.sq == 1.0 and thing.rq == pytest.approx(2 / 3)
    assert cls(r, 1).pq == 1.0
    assert r.all.pq == pytest.approx((1 + 2 / 3) / 2)


def test_false_positive_counts_and_costs_the_stuff_some_iou():
    gt = [[1000] * 4] * 4
    pred = [[1000, 1000, 1000, 1000],
            [1000, 2001, 2001, 1000],
            [1000, 1000, 1000, 1000],
            [1000, 1000, 1000, 1000]]
    r = pq_of((pred, gt))
    thing, stuff = cls(r, 2), cls(r, 1)
    assert (thing.tp, thing.fp, thing.fn) == (0, 1, 0)
    assert (thing.pq, thing.sq, thing.rq) == (0.0, 0.0, 0.0)  # it occurs, so it counts in the mean
    assert stuff.tp == 1 and stuff.iou_sum == pytest.approx(14 / 16)  # inter 14, union 14 + 16 - 14
    assert r.all.n == 2 and r.all.pq == pytest.approx(14 / 16 / 2)


def test_false_positive_mostly_on_void_is_ignored():
    gt = [[0, 0, 1000, 1000],
          [0, 0, 1000, 1000]]
    pred = [[2001, 2001, 1000, 1000],
            [2001, 0, 2001, 1000]]  # 2001: 3 of its 4 pixels on GT void
    r = pq_of((pred, gt))
    thing = cls(r, 2)
    assert (thing.tp, thing.fp, thing.fn) == (0, 0, 0) and thing.pq is None
    assert r.things.n == 0 and r.things.pq is None
    # stuff: pred 3 px, gt 4 px, inter 3, none of the stuff prediction on void -> IoU 3/4
    assert cls(r, 1).iou_sum == pytest.approx(3 / 4)
    assert r.all.n == 1 and r.all.pq == pytest.approx(3 / 4)
    match = match_frame(np.array(pred), np.array(gt), DIVISOR)
    assert match.ignored.tolist() == [2001] and match.false_positives.tolist() == []


def test_false_positive_exactly_half_on_void_still_counts():
    gt = [[0, 0, 1000, 1000]]
    pred = [[0, 2001, 2001, 1000]]  # 2001: 1 of 2 pixels on void, not more than half
    assert cls(pq_of((pred, gt)), 2).fp == 1


def test_iou_of_exactly_one_half_is_not_a_match():
    gt = [[2001, 2001, 2001, 2001, 1000, 1000]]
    pred = [[2001, 2001, 1000, 1000, 1000, 1000]]  # inter 2, union 2 + 4 - 2 = 4
    r = pq_of((pred, gt))
    assert (cls(r, 2).tp, cls(r, 2).fp, cls(r, 2).fn) == (0, 1, 1)
    pred = [[2001, 2001, 2001, 1000, 1000, 1000]]  # inter 3, union 4: IoU 0.75 matches
    r = pq_of((pred, gt))
    assert (cls(r, 2).tp, cls(r, 2).fp, cls(r, 2).fn) == (1, 0, 0)
    assert cls(r, 2).iou_sum == pytest.approx(0.75)


def test_void_pixels_are_left_out_of_the_union():
    gt = [[2001, 2001, 0, 0, 1000]]
    pred = [[2001, 2001, 2001, 2001, 1000]]  # larger than GT only over void
    r = pq_of((pred, gt))
    assert cls(r, 2).tp == 1 and cls(r, 2).iou_sum == 1.0  # union 4 + 2 - 2 - 2 = 2
    # Over void *and* over stuff: union 5 + 2 - 2 - 2 = 3.
    gt = [[2001, 2001, 0, 0, 1000, 1000]]
    pred = [[2001, 2001, 2001, 2001, 2001, 1000]]
    assert match_frame(np.array(pred), np.array(gt), DIVISOR).matched_iou.tolist() == pytest.approx([2 / 3])


def test_same_pixels_different_category_do_not_match():
    table = {1: False, 2: True, 3: True}
    gt = [[3001, 3001, 1000]]
    pred = [[2001, 2001, 1000]]
    r = pq_of((pred, gt), table=table)
    assert (cls(r, 2).fp, cls(r, 3).fn, cls(r, 2).tp + cls(r, 3).tp) == (1, 1, 0)


def test_mean_only_over_classes_that_occur_and_things_stuff_split():
    table = {1: False, 2: True, 3: True, 4: False, 5: True, 6: False}  # 5 and 6 never occur
    frame_a = ([[1000, 1000, 2001, 2001],      # pred
                [1000, 1000, 0, 0]],
               [[1000, 1000, 2001, 2001],      # gt: stuff 1 perfect; thing 2 one TP, one FN
                [1000, 1000, 2002, 2002]])
    frame_b = ([[4000, 4000, 4000, 4000],
                [4000, 4000, 3001, 3001]],
               [[4000] * 4, [4000] * 4])       # stuff 4 IoU 6/8; thing 3 one FP
    r = pq_of(frame_a, frame_b, table=table)
    assert r.frames == 2
    assert [c.category_id for c in r.per_class] == [1, 2, 3, 4, 5, 6]
    assert cls(r, 5).pq is None and cls(r, 6).pq is None
    # per class (PQ, SQ, RQ): 1 -> (1, 1, 1); 2 -> (2/3, 1, 2/3); 3 -> (0, 0, 0); 4 -> (3/4, 3/4, 1)
    assert r.things.n == 2
    assert (r.things.pq, r.things.sq, r.things.rq) == pytest.approx((1 / 3, 1 / 2, 1 / 3))
    assert r.stuff.n == 2
    assert (r.stuff.pq, r.stuff.sq, r.stuff.rq) == pytest.approx((7 / 8, 7 / 8, 1))
    assert r.all.n == 4
    assert (r.all.pq, r.all.sq, r.all.rq) == pytest.approx(((1 + 2 / 3 + 0 + 3 / 4) / 4, (1 + 1 + 0 + 3 / 4) / 4,
                                                            (1 + 2 / 3 + 0 + 1) / 4))


def test_category_missing_from_the_table_is_an_error():
    acc = PQAccumulator(TABLE, DIVISOR)
    with pytest.raises(ValueError, match="category id 7"):
        acc.add(np.array([[7001, 1000]]), np.array([[1000, 1000]]))
    assert acc.frames == 0


def test_result_is_plain_json_and_formats_as_a_table():
    cats = [Category(1, "road", False, (0, 0, 0)), Category(2, "car", True, (0, 0, 0)),
            Category(3, "person", True, (0, 0, 0))]
    acc = PQAccumulator(cats, DIVISOR)
    acc.add(np.array([[1000, 2001, 0]]), np.array([[1000, 2001, 2002]]))
    result = acc.result()
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["all"]["n"] == 2 and data["things"]["n"] == 1
    assert data["per_class"][2] == {"category_id": 3, "name": "person", "isthing": True, "pq": None, "sq": None,
                                    "rq": None, "tp": 0, "fp": 0, "fn": 0, "iou_sum": 0.0}
    text = format_pq_table(result)
    assert "road" in text and "person" in text and "Things" in text and "n=2" in text
    assert "66.7" in text  # car: PQ = 1 / 1.5


# --------------------------------------------------------------------------------------------
# cross-check against a per-segment brute force on random maps


def brute_force(pred: np.ndarray, gt: np.ndarray, table: dict[int, bool]) -> dict[int, list]:
    """panopticapi's loop written from pixel masks: {category: [tp, fp, fn, iou_sum]}."""
    stats = {c: [0, 0, 0, 0.0] for c in table}
    pred_ids = [int(v) for v in np.unique(pred) if v]
    gt_ids = [int(v) for v in np.unique(gt) if v]
    void = gt == 0
    matched_pred, matched_gt = set(), set()
    for g in gt_ids:
        for p in pred_ids:
            if g // 1000 != p // 1000:
                continue
            pm, gm = pred == p, gt == g
            inter = np.sum(pm & gm)
            union = np.sum((pm | gm) & ~(pm & void))
            if inter / union > 0.5:
                stats[g // 1000][0] += 1
                stats[g // 1000][3] += inter / union
                matched_pred.add(p)
                matched_gt.add(g)
    for p in pred_ids:
        pm = pred == p
        if p not in matched_pred and np.sum(pm & void) / np.sum(pm) <= 0.5:
            stats[p // 1000][1] += 1
    for g in gt_ids:
        if g not in matched_gt:
            stats[g // 1000][2] += 1
    return stats


@pytest.mark.parametrize("seed", range(20))
def test_matches_a_brute_force_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    table = {1: False, 2: False, 3: True, 4: True}
    values = [0, 1000, 2000, 3001, 3002, 3003, 4001, 4002]
    acc = PQAccumulator(table, DIVISOR)
    expected = {c: [0, 0, 0, 0.0] for c in table}
    for _ in range(4):
        gt = random_rectangles(rng, np.full((12, 16), 1000, np.int32), values, 8)
        # The prediction: the GT with some rectangles redrawn, so near-misses and matches both occur.
        pred = random_rectangles(rng, gt, values + [3004, 4003], int(rng.integers(0, 5)))
        acc.add(pred, gt)
        for c, s in brute_force(pred, gt, table).items():
            expected[c] = [a + b for a, b in zip(expected[c], s)]
    for c in acc.result().per_class:
        tp, fp, fn, iou = expected[c.category_id]
        assert (c.tp, c.fp, c.fn) == (tp, fp, fn)
        assert c.iou_sum == pytest.approx(iou)


# --------------------------------------------------------------------------------------------
# baselines

IS_THING = np.array([False, False, False, False, False, True, True])  # ids 1-4 stuff, 5-6 things (as synthetic)


def test_naive_fusion_pastes_in_output_order_with_running_ids():
    semantic = np.array([[1, 1, 5, 5],
                         [1, 5, 5, 5],
                         [2, 2, 2, 5]])
    masks = np.zeros((3, 3, 4))
    masks[0, 0:2, 1:3] = 0.5   # car, probability exactly at the threshold: pasted
    masks[1, 1:3, 2:4] = 0.9   # person over part of the car: overwrites it
    masks[2, :, :] = 0.49      # below 0.5 everywhere: pastes nothing, still uses up id 5
    scores = np.array([0.3, 0.9, 0.8])  # ignored: no sorting, no threshold
    categories = np.array([5, 6, 5])
    out = naive_fusion(semantic, masks, scores, categories, IS_THING, 0.5, label_divisor=DIVISOR)
    assert out.dtype == np.int32
    assert out.tolist() == [[1000, 5003, 5003, 5000],
                            [1000, 5003, 6004, 6004],
                            [2000, 2000, 6004, 6004]]  # 5000: car pixels no mask covers, instance 0


def test_naive_fusion_takes_tensors_and_rejects_id_overflow():
    semantic = torch.ones((2, 2), dtype=torch.long)
    masks = torch.zeros((1, 2, 2), dtype=torch.bool)
    masks[0, 0, 0] = True
    out = naive_fusion(semantic, masks, torch.ones(1), torch.tensor([5]), torch.tensor(IS_THING), 0.5, label_divisor=DIVISOR)
    assert out.tolist() == [[5003, 1000], [1000, 1000]]
    with pytest.raises(ValueError, match="label_divisor"):
        naive_fusion(np.ones((2, 2)), np.zeros((998, 2, 2)), np.ones(998), np.full(998, 5), IS_THING, 0.5, label_divisor=DIVISOR)


def test_semantic_only_splits_thing_classes_into_connected_regions():
    semantic = np.array([[5, 1, 1, 6, 6],
                         [1, 5, 1, 1, 1],
                         [1, 1, 1, 5, 5],
                         [6, 1, 1, 1, 0]])
    out8 = semantic_only(semantic, IS_THING, label_divisor=DIVISOR)  # the two diagonal car pixels touch by a corner
    assert out8.tolist() == [[5001, 1000, 1000, 6001, 6001],
                             [1000, 5001, 1000, 1000, 1000],
                             [1000, 1000, 1000, 5002, 5002],
                             [6002, 1000, 1000, 1000, 0]]
    out4 = semantic_only(semantic, IS_THING, connectivity=4, label_divisor=DIVISOR)
    assert out4[0, 0] == 5001 and out4[1, 1] == 5002 and out4[2, 3] == 5003


def test_semantic_only_keeps_the_largest_regions_when_ids_run_out():
    # label_divisor 4 leaves instance ids 1..3; four regions of areas 1, 2, 3, 4.
    semantic = np.array([[2, 1, 2, 2, 1, 2, 2, 2, 1, 2, 2, 2, 2]])
    is_thing = np.array([False, False, True])
    out = semantic_only(semantic, is_thing, label_divisor=4)
    assert out.tolist() == [[8, 4, 9, 9, 4, 10, 10, 10, 4, 11, 11, 11, 11]]


# --------------------------------------------------------------------------------------------
# on a synthetic frame: perfect model outputs score 1 through every fusion


def perfect_outputs(gt: np.ndarray):
    """Semantic map and one full-confidence mask per GT instance, as a flawless model would give."""
    ids = [int(v) for v in np.unique(gt) if v and IS_THING[v // 1000]]
    masks = np.stack([gt == v for v in ids]) if ids else np.zeros((0, *gt.shape), bool)
    return gt // 1000, masks.astype(np.float32), np.ones(len(ids)), np.array([v // 1000 for v in ids])


def test_perfect_outputs_score_one_on_a_synthetic_frame():
    gt = StreetScene(seed=3, size=(192, 108)).render(40).panoptic
    semantic, masks, scores, categories = perfect_outputs(gt)
    assert len(masks) > 0
    fused, _ = fuse(torch.from_numpy(semantic), BoxMasks.from_dense(torch.from_numpy(masks)), torch.from_numpy(scores),
                    torch.from_numpy(categories), torch.from_numpy(IS_THING), FusionParams(0.5, 0.5, 0.5, stuff_area_min=0, label_divisor=1000))
    for pred in (fused.numpy(), naive_fusion(semantic, masks, scores, categories, IS_THING, 0.5, label_divisor=DIVISOR), gt):
        r = pq_of((pred, gt), table=CATEGORIES)
        assert (r.all.pq, r.all.sq, r.all.rq) == (1.0, 1.0, 1.0)
    # Semantic-only gets all stuff right; things only where no two instances of a class touch.
    r = pq_of((semantic_only(semantic, IS_THING, label_divisor=DIVISOR), gt), table=CATEGORIES)
    assert r.stuff.pq == 1.0
