"""Semantic + instance predictions -> one panoptic map and its segments (pure tensor code).

The rule is Panoptic FPN's (Kirillov et al. 2019, as in panopticapi / detectron2):
  1. instances by score, highest first; those below `score_threshold` are dropped;
  2. masks binarised at `mask_threshold` (probability >= threshold); empty masks skipped;
  3. an instance more than `overlap_threshold` covered by instances already placed is rejected,
     otherwise it takes only the pixels that are still free;
  4. semantic stuff classes fill only free pixels; a stuff class whose free area is under
     `stuff_area_min` stays void; semantic thing pixels no instance claimed stay void.
Panoptic values are `category_id * label_divisor + instance_id` (instance ids count from 1 per
category in score order; stuff has instance id 0; void is 0). Everything runs on the inputs' device.

Cost: the masks come inside their boxes (streamer.inference.masks.BoxMasks), and every step
touches a mask only there; the frame-sized work is a handful of passes over one int32 label map,
whatever N is. On a GPU the areas and boxes of all segments come to the host in one transfer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from streamer.boxes import of_pixels
from streamer.frames import Segment
from streamer.inference.masks import BoxMasks


@dataclass(frozen=True)
class FusionParams:
    """The rule's thresholds (defaults and meanings: the `fusion:` section of streamer.config)."""

    score_threshold: float  # instances scoring below are dropped
    mask_threshold: float  # mask probability that counts as inside
    overlap_threshold: float  # reject an instance more than this fraction covered by those placed
    stuff_area_min: int  # stuff regions under this many pixels become void
    label_divisor: int  # panoptic value = category_id * label_divisor + instance_id


def vote_categories(semantic: torch.Tensor, masks: BoxMasks, candidates: torch.Tensor, mask_threshold: float) -> torch.Tensor:
    """Each instance's category among its candidates, as the semantic model votes under its mask.

    semantic:   H x W integer category ids.
    masks:      N instance masks (probabilities) inside their boxes, on the same frame.
    candidates: N x K category ids, the default first, 0 for none (K >= 1).
    Returns the N chosen category ids (long): the candidate that the most pixels with mask
    probability >= `mask_threshold` carry in the semantic map; ties, and masks where no candidate
    gets a pixel, keep the default. An instance model may know fewer classes than the semantic one:
    COCO has no rider, but a Cityscapes model tells a rider from a pedestrian, so the cityscapes
    preset lists a COCO person as [person, rider].
    """
    chosen = candidates[:, 0].clone()
    several = (candidates[:, 1:] > 0).any(dim=1) if candidates.shape[1] > 1 else torch.zeros_like(chosen, dtype=torch.bool)
    if not bool(several.any()):
        return chosen
    rows = several.nonzero()[:, 0]
    options = candidates[rows]
    votes = []
    for row, row_options in zip(rows.tolist(), options):
        x0, y0, x1, y1 = masks.boxes[row]
        inside = _binary(masks.mask(row), mask_threshold)
        window = semantic[y0:y1, x0:x1]
        votes.append(torch.stack([(inside & (window == option)).sum() for option in row_options]))
    counts = torch.stack(votes)
    counts[options == 0] = -1  # padding never wins
    chosen[rows] = options.gather(1, counts.argmax(dim=1, keepdim=True))[:, 0]  # argmax: the first of equal counts
    return chosen


def fuse(
    semantic: torch.Tensor,
    masks: BoxMasks,
    scores: torch.Tensor,
    categories: torch.Tensor,
    is_thing: torch.Tensor,
    params: FusionParams,
) -> tuple[torch.Tensor, list[Segment]]:
    """Fuse one frame.

    semantic:   H x W integer category ids from the semantic model (0 = no class).
    masks:      N instance masks (probabilities or booleans) inside their boxes, on the same frame.
    scores:     N detection scores.
    categories: N panoptic category ids of the instances (all thing categories).
    is_thing:   bool lookup indexed by category id (length = number of categories + 1).
    Returns the H x W int32 panoptic map (on the inputs' device) and its segments:
    things in placement order, then stuff by category id.
    """
    device = semantic.device
    num_categories = is_thing.numel() - 1
    first_instance = num_categories + 1

    order = torch.argsort(scores, descending=True, stable=True)
    order = order[scores[order] >= params.score_threshold]
    instance_categories = categories[order].long()
    count = order.numel()

    # One label map: 0..C the semantic class of a pixel no instance took, C+1+k the k-th instance
    # in score order. Negative semantic ids read as void, as 0 does.
    low, high = torch.stack(torch.aminmax(semantic)).tolist() if semantic.numel() else (0, 0)
    if high > num_categories:
        raise ValueError(f"semantic map holds category {high}, but only {num_categories} categories exist")
    compact = semantic.to(torch.int32, copy=True)
    if low < 0:
        compact.clamp_(min=0)
    place_instances(compact, masks, order, first_instance, params.mask_threshold, params.overlap_threshold)

    # Pixels per label and per (row, label) / (column, label): areas and boxes of every segment.
    size = first_instance + count
    row_counts, col_counts = _label_counts(compact, size)
    area = row_counts.sum(dim=0)

    # Instance ids: 1, 2, 3... per category among the placed instances, in score order.
    placed = area[first_instance:] > 0
    one_hot = torch.nn.functional.one_hot(instance_categories, first_instance) * placed[:, None]
    instance_ids = one_hot.cumsum(0).gather(1, instance_categories[:, None]).squeeze(1)
    placed &= instance_ids < params.label_divisor  # ids must not spill into the next category
    thing_values = torch.where(placed, instance_categories * params.label_divisor + instance_ids, 0)

    # Stuff keeps the free pixels of its class if there are enough; thing classes without an instance stay void.
    classes = torch.arange(first_instance, device=device)
    stuff_kept = (area[:first_instance] >= max(params.stuff_area_min, 1)) & ~is_thing.to(device) & (classes > 0)
    stuff_values = torch.where(stuff_kept, classes * params.label_divisor, 0)

    table = torch.cat([stuff_values, thing_values])
    panoptic = table.to(torch.int32).index_select(0, compact.flatten()).view(compact.shape)

    segments = _segments(table, area, row_counts, col_counts, instance_categories, scores[order], first_instance)
    return panoptic, segments


def place_instances(
    compact: torch.Tensor,
    masks: BoxMasks,
    order: torch.Tensor,
    first_label: int,
    mask_threshold: float,
    overlap_threshold: float,
) -> None:
    """Greedy placement in score order: the k-th instance writes `first_label + k` into the free
    pixels of `compact` it covers, unless more than `overlap_threshold` of its mask is taken already.

    Each mask is binarised and compared only inside its box; the accept/reject decision stays a
    device tensor (an empty mask's overlap is NaN, which accepts nothing).
    """
    for k, index in enumerate(order.tolist()):
        x0, y0, x1, y1 = masks.boxes[index]
        if y0 == y1 or x0 == x1:
            continue
        mask = _binary(masks.mask(index), mask_threshold)
        labels = compact[y0:y1, x0:x1]  # a view: filled in place
        taken = labels >= first_label
        overlap = (mask & taken).sum(dtype=torch.float64) / mask.sum()
        labels.masked_fill_(mask & ~taken & (overlap <= overlap_threshold), first_label + k)


def _binary(mask: torch.Tensor, threshold: float) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask >= threshold


def _label_counts(compact: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """H x size and W x size pixel counts of every label in every row and every column."""
    height, width = compact.shape
    device = compact.device
    row_keys = compact + (torch.arange(height, device=device, dtype=torch.int32) * size)[:, None]
    col_keys = compact + (torch.arange(width, device=device, dtype=torch.int32) * size)[None, :]
    rows = torch.bincount(row_keys.flatten(), minlength=height * size).view(height, size)
    cols = torch.bincount(col_keys.flatten(), minlength=width * size).view(width, size)
    return rows, cols


def _first(flags: torch.Tensor) -> torch.Tensor:
    return flags.int().argmax(dim=1)


def _last(flags: torch.Tensor) -> torch.Tensor:
    return flags.shape[1] - 1 - flags.flip(1).int().argmax(dim=1)


def _segments(
    table: torch.Tensor,
    area: torch.Tensor,
    row_counts: torch.Tensor,
    col_counts: torch.Tensor,
    instance_categories: torch.Tensor,
    scores: torch.Tensor,
    first_instance: int,
) -> list[Segment]:
    """One Segment per label that has a value and pixels, brought to the host in one transfer."""
    device = table.device
    rows, cols = (row_counts > 0).T, (col_counts > 0).T  # label x H, label x W
    padded_categories = torch.cat([torch.arange(first_instance, device=device), instance_categories])
    stats = torch.stack([table, padded_categories, area, _first(cols), _first(rows), _last(cols), _last(rows)]).T.tolist()
    score_list = scores.float().tolist()

    things: list[Segment] = []
    stuff: list[Segment] = []
    for label, (value, category, pixels, left, top, right, bottom) in enumerate(stats):
        if value == 0 or pixels == 0:
            continue
        isthing = label >= first_instance
        segment = Segment(
            id=int(value),
            category_id=int(category),
            isthing=isthing,
            score=score_list[label - first_instance] if isthing else None,
            area=int(pixels),
            box=of_pixels(left, top, right, bottom),
        )
        (things if isthing else stuff).append(segment)
    return things + stuff
