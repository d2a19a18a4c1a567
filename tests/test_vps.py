"""Video panoptic metrics (STQ / AQ / SQ, VPQ_k, ID switches, oracle association) on toy sequences worked out by hand.

Maps are written as category_id * 1000 + instance_id (0 = void). Unless a test says otherwise,
category 1 (road) is stuff and category 2 (car) a thing. Each frame of a toy sequence is a
(pred, gt) pair of tiny maps; the comments give the hand computation.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from helpers import random_rectangles

from streamer.tools.pq import PQAccumulator, match_frame
from streamer.tools.vps import VideoPanopticAccumulator, combine_sequences, oracle_relabel

TABLE = {1: False, 2: True}
DIVISOR = 1000  # the label divisor the maps below are written with


def accumulate(frames, table=TABLE, windows=(0, 1), crowd=None):
    acc = VideoPanopticAccumulator(table, DIVISOR, windows=windows)
    for pred, gt in frames:
        acc.add(np.array(pred), np.array(gt), crowd=crowd)
    return acc


def evaluate(frames, **kwargs):
    return accumulate(frames, **kwargs).result()


def car_row(n_frames, ids_a, ids_b=None):
    """n_frames 1 x 6 frames: car A (GT 2001) at pixels 0-1, road at 2-3, car B (GT 2002) at 4-5.

    ids_a[t] / ids_b[t] is the predicted value of A / B at frame t; the masks are perfect.
    """
    frames = []
    for t in range(n_frames):
        gt = [[2001, 2001, 1000, 1000, 2002, 2002]]
        b = ids_b[t] if ids_b else 1000
        pred = [[ids_a[t], ids_a[t], 1000, 1000, b, b]]
        if not ids_b:
            gt = [[2001, 2001, 1000, 1000, 1000, 1000]]
        frames.append((pred, gt))
    return frames


# --------------------------------------------------------------------------------------------
# STQ, AQ, SQ, VPQ and switches on hand-made sequences


def test_perfect_sequence_scores_one_everywhere():
    # 16 frames so that every default window (k = 0, 5, 10, 15) has at least one whole window.
    frames = car_row(16, [2001] * 16, [2002] * 16)
    r = evaluate(frames, windows=(0, 5, 10, 15))
    assert (r.stq, r.aq, r.sq) == (1.0, 1.0, 1.0)
    assert r.vpq == {0: 1.0, 5: 1.0, 10: 1.0, 15: 1.0}
    assert (r.id_switches, r.matched_track_frames, r.gt_tracks, r.frames) == (0, 32, 2, 16)


def test_id_swap_between_two_objects():
    # Frames 0-1: A -> 2001, B -> 2002; frames 2-3 the predicted ids swap. Masks perfect.
    frames = car_row(4, [2001, 2001, 2002, 2002], [2002, 2002, 2001, 2001])
    r = evaluate(frames)
    # AQ: track A has |g| = 8 pixels. Pred 2001 has |p| = 8 (4 on A, 4 on B): TPA 4, FPA 4, FNA 4,
    # IoU_id = 4/12 = 1/3; pred 2002 the same. A: (4 * 1/3 + 4 * 1/3) / 8 = 1/3; B likewise. AQ = 1/3.
    assert r.aq == pytest.approx(1 / 3)
    assert r.sq == 1.0  # the categories are all right
    assert r.stq == pytest.approx(np.sqrt(1 / 3))
    # A and B each change predicted id once, at frame 2; 8 track-frames matched.
    assert (r.id_switches, r.matched_track_frames) == (2, 8)
    # VPQ_0 ignores ids: 1. VPQ_1, windows (0,1), (1,2), (2,3): in (1,2) the tube of A (4 px) shares
    # 2 px with tube 2001 (4 px), IoU 2/6, no match: car TP 4 (IoU 1 each), FP 2, FN 2 -> 4 / 6 = 2/3;
    # road 1. VPQ_1 = (1 + 2/3) / 2 = 5/6.
    assert r.vpq[0] == 1.0
    assert r.vpq[1] == pytest.approx(5 / 6)


def test_track_split_in_two_predicted_ids():
    # One car A over 4 frames (2 px each, |g| = 8); predicted 2001 in frames 0-2 and 2005 in frame 3.
    frames = car_row(4, [2001, 2001, 2001, 2005])
    r = evaluate(frames)
    # 2001: TPA 6, FPA 0, FNA 2, IoU_id 6/8 -> 6 * 6/8 = 4.5; 2005: TPA 2, FNA 6, IoU_id 2/8 -> 0.5.
    # AQ = (4.5 + 0.5) / 8 = 5/8.
    assert r.aq == pytest.approx(5 / 8)
    assert r.sq == 1.0
    assert (r.id_switches, r.matched_track_frames) == (1, 4)


CROWD_GT = [[1000, 2001, 2001, 1000],
            [2009, 2009, 2009, 2009]]  # row 1 is a crowd of cars when crowd={2009}
CROWD_PRED = [[1000, 2001, 2001, 1000],
              [2001, 2003, 2003, 0]]  # 2001 spills one pixel onto the crowd; 2003 lies on it; one void


def test_crowd_is_ignored_on_both_sides():
    r = evaluate([(CROWD_PRED, CROWD_GT)] * 3, crowd={2009})
    # AQ: the crowd is no track, and 2001's pixel on it leaves 2001: |g| = |p| = TPA = 6 -> AQ = 1.
    assert r.aq == 1.0 and r.gt_tracks == 1
    # VPQ_0 (panopticapi): A vs 2001: inter 2, union 3 + 2 - 2 = 3 (crowd is not void, it stays in the
    # union) -> TP with IoU 2/3; 2003 lies wholly on a car crowd -> not a false positive; the crowd is
    # no false negative. Car PQ 2/3, road 1 -> (1 + 2/3) / 2 = 5/6 per frame and window.
    assert r.vpq[0] == pytest.approx(5 / 6) and r.vpq[1] == pytest.approx(5 / 6)
    # SQ keeps crowd pixels in their category (deeplab2): car GT 6 px, predicted car 5 px, all on GT car,
    # the void pixel a false negative: IoU 5/6; road 1; void is no class. SQ = (1 + 5/6) / 2 = 11/12.
    assert r.sq == pytest.approx(11 / 12)
    assert (r.id_switches, r.matched_track_frames) == (0, 3)


def test_crowd_as_a_mask_equals_crowd_as_values():
    mask = np.array(CROWD_GT) == 2009
    by_mask = evaluate([(CROWD_PRED, CROWD_GT)] * 3, crowd=mask)
    by_value = evaluate([(CROWD_PRED, CROWD_GT)] * 3, crowd={2009})
    assert by_mask == by_value


def test_without_crowd_the_same_region_is_scored():
    r = evaluate([(CROWD_PRED, CROWD_GT)] * 3)
    # AQ: track A (|g| 6): 2001 |p| 9, TPA 6 -> IoU 6/9 -> 6 * 2/3 / 6 = 2/3. Track 2009 (|g| 12):
    # 2001 TPA 3 -> IoU 3/18 -> 0.5; 2003 TPA 6, |p| 6 -> IoU 6/12 -> 3; (0.5 + 3) / 12 = 7/24.
    # AQ = (2/3 + 7/24) / 2 = 23/48.
    assert r.aq == pytest.approx(23 / 48) and r.gt_tracks == 2
    # VPQ_0 per frame: A matched (IoU 2/3); 2009 (4 px) vs 2003 (2 px): IoU 2/4, no match -> FN and FP.
    # Car PQ = (2/3) / (1 + 1/2 + 1/2) = 1/3; VPQ = (1 + 1/3) / 2 = 2/3.
    assert r.vpq[0] == pytest.approx(2 / 3)
    assert r.sq == pytest.approx(11 / 12)  # unchanged: SQ does not look at crowd


def test_prediction_on_void_stays_in_its_track_size_but_crowd_does_not():
    gt = [[2001, 2001, 0]]
    pred = [[2001, 2001, 2001]]
    # On void: |p| = 3 per frame, TPA 2 -> IoU_id 2/3 -> AQ 2/3. On crowd (a GT crowd value there): AQ 1.
    assert evaluate([(pred, gt)] * 2).aq == pytest.approx(2 / 3)
    assert evaluate([(pred, [[2001, 2001, 2009]])] * 2, crowd={2009}).aq == 1.0


def test_class_error_hurts_sq_not_aq():
    table = {1: False, 2: True, 3: True}  # 3: truck
    # Car A (2 px) predicted as truck 3001 in all 3 frames, perfect mask; road perfect.
    frames = [([[3001, 3001, 1000, 1000]], [[2001, 2001, 1000, 1000]])] * 3
    r = evaluate(frames, table=table)
    assert r.aq == 1.0  # tracks keyed by full values, classes are SQ's business
    # SQ: road IoU 1, car 0/6, truck 0/6 -> 1/3. VPQ: car FN, truck FP, road 1 -> 1/3.
    assert r.sq == pytest.approx(1 / 3)
    assert r.stq == pytest.approx(np.sqrt(1 / 3))
    assert r.vpq[0] == pytest.approx(1 / 3)
    assert r.matched_track_frames == 0  # a different category never matches


def test_flickering_ids_lower_vpq_over_windows_not_per_frame():
    # Car A predicted with a perfect mask, its id alternating 2001, 2002, 2001, ... over 6 frames.
    frames = car_row(6, [2001, 2002] * 3)
    r = evaluate(frames, windows=(0, 1, 2, 5))
    assert r.vpq[0] == 1.0  # per frame every mask is right
    # k=1: tube of A 4 px, tubes 2001 and 2002 2 px each: IoU 1/2 is no match; car PQ 0 -> (1 + 0) / 2.
    assert r.vpq[1] == pytest.approx(1 / 2)
    # k=2: one id covers 2 of 3 frames: IoU 4/6, TP; the other FP: car (2/3) / 1.5 = 4/9 -> (1 + 4/9) / 2.
    assert r.vpq[2] == pytest.approx(13 / 18)
    assert r.vpq[5] == pytest.approx(1 / 2)  # 3 frames of 6 each: IoU 1/2, no match
    assert (r.id_switches, r.matched_track_frames) == (5, 6)
    assert r.aq == pytest.approx(1 / 2)  # (6 * 6/12 + 6 * 6/12) / 12
    pq = PQAccumulator(TABLE, DIVISOR)
    for pred, gt in frames:
        pq.add(np.array(pred), np.array(gt))
    assert pq.result().all.pq == r.vpq[0]


def test_short_sequence_has_no_long_windows_and_plain_json():
    r = evaluate(car_row(3, [2001] * 3), windows=(0, 5, 10, 15))
    assert r.vpq == {0: 1.0, 5: None, 10: None, 15: None}
    d = json.loads(json.dumps(r.to_dict()))
    assert d == {"stq": 1.0, "aq": 1.0, "sq": 1.0, "vpq": {"0": 1.0, "5": None, "10": None, "15": None},
                 "id_switches": 0, "matched_track_frames": 3}


def test_nothing_to_measure_gives_none():
    r = VideoPanopticAccumulator(TABLE, DIVISOR).result()
    assert (r.stq, r.aq, r.sq, r.vpq[0]) == (None, None, None, None)
    only_stuff = evaluate([([[1000, 1000]], [[1000, 1000]])])
    assert only_stuff.aq is None and only_stuff.sq == 1.0 and only_stuff.stq is None


def test_category_missing_from_the_table_is_an_error():
    acc = VideoPanopticAccumulator(TABLE, DIVISOR)
    with pytest.raises(ValueError, match="category id 7"):
        acc.add(np.array([[7001]]), np.array([[2001]]))
    with pytest.raises(ValueError, match="one shape"):
        acc.add(np.zeros((2, 2), np.int32), np.zeros((2, 3), np.int32))


def test_sequences_pool_aq_numerators_over_all_gt_tracks():
    perfect = accumulate(car_row(4, [2001] * 4))  # 1 track, AQ numerator 1
    swap = accumulate(car_row(4, [2001, 2001, 2002, 2002], [2002, 2002, 2001, 2001]))  # 2 tracks, 2 x 1/3
    r = combine_sequences([perfect, swap])
    assert r.aq == pytest.approx((1 + 2 / 3) / 3)  # not the mean of 1 and 1/3
    assert (r.gt_tracks, r.id_switches, r.matched_track_frames, r.frames) == (3, 2, 12, 8)
    # VPQ_1 pools windows: car TP 3 + 4, FP 2, FN 2 (IoU 1 each) -> 7 / 9; road 1.
    assert r.vpq[1] == pytest.approx((1 + 7 / 9) / 2)
    with pytest.raises(ValueError):
        combine_sequences([perfect, VideoPanopticAccumulator({1: False, 2: True, 3: True}, DIVISOR)])


# --------------------------------------------------------------------------------------------
# oracle association


def test_oracle_relabelling_reaches_the_aq_ceiling_of_flickering_ids():
    # GT: car A (2001, 4 px) and car B (2002, 1 px) on a 2 x 4 map. Prediction: A's mask misses one
    # pixel and spills onto one road pixel; B is found; an extra car 2099 lies on road; ids flicker.
    gt = [[2001, 2001, 1000, 2002],
          [2001, 2001, 1000, 1000]]
    frames = []
    for t in range(4):
        a, b = (2008, 2007) if t % 2 else (2007, 2008)  # A and B swap predicted ids every frame
        frames.append(([[a, a, a, b],
                        [a, 1000, 1000, 2099]], gt))
    flicker = evaluate(frames)
    tracks: dict[int, int] = {}
    oracle = evaluate([(oracle_relabel(np.array(p), np.array(g), TABLE, tracks, DIVISOR), g) for p, g in frames])
    # Ceiling: A's predicted masks pooled: |g| 16, |p| 16, TPA 12 -> IoU 12/20 -> 12 * 3/5 / 16 = 9/20;
    # B: TPA 4, |p| 4, |g| 4 -> 1. AQ = (9/20 + 1) / 2 = 29/40. 2099 overlaps no GT thing: it changes nothing.
    assert oracle.aq == pytest.approx(29 / 40)
    assert flicker.aq < oracle.aq
    assert tracks == {2001: 1, 2002: 2}
    relabelled = oracle_relabel(np.array(frames[0][0]), np.array(gt), TABLE, tracks, DIVISOR)
    assert relabelled.dtype == np.int32
    assert relabelled.tolist() == [[2001, 2001, 2001, 2002],
                                   [2001, 1000, 1000, 2999]]  # the unmatched car takes an id no track has


def test_oracle_keeps_the_predicted_category_and_ignores_crowd_and_stuff():
    table = {1: False, 2: True, 3: True}
    gt = np.array([[2005, 2005, 2009, 2009, 1000]])
    pred = np.array([[3004, 3004, 2001, 2001, 2002]])  # a truck on car 2005, a car on the crowd, a car on road
    tracks: dict[int, int] = {}
    out = oracle_relabel(pred, gt, table, tracks, DIVISOR, crowd={2009})
    assert out.tolist() == [[3001, 3001, 2999, 2999, 2998]]
    assert tracks == {2005: 1}


def test_oracle_of_a_perfect_flicker_is_one():
    frames = car_row(6, [2001, 2002] * 3, [2003, 2001] * 3)
    tracks: dict[int, int] = {}
    r = evaluate([(oracle_relabel(np.array(p), np.array(g), TABLE, tracks, DIVISOR), g) for p, g in frames])
    assert evaluate(frames).aq < 0.6
    assert (r.aq, r.id_switches) == (1.0, 0)


# --------------------------------------------------------------------------------------------
# cross-checks on random sequences


RANDOM_TABLE = {1: False, 2: False, 3: True, 4: True}
RANDOM_VALUES = [0, 1000, 2000, 3001, 3002, 3003, 4001, 4002]


def random_sequence(seed, n_frames=7):
    """GT rectangles that drift a little from frame to frame; predictions redraw some of them."""
    rng = np.random.default_rng(seed)
    gt = random_rectangles(rng, np.full((12, 16), 1000, np.int32), RANDOM_VALUES, 8)
    frames = []
    for _ in range(n_frames):
        gt = random_rectangles(rng, gt, RANDOM_VALUES, int(rng.integers(0, 3)))
        pred = random_rectangles(rng, gt, RANDOM_VALUES + [3004, 4003], int(rng.integers(0, 5)))
        frames.append((pred, gt))
    return frames


@pytest.mark.parametrize("seed", range(10))
def test_vpq_0_is_per_frame_pq_and_vpq_k_is_pq_of_stacked_windows(seed):
    frames = random_sequence(seed)
    r = evaluate(frames, table=RANDOM_TABLE, windows=(0, 1, 3))
    for k in (0, 1, 3):
        # The reference's way: concatenate the k+1 maps of each window, PQ on the stacked map.
        pq = PQAccumulator(RANDOM_TABLE, DIVISOR)
        for start in range(len(frames) - k):
            window = frames[start:start + k + 1]
            pq.add(np.concatenate([p for p, _ in window]), np.concatenate([g for _, g in window]))
        assert r.vpq[k] == pytest.approx(pq.result().all.pq, abs=1e-12)


def deeplab2_stq(frames, things, crowd):
    """deeplab2's STQuality.update_state / result written out on pixel masks, crowd given as GT values.

    One deliberate difference, as in vps.py: void (0) is never a class of the SQ mean.
    """
    pred_size, gt_size, inter, confusion = {}, {}, {}, {}

    def count(store, key):
        store[key] = store.get(key, 0) + 1

    for pred, gt in frames:
        is_crowd = np.isin(gt, list(crowd))
        gt_thing = np.isin(gt // 1000, things) & ~is_crowd
        pred_thing = np.isin(pred // 1000, things) & ~is_crowd
        for g, p, g_in, p_in in zip(gt.ravel().tolist(), pred.ravel().tolist(), gt_thing.ravel(), pred_thing.ravel()):
            if g_in:
                count(gt_size, g)
            if p_in:
                count(pred_size, p)
            if g_in and p_in:
                count(inter, (g, p))
            if g:
                count(confusion, (g // 1000, p // 1000))
    aq = 0.0
    for g, gs in gt_size.items():
        inner = 0.0
        for p, ps in pred_size.items():
            tpa = inter.get((g, p), 0)
            inner += tpa * tpa / (tpa + (ps - tpa) + (gs - tpa))
        aq += inner / gs
    classes = {c for pair in confusion for c in pair if c}
    ious = [confusion.get((c, c), 0) / sum(v for (gc, pc), v in confusion.items() if c in (gc, pc)) for c in classes]
    return aq / len(gt_size), float(np.mean(ious))


@pytest.mark.parametrize("seed", range(6))
def test_aq_and_sq_match_deeplab2_formulas_on_random_sequences(seed):
    frames = [(p.astype(np.int64), g.astype(np.int64)) for p, g in random_sequence(seed)]
    crowd = {3003} if seed % 2 else set()
    r = evaluate(frames, table=RANDOM_TABLE, crowd=crowd)
    aq, sq = deeplab2_stq(frames, [3, 4], crowd)
    assert r.aq == pytest.approx(aq, abs=1e-12)
    assert r.sq == pytest.approx(sq, abs=1e-12)


def test_id_switches_follow_per_frame_matches():
    frames = random_sequence(3, n_frames=10)
    r = evaluate(frames, table=RANDOM_TABLE)
    last, switches, matched = {}, 0, 0
    for pred, gt in frames:
        m = match_frame(pred, gt, DIVISOR)
        for g, p in zip(m.matched_gt.tolist(), m.matched_pred.tolist()):
            if RANDOM_TABLE[g // 1000]:
                switches += g in last and last[g] != p
                last[g], matched = p, matched + 1
    assert matched > 0
    assert (r.id_switches, r.matched_track_frames) == (switches, matched)


def test_a_200_frame_640x360_sequence_takes_seconds():
    rng = np.random.default_rng(0)
    gt = random_rectangles(rng, np.full((360, 640), 1000, np.int32), RANDOM_VALUES, 40)
    acc = VideoPanopticAccumulator(RANDOM_TABLE, DIVISOR)
    start = time.perf_counter()
    for t in range(200):
        pred = np.roll(gt, t % 7, axis=1)  # a moving prediction: matches and misses both occur
        acc.add(pred, gt, crowd={3003})
    acc.result()
    assert time.perf_counter() - start < 30
