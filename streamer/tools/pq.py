"""Panoptic Quality (PQ / SQ / RQ), matched per frame and accumulated over frames.

PQ follows panopticapi's `pq_compute` (Kirillov et al. 2019) exactly, crowd regions aside (we have
none). Per frame, segments are the distinct non-zero values of a panoptic map
(`category_id * label_divisor + instance_id`, 0 = void):
  - a prediction and a ground-truth segment of the same category match when IoU > 0.5, where
    IoU = inter / (area_pred + area_gt - inter - area of the prediction on GT void);
  - an unmatched ground-truth segment is a false negative;
  - an unmatched prediction is a false positive unless more than half of it lies on GT void.
Per category over all frames: PQ = sum IoU / (TP + FP/2 + FN/2), SQ = sum IoU / TP (0 without TP),
RQ = TP / (TP + FP/2 + FN/2). All / Things / Stuff average these over the categories that occur
(TP + FP + FN > 0). Where panopticapi writes 0.0 for a class that never occurs and divides by zero
for an empty group, we give None (JSON null) so "absent" is not mistaken for "scored 0".

Baselines, from the same raw model outputs `streamer.inference.fusion.fuse` takes:
  - `naive_fusion`: what a tutorial does (argmax map, then paste every mask over it in output order);
  - `semantic_only`: the semantic map alone, thing classes split into connected regions.

Everything here is pure numpy (plus cv2.connectedComponents): no threads, no config, no I/O.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamer.frames import Category

MATCH_IOU = 0.5  # a match needs IoU strictly above this
VOID_FRACTION = 0.5  # an unmatched prediction with more than this fraction on GT void is ignored

# --------------------------------------------------------------------------------------------
# matching one frame


@dataclass(frozen=True)
class FrameMatch:
    """The outcome of matching one predicted map against its ground truth (segment ids = map values)."""

    matched_pred: np.ndarray  # K ids of matched predictions
    matched_gt: np.ndarray  # K ids of the ground-truth segments they match
    matched_iou: np.ndarray  # K IoUs (float64), each > 0.5
    false_positives: np.ndarray  # ids of unmatched predictions that count
    false_negatives: np.ndarray  # ids of unmatched ground-truth segments
    ignored: np.ndarray  # ids of unmatched predictions lying more than half on GT void


def match_frame(pred_map: np.ndarray, gt_map: np.ndarray, label_divisor: int) -> FrameMatch:
    """Match the segments of one predicted panoptic map against the ground truth, as panopticapi does.

    Both maps are H x W non-negative integers below 2**31. The pred/GT intersection table comes
    from one np.unique over a combined 64-bit key; the rest works on that (small) table only.
    """
    pred, gt = check_maps(pred_map, gt_map)
    pairs, inter = np.unique((pred.astype(np.int64) << 32) | gt.astype(np.int64), return_counts=True)
    p, g = pairs >> 32, pairs & 0xFFFFFFFF  # one row per (pred id, gt id) pair that shares pixels

    pred_ids, p_row = np.unique(p, return_inverse=True)
    gt_ids, g_row = np.unique(g, return_inverse=True)
    pred_area = np.bincount(p_row, weights=inter)
    gt_area = np.bincount(g_row, weights=inter)
    pred_void = np.bincount(p_row, weights=np.where(g == 0, inter, 0))  # each prediction's pixels on GT void

    candidate = (p != 0) & (g != 0) & (p // label_divisor == g // label_divisor)
    union = pred_area[p_row] + gt_area[g_row] - inter - pred_void[p_row]
    iou = np.divide(inter, union, out=np.zeros(len(inter)), where=candidate)
    match = candidate & (iou > MATCH_IOU)  # IoU > 0.5 makes every match one-to-one

    unmatched_pred = (pred_ids != 0) & ~np.isin(pred_ids, p[match])
    on_void = pred_void / pred_area > VOID_FRACTION
    return FrameMatch(
        matched_pred=p[match],
        matched_gt=g[match],
        matched_iou=iou[match],
        false_positives=pred_ids[unmatched_pred & ~on_void],
        false_negatives=gt_ids[(gt_ids != 0) & ~np.isin(gt_ids, g[match])],
        ignored=pred_ids[unmatched_pred & on_void],
    )


def check_maps(pred_map: np.ndarray, gt_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both maps as numpy arrays, or ValueError: not two H x W integer maps of one shape, values 0 .. 2**31-1."""
    pred, gt = to_numpy(pred_map), to_numpy(gt_map)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f"panoptic maps must be two H x W arrays of one shape, got {pred.shape} and {gt.shape}")
    for name, array in (("predicted", pred), ("ground-truth", gt)):
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"the {name} panoptic map must hold integers, got {array.dtype}")
        if array.size and (array.min() < 0 or array.max() >= 2**31):
            raise ValueError(f"the {name} panoptic map holds values outside 0 .. 2**31-1")
    return pred.ravel(), gt.ravel()


# --------------------------------------------------------------------------------------------
# accumulating over frames


@dataclass(frozen=True)
class ClassPQ:
    """PQ of one category over all frames; pq/sq/rq are None when the class never occurred."""

    category_id: int
    name: str
    isthing: bool
    pq: float | None
    sq: float | None
    rq: float | None
    tp: int
    fp: int
    fn: int
    iou_sum: float


@dataclass(frozen=True)
class GroupPQ:
    """Class-averaged PQ over the n categories of a group (All, Things, Stuff) that occurred."""

    pq: float | None
    sq: float | None
    rq: float | None
    n: int


@dataclass(frozen=True)
class PQResult:
    """What `PQAccumulator.result()` returns; `to_dict()` gives plain JSON-ready types."""

    all: GroupPQ
    things: GroupPQ
    stuff: GroupPQ
    per_class: tuple[ClassPQ, ...]
    frames: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CategoryTable = Mapping[int, bool] | Iterable[Category]
"""Either {category id: isthing} or Category rows (whose names then label the table)."""


class PQAccumulator:
    """Sums TP, FP, FN and IoU per category over frames: `add(pred_map, gt_map)` per frame, then `result()`."""

    def __init__(self, categories: CategoryTable, label_divisor: int) -> None:
        if isinstance(categories, Mapping):
            rows = [(int(cid), str(cid), bool(isthing)) for cid, isthing in categories.items()]
        else:
            rows = [(int(c.id), c.name, bool(c.isthing)) for c in categories]
        if not rows or min(cid for cid, _, _ in rows) < 1:
            raise ValueError("the category table must be non-empty with ids >= 1 (0 is void)")
        self.label_divisor = label_divisor
        self._rows = sorted(rows)
        size = self._rows[-1][0] + 1
        self._known = np.zeros(size, bool)
        self._known[[cid for cid, _, _ in rows]] = True
        self._tp = np.zeros(size, np.int64)
        self._fp = np.zeros(size, np.int64)
        self._fn = np.zeros(size, np.int64)
        self._iou = np.zeros(size, np.float64)
        self.frames = 0

    def add(self, pred_map: np.ndarray, gt_map: np.ndarray) -> FrameMatch:
        """Match one frame and add its counts; returns the frame's match for inspection."""
        match = match_frame(pred_map, gt_map, self.label_divisor)
        tp, fp, fn, ignored = (ids // self.label_divisor for ids in
                               (match.matched_gt, match.false_positives, match.false_negatives, match.ignored))
        self._check_known(np.concatenate([tp, fp, fn, ignored]))  # before counting anything
        size = len(self._known)
        self._tp += np.bincount(tp, minlength=size)
        self._iou += np.bincount(tp, weights=match.matched_iou, minlength=size)
        self._fp += np.bincount(fp, minlength=size)
        self._fn += np.bincount(fn, minlength=size)
        self.frames += 1
        return match

    def _check_known(self, category_ids: np.ndarray) -> None:
        known = np.zeros(len(category_ids), bool)
        inside = category_ids < len(self._known)
        known[inside] = self._known[category_ids[inside]]
        if not known.all():
            raise ValueError(f"a panoptic map holds category id {int(category_ids[~known][0])}, "
                             "which is not in the category table")

    def result(self) -> PQResult:
        per_class = tuple(self._class(cid, name, isthing) for cid, name, isthing in self._rows)
        return PQResult(
            all=_average(per_class),
            things=_average([c for c in per_class if c.isthing]),
            stuff=_average([c for c in per_class if not c.isthing]),
            per_class=per_class,
            frames=self.frames,
        )

    def _class(self, cid: int, name: str, isthing: bool) -> ClassPQ:
        tp, fp, fn, iou = int(self._tp[cid]), int(self._fp[cid]), int(self._fn[cid]), float(self._iou[cid])
        pq = sq = rq = None
        if tp + fp + fn > 0:
            denominator = tp + 0.5 * fp + 0.5 * fn
            pq, sq, rq = iou / denominator, (iou / tp if tp else 0.0), tp / denominator
        return ClassPQ(cid, name, isthing, pq, sq, rq, tp, fp, fn, iou)


def _average(classes: Iterable[ClassPQ]) -> GroupPQ:
    """Mean over the classes that occurred, as panopticapi's pq_average."""
    seen = [(c.pq, c.sq, c.rq) for c in classes if c.pq is not None and c.sq is not None and c.rq is not None]  # all or none
    if not seen:
        return GroupPQ(None, None, None, 0)
    n = len(seen)
    pq, sq, rq = (sum(values) / n for values in zip(*seen))
    return GroupPQ(pq, sq, rq, n)


def format_pq_table(result: PQResult) -> str:
    """A readable text table: one row per class, then All / Things / Stuff; values in percent."""

    def pct(value: float | None) -> str:
        return f"{100 * value:6.1f}" if value is not None else f"{'-':>6}"

    width = max([len(c.name) for c in result.per_class] + [6])
    header = f"{'class':<{width}}  kind   {'PQ':>6} {'SQ':>6} {'RQ':>6} {'TP':>6} {'FP':>6} {'FN':>6}"
    lines = [header, "-" * len(header)]
    for c in result.per_class:
        lines.append(f"{c.name:<{width}}  {'thing' if c.isthing else 'stuff'}  "
                     f"{pct(c.pq)} {pct(c.sq)} {pct(c.rq)} {c.tp:6d} {c.fp:6d} {c.fn:6d}")
    lines.append("-" * len(header))
    for label, group in (("All", result.all), ("Things", result.things), ("Stuff", result.stuff)):
        lines.append(f"{label:<{width}}         {pct(group.pq)} {pct(group.sq)} {pct(group.rq)}  n={group.n}")
    lines.append(f"({result.frames} frames; n = classes that occur, averaged over)")
    return "\n".join(lines)


def to_numpy(array: Any) -> np.ndarray:
    """numpy view of an array or a (CPU or device) torch tensor."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)
