"""Fusions to measure the project's (streamer.inference.fusion.fuse) against, from the same raw
model outputs it takes:

  - `reference_fusion`: the Panoptic FPN rule (Kirillov et al. 2019) written as the plain
    per-instance loop of panopticapi / detectron2, every step on whole frames. It gives exactly what
    `fuse` gives, segments included: the tests and `streamer bench` hold `fuse` to it;
  - `naive_fusion`: what a tutorial does (argmax map, then paste every mask over it in output order);
  - `semantic_only`: the semantic map alone, thing classes split into connected regions.

Pure numpy (plus cv2.connectedComponents): no threads, no config, no I/O.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from streamer.boxes import of_mask
from streamer.frames import Segment
from streamer.inference.fusion import FusionParams
from streamer.tools.pq import to_numpy

if TYPE_CHECKING:
    import torch

    Array = np.ndarray | torch.Tensor  # numpy arrays or CPU tensors, as to_numpy takes


def reference_fusion(
    semantic: np.ndarray, masks: np.ndarray, scores: np.ndarray, categories: np.ndarray, is_thing: np.ndarray,
    params: FusionParams,
) -> tuple[np.ndarray, list[Segment]]:
    """The Panoptic FPN rule, one instance at a time (arguments as `fuse`, numpy arrays):
    instances by score, highest first (stable), down to `score_threshold`; masks binarised at
    `mask_threshold`; an empty mask, or one more than `overlap_threshold` covered by instances
    already placed, is skipped; otherwise it takes its still-free pixels, numbered 1, 2, ... per
    category (a number that reaches `label_divisor` leaves its pixels void). Then each stuff class
    fills its free pixels if there are at least `stuff_area_min` (and at least one).
    Returns the H x W int32 panoptic map and its segments: things in placement order, then stuff
    by category id."""
    panoptic = np.zeros(semantic.shape, np.int32)
    claimed = np.zeros(semantic.shape, bool)
    next_id: dict[int, int] = {}
    things, stuff = [], []
    for index in np.argsort(-scores, kind="stable"):
        if scores[index] < params.score_threshold:
            break
        mask = masks[index] >= params.mask_threshold
        area = int(mask.sum())
        if area == 0 or (mask & claimed).sum() / area > params.overlap_threshold:
            continue
        mask &= ~claimed
        placed = int(mask.sum())
        if placed == 0:
            continue
        claimed |= mask
        category = int(categories[index])
        next_id[category] = next_id.get(category, 0) + 1
        if next_id[category] >= params.label_divisor:
            continue  # no id left in this category: the pixels stay void
        value = category * params.label_divisor + next_id[category]
        panoptic[mask] = value
        things.append(Segment(value, category, True, float(scores[index]), placed, of_mask(mask)))
    for category in range(1, len(is_thing)):
        mask = (semantic == category) & ~claimed
        area = int(mask.sum())
        if is_thing[category] or area < max(params.stuff_area_min, 1):
            continue
        panoptic[mask] = category * params.label_divisor
        stuff.append(Segment(category * params.label_divisor, category, False, None, area, of_mask(mask)))
    return panoptic, things + stuff


def naive_fusion(
    semantic: Array,
    masks: Array,
    scores: Array,
    categories: Array,
    is_thing: Array,
    mask_threshold: float,
    first_instance_id: int = 3,
    *,
    label_divisor: int,
) -> np.ndarray:
    """The tutorial recipe: the argmax map, then every instance mask pasted over it in output order.

    Takes the same arguments as `streamer.inference.fusion.fuse` (numpy arrays or CPU tensors). Every
    pixel starts as `semantic * label_divisor` (stuff and thing classes alike, instance id 0);
    then mask i (probability >= mask_threshold) is written over it with instance id
    `first_instance_id + i`: one running counter in output order, whatever the category. No
    sorting, no score threshold beyond what the model applied (`scores` is accepted for the common
    signature and not used), no overlap check: later masks overwrite earlier ones, and a mask
    overwritten everywhere vanishes. Semantic 0 (no class) stays 0. Returns H x W int32.
    """
    del scores, is_thing  # not part of the recipe
    semantic = to_numpy(semantic).astype(np.int64)
    masks, categories = to_numpy(masks), to_numpy(categories).astype(np.int64)
    if first_instance_id + len(masks) > label_divisor:
        raise ValueError(f"{len(masks)} instances numbered from {first_instance_id} "
                         f"do not fit under label_divisor {label_divisor}")
    panoptic = semantic * label_divisor
    binary = masks if masks.dtype == bool else masks >= mask_threshold
    for index, (mask, category) in enumerate(zip(binary, categories)):
        panoptic[mask] = category * label_divisor + first_instance_id + index
    return panoptic.astype(np.int32)


def semantic_only(
    semantic: Array,
    is_thing: Array,
    connectivity: int = 8,
    *,
    label_divisor: int,
) -> np.ndarray:
    """Panoptic map from the semantic map alone: stuff as is, each connected thing region one instance.

    Regions are 8-connected by default (cv2.connectedComponents; pass 4 for 4-connectivity) and
    numbered 1, 2, ... per category in raster order of their first pixel. If a category has more
    regions than instance ids fit under label_divisor, the largest keep ids and the rest join that
    category's instance-0 segment, so the map still has no void. Semantic 0 stays 0. Returns H x W int32.
    """
    semantic = to_numpy(semantic).astype(np.int64)
    is_thing = to_numpy(is_thing).astype(bool)
    panoptic = semantic * label_divisor
    for category in np.unique(semantic):
        if category == 0 or not is_thing[category]:
            continue
        region = semantic == category
        count, labels = cv2.connectedComponents(region.view(np.uint8), connectivity=connectivity, ltype=cv2.CV_32S)
        labels = _cap_labels(labels, region, count - 1, label_divisor - 1)
        panoptic[region] += labels[region]
    return panoptic.astype(np.int32)


def _cap_labels(labels: np.ndarray, region: np.ndarray, count: int, limit: int) -> np.ndarray:
    """Keep the `limit` largest of `count` labels (renumbered 1.. in their old order); the rest become 0."""
    if count <= limit:
        return labels
    area = np.bincount(labels[region], minlength=count + 1)
    kept = np.sort(np.argsort(-area[1:], kind="stable")[:limit] + 1)
    table = np.zeros(count + 1, np.int32)
    table[kept] = np.arange(1, limit + 1)
    return table[labels]
