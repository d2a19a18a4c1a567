"""Video panoptic metrics: STQ (with AQ and SQ), VPQ over k-frame windows, ID switches, oracle association.

Maps are H x W integer panoptic maps, `category_id * label_divisor + instance_id` (0 = void), where
an instance id names the same object in every frame of a sequence (a track). Ground truth and
prediction share the encoding. Crowd ground truth, given per frame as a set of GT values or an
H x W boolean mask, is ignored as the references do.

- STQ = sqrt(AQ x SQ) (Weber et al. 2021, "STEP: Segmenting and Tracking Every Point and Pixel";
  reference: google-research/deeplab2 `evaluation/numpy/segmentation_and_tracking_quality.py`).
  SQ: mean IoU over the categories with a non-empty union, from one category confusion matrix over
  the whole sequence, GT void pixels left out. A predicted void pixel on labelled GT is a false
  negative of the GT category; void itself is not a class. (deeplab2 would count a predicted
  ignore label as one more class with IoU 0; its predictions never hold that label, ours often
  hold void.) Crowd pixels keep their category here, as in deeplab2.
  AQ = 1/|G| sum_g 1/|g| sum_p TPA(p,g) IoU_id(p,g) over GT tracks g and predicted tracks p keyed
  by their full panoptic values, thing pixels only, sizes over the whole sequence, crowd pixels
  removed from both sides; class errors are left to SQ.
- VPQ_k (Kim et al. 2020, "Video Panoptic Segmentation"; reference: mcahny/vps `tools/eval_vpq.py`):
  windows of k+1 consecutive frames, stride 1, only whole windows; each value is a tube over its
  window and tubes are matched as panopticapi matches segments (same category, IoU > 0.5, the
  prediction's pixels on GT void leave the union; an unmatched prediction more than half on void
  plus crowd of its category is not a false positive; crowd is never a false negative). As the
  reference does: IoU, TP, FP, FN are summed per category over all windows (and sequences), then
  PQ per category, then the mean over the categories that occur. k counts frames (dense ground
  truth), so VPQ_0 is the per-frame PQ of `streamer.tools.pq`. All crowd of one category in a
  window is one crowd region (the reference keeps only the last crowd id per category).
- ID switches (CLEAR MOT, Bernardin & Stiefelhagen 2008): per frame, GT thing segments and
  predicted segments match as in PQ (same category, IoU > 0.5, so one-to-one); a GT track matched
  to another predicted id than at its previous matched frame is one switch.
- Oracle association: `oracle_relabel` gives each predicted thing segment the track of the GT it
  overlaps most: the association a perfect tracker would give those masks, the practical ceiling of
  AQ. Not a strict bound: where one segment covers two objects, a tracker that gives it an id of its
  own can score a hair above it, because the segment's pixels then do not enlarge a GT track's match.

Efficiency: each frame is reduced to its (GT value, predicted value) -> pixel count table; a
window's tube intersections and areas are sums of its frames' tables, so only the last
max(k)+1 tables are kept and no map is ever concatenated.
"""
from __future__ import annotations

from collections import Counter, deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamer.tools.pq import MATCH_IOU, VOID_FRACTION, CategoryTable, check_maps, to_numpy

VPQ_WINDOWS = (0, 5, 10, 15)
"""Window sizes k in frames; a window holds k + 1 consecutive frames."""

_CROWD = 1 << 31  # a crowd GT pixel becomes _CROWD | category_id * label_divisor (one region per category)
_VALUE = _CROWD - 1
_LOW = (1 << 32) - 1

Crowd = Collection[int] | np.ndarray | None
"""Per frame: GT values that are crowd, or an H x W boolean mask of crowd pixels, or None."""

Table = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(gt, pred, pixels): int64 arrays, one row per distinct (GT value, predicted value) pair of a frame or window."""


# --------------------------------------------------------------------------------------------
# per-frame tables and panopticapi matching on them


def pair_table(pred_map: np.ndarray, gt_map: np.ndarray, label_divisor: int,
               crowd: Crowd = None) -> Table:
    """Count the pixels of every (GT value, predicted value) pair of one frame.

    pred_map, gt_map: H x W integer arrays (or tensors) with values in 0 .. 2**31-1.
    crowd: GT values that are crowd, or an H x W bool array (numpy or torch); crowd GT pixels (not void ones) are
    returned as `_CROWD | category_id * label_divisor`. Returns three int64 arrays of one length.
    """
    shape = tuple(pred_map.shape)
    pred, gt = (array.astype(np.int64) for array in check_maps(pred_map, gt_map))  # raveled
    if crowd is not None:
        mask = to_numpy(crowd) if hasattr(crowd, "shape") else np.asarray(list(crowd), np.int64)
        if mask.dtype == bool:
            if mask.shape != shape:
                raise ValueError(f"the crowd mask must be H x W like the maps, got {mask.shape}")
            is_crowd = mask.ravel() & (gt != 0)
        else:
            is_crowd = np.isin(gt, mask) & (gt != 0)
        gt = np.where(is_crowd, _CROWD | gt // label_divisor * label_divisor, gt)
    keys, pixels = np.unique((pred << 32) | gt, return_counts=True)  # GT (crowd bit included) in the low 32 bits
    return keys & _LOW, keys >> 32, pixels.astype(np.int64)


def merge_tables(tables: Iterable[Table]) -> Table:
    """Sum frame tables into the table of their window: pairs of tubes and their shared pixels."""
    gt, pred, pixels = (np.concatenate(column) for column in zip(*tables))
    keys, row = np.unique((pred << 32) | gt, return_inverse=True)
    return keys & _LOW, keys >> 32, np.bincount(row, weights=pixels).astype(np.int64)


@dataclass(frozen=True)
class TableMatch:
    """panopticapi's outcome on one table; ids are map values (tubes, for a window's table)."""

    matched_gt: np.ndarray
    matched_pred: np.ndarray
    matched_iou: np.ndarray  # float64, each > 0.5
    false_positives: np.ndarray  # predicted ids
    false_negatives: np.ndarray  # GT ids (crowd never)


def match_table(table: Table, label_divisor: int) -> TableMatch:
    """Match GT and predicted segments (or tubes) of one table as panopticapi's pq_compute does."""
    g, p, inter = table
    pred_ids, p_row = np.unique(p, return_inverse=True)
    gt_ids, g_row = np.unique(g, return_inverse=True)
    pred_area = np.bincount(p_row, weights=inter)
    gt_area = np.bincount(g_row, weights=inter)
    crowd = (g & _CROWD) != 0
    same = p // label_divisor == (g & _VALUE) // label_divisor
    on_void = np.bincount(p_row, weights=np.where(g == 0, inter, 0))
    on_crowd = np.bincount(p_row, weights=np.where(crowd & same, inter, 0))

    candidate = (p != 0) & (g != 0) & ~crowd & same
    union = pred_area[p_row] + gt_area[g_row] - inter - on_void[p_row]
    iou = np.divide(inter, union, out=np.zeros(len(inter)), where=candidate)
    match = candidate & (iou > MATCH_IOU)  # one-to-one, since IoU > 0.5
    unmatched = (pred_ids != 0) & ~np.isin(pred_ids, p[match])
    ignored = (on_void + on_crowd) / np.maximum(pred_area, 1) > VOID_FRACTION
    return TableMatch(
        matched_gt=g[match], matched_pred=p[match], matched_iou=iou[match],
        false_positives=pred_ids[unmatched & ~ignored],
        false_negatives=gt_ids[(gt_ids != 0) & ((gt_ids & _CROWD) == 0) & ~np.isin(gt_ids, g[match])],
    )


# --------------------------------------------------------------------------------------------
# accumulating one sequence


@dataclass(frozen=True)
class VideoPanopticResult:
    """STQ, AQ, SQ, VPQ per window size and ID switches; None where a metric has nothing to measure."""

    stq: float | None
    aq: float | None
    sq: float | None
    vpq: Mapping[int, float | None]  # k (frames) -> VPQ_k
    id_switches: int
    matched_track_frames: int  # GT track-frames matched to a prediction (the switches' denominator)
    gt_tracks: int
    frames: int

    def to_dict(self) -> dict[str, Any]:
        """{stq, aq, sq, vpq: {"0", "5", ...}, id_switches, matched_track_frames} in JSON-ready types."""
        return {"stq": self.stq, "aq": self.aq, "sq": self.sq, "vpq": {str(k): v for k, v in self.vpq.items()},
                "id_switches": self.id_switches, "matched_track_frames": self.matched_track_frames}


class VideoPanopticAccumulator:
    """Video panoptic metrics of one sequence: `add(pred_map, gt_map, crowd)` per frame in order, then `result()`.

    categories: {category id: isthing} or Category rows, as for `PQAccumulator`; windows: the VPQ
    window sizes k in frames. Several sequences: one accumulator each, then `combine_sequences`.
    Memory: the category confusion matrix, the AQ pixel counters and the last max(windows)+1 frame
    tables; no map is kept.
    """

    def __init__(self, categories: CategoryTable, label_divisor: int,
                 windows: tuple[int, ...] = VPQ_WINDOWS) -> None:
        self.label_divisor = label_divisor
        self.windows = tuple(windows)
        self._known, self._thing = category_arrays(categories)
        size = len(self._known)
        self._confusion = np.zeros((size, size), np.int64)  # GT category x predicted category; 0 = void
        self._gt_area: Counter[int] = Counter()  # AQ: GT track -> thing pixels (crowd removed)
        self._pred_area: Counter[int] = Counter()  # AQ: predicted track -> thing pixels off crowd
        self._tpa: Counter[tuple[int, int]] = Counter()  # AQ: (GT track, predicted track) -> shared pixels
        self._vpq = {k: np.zeros((4, size)) for k in self.windows}  # rows: IoU sum, TP, FP, FN per category
        self._recent: deque[Table] = deque(maxlen=max(self.windows, default=0) + 1)
        self._last_pred: dict[int, int] = {}  # GT track -> predicted id at its last matched frame
        self.id_switches = 0
        self.matched_track_frames = 0
        self.frames = 0

    def add(self, pred_map: np.ndarray, gt_map: np.ndarray, crowd: Crowd = None) -> None:
        """Add the next frame: H x W integer maps (pred first, as `PQAccumulator.add`), crowd as `pair_table`."""
        g, p, n = table = pair_table(pred_map, gt_map, self.label_divisor, crowd)
        crowd_px = (g & _CROWD) != 0
        gcat = self._category((g & _VALUE) // self.label_divisor)
        pcat = self._category(p // self.label_divisor)

        np.add.at(self._confusion, (gcat, pcat), n)  # SQ
        gt_track = self._thing[gcat] & ~crowd_px  # AQ: thing pixels, crowd out on both sides
        pred_track = self._thing[pcat] & ~crowd_px
        for gi, pi, ni, gt_in, pred_in in zip(g.tolist(), p.tolist(), n.tolist(), gt_track.tolist(), pred_track.tolist()):
            if gt_in:
                self._gt_area[gi] += ni
            if pred_in:
                self._pred_area[pi] += ni
            if gt_in and pred_in:
                self._tpa[gi, pi] += ni

        self._recent.append(table)
        for k, stats in self._vpq.items():  # VPQ: the window of the last k+1 frames, once it is whole
            if len(self._recent) > k:
                window = table if k == 0 else merge_tables(list(self._recent)[-(k + 1):])
                self._count(stats, match_table(window, self.label_divisor))

        frame = match_table(table, self.label_divisor)  # ID switches
        things = self._thing[frame.matched_gt // self.label_divisor]
        for gi, pi in zip(frame.matched_gt[things].tolist(), frame.matched_pred[things].tolist()):
            self.id_switches += self._last_pred.get(gi, pi) != pi
            self._last_pred[gi] = pi
            self.matched_track_frames += 1
        self.frames += 1

    def _category(self, category_ids: np.ndarray) -> np.ndarray:
        known = category_ids == 0  # void
        inside = category_ids < len(self._known)
        known[inside] |= self._known[category_ids[inside]]
        if not known.all():
            raise ValueError(f"a panoptic map holds category id {int(category_ids[~known][0])}, "
                             "which is not in the category table")
        return category_ids

    def _count(self, stats: np.ndarray, match: TableMatch) -> None:
        size, div = stats.shape[1], self.label_divisor
        stats[0] += np.bincount(match.matched_gt // div, weights=match.matched_iou, minlength=size)
        stats[1] += np.bincount(match.matched_gt // div, minlength=size)
        stats[2] += np.bincount(match.false_positives // div, minlength=size)
        stats[3] += np.bincount(match.false_negatives // div, minlength=size)

    def aq_terms(self) -> tuple[float, int]:
        """(sum over GT tracks of 1/|g| sum_p TPA x IoU_id, number of GT tracks): AQ's numerator and denominator."""
        total = 0.0
        for (gi, pi), tpa in self._tpa.items():
            gt_size = self._gt_area[gi]
            total += tpa * tpa / (gt_size + self._pred_area[pi] - tpa) / gt_size
        return total, len(self._gt_area)

    def result(self) -> VideoPanopticResult:
        """The metrics of this sequence so far (it can go on taking frames)."""
        return combine_sequences([self])


def combine_sequences(sequences: Iterable[VideoPanopticAccumulator]) -> VideoPanopticResult:
    """Metrics over several sequences, as the references pool them.

    AQ: numerators summed, divided by the total number of GT tracks (deeplab2 `aq_mean`).
    SQ: one confusion matrix summed over sequences. VPQ: per-category IoU/TP/FP/FN summed over
    every window of every sequence (windows never cross sequences), then PQ per category, then
    the mean over the categories that occur (mcahny/vps `vpq_compute`). ID switches: summed.
    """
    sequences = list(sequences)
    if not sequences or len({(s._known.tobytes(), s._thing.tobytes(), s.label_divisor, s.windows)
                             for s in sequences}) != 1:
        raise ValueError("combine at least one sequence, all with one category table, label divisor and set of windows")
    confusion = sum((s._confusion for s in sequences), np.zeros_like(sequences[0]._confusion))
    aq_sum, tracks = (sum(terms) for terms in zip(*(s.aq_terms() for s in sequences)))
    aq = aq_sum / tracks if tracks else None

    confusion[0, :] = 0  # GT void left out; predicted void stays a false negative of the GT class
    inter = np.diag(confusion)[1:]
    union = (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))[1:]
    sq = float(np.mean(inter[union > 0] / union[union > 0])) if (union > 0).any() else None

    vpq = {}
    for k in sequences[0].windows:
        iou, tp, fp, fn = sum((s._vpq[k] for s in sequences), np.zeros_like(sequences[0]._vpq[k]))
        occurs = tp + fp + fn > 0
        vpq[k] = float(np.mean(iou[occurs] / (tp + fp / 2 + fn / 2)[occurs])) if occurs.any() else None
    return VideoPanopticResult(
        stq=float(np.sqrt(aq * sq)) if aq is not None and sq is not None else None,
        aq=float(aq) if aq is not None else None, sq=sq, vpq=vpq,
        id_switches=int(sum(s.id_switches for s in sequences)),
        matched_track_frames=int(sum(s.matched_track_frames for s in sequences)),
        gt_tracks=int(tracks), frames=int(sum(s.frames for s in sequences)),
    )


def category_arrays(categories: CategoryTable) -> tuple[np.ndarray, np.ndarray]:
    """(known, isthing): bool arrays indexed by category id; index 0 (void) is neither."""
    if isinstance(categories, Mapping):
        rows = [(int(cid), bool(isthing)) for cid, isthing in categories.items()]
    else:
        rows = [(int(c.id), bool(c.isthing)) for c in categories]
    if not rows or min(cid for cid, _ in rows) < 1:
        raise ValueError("the category table must be non-empty with ids >= 1 (0 is void)")
    known = np.zeros(max(cid for cid, _ in rows) + 1, bool)
    thing = known.copy()
    for cid, isthing in rows:
        known[cid], thing[cid] = True, isthing
    return known, thing


# --------------------------------------------------------------------------------------------
# oracle association


def oracle_relabel(pred_map: np.ndarray, gt_map: np.ndarray, categories: CategoryTable, tracks: dict[int, int],
                   label_divisor: int, crowd: Crowd = None) -> np.ndarray:
    """The predicted map with each thing segment given the track of the GT thing it overlaps most.

    pred_map, gt_map: H x W integer panoptic maps of one frame; returns an H x W int32 map. A thing
    segment keeps its own category and takes instance id `tracks[GT value]`, where `tracks` is a dict
    the caller keeps for one sequence (start with {}): each GT track gets the next number 1, 2, ...
    the first time it is overlapped. Thing segments overlapping no (non-crowd) GT thing count down
    from label_divisor - 1 in each frame: they never take a GT track's id, and having no TPA they
    cannot change AQ. Stuff and void stay as they are. Feeding the relabelled maps to
    `VideoPanopticAccumulator` gives the oracle AQ (the module docstring says why it is the practical, not strict, ceiling).
    """
    _, thing = category_arrays(categories)
    g, p, n = pair_table(pred_map, gt_map, label_divisor, crowd)
    gcat, pcat = (g & _VALUE) // label_divisor, p // label_divisor
    if max(gcat.max(initial=0), pcat.max(initial=0)) >= len(thing):
        raise ValueError("a panoptic map holds a category id that is not in the category table")
    overlap = thing[pcat] & thing[gcat] & ((g & _CROWD) == 0)
    order = np.lexsort((g[overlap], -n[overlap], p[overlap]))  # per prediction: most pixels first, then lowest GT
    best_p, first = np.unique(p[overlap][order], return_index=True)
    best = dict(zip(best_p.tolist(), g[overlap][order][first].tolist()))

    pred_ids = np.unique(p)
    new_ids = pred_ids.copy()
    spare = label_divisor - 1
    for i, pid in enumerate(pred_ids.tolist()):
        if not thing[pid // label_divisor]:
            continue
        if pid in best:
            instance = tracks.setdefault(best[pid], len(tracks) + 1)
        else:
            instance, spare = spare, spare - 1
        new_ids[i] = pid // label_divisor * label_divisor + instance
    if spare < len(tracks):
        raise ValueError(f"more GT tracks and unmatched segments than instance ids below {label_divisor}")
    pred = to_numpy(pred_map)
    return new_ids[np.searchsorted(pred_ids, pred)].astype(np.int32)
