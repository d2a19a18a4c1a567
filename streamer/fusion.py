"""Semantic + instance predictions -> one panoptic map and its segments (pure tensor code).

The rule is Panoptic FPN's (Kirillov et al. 2019, as in panopticapi / detectron2):
  1. instances by score, highest first; those below `score_threshold` are dropped;
  2. masks binarised at `mask_threshold` (probability >= threshold); empty masks skipped;
  3. an instance more than `overlap_threshold` covered by instances already placed is rejected,
     otherwise it takes only the pixels that are still free;
  4. semantic stuff classes fill only free pixels; a stuff class whose free area is under
     `stuff_area_min` stays void; semantic thing pixels no instance claimed stay void.
Panoptic values are `category_id * label_divisor + instance_id` (instance ids count from 1 per
category in score order; stuff has instance id 0; void is 0). Everything runs on the inputs'
device; the only host transfers are one before and one after the loop over instances.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .frames import Segment


@dataclass(frozen=True)
class FusionParams:
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    overlap_threshold: float = 0.5
    stuff_area_min: int = 1024
    label_divisor: int = 1000


def fuse(
    semantic: torch.Tensor,
    masks: torch.Tensor,
    scores: torch.Tensor,
    categories: torch.Tensor,
    is_thing: torch.Tensor,
    params: FusionParams = FusionParams(),
) -> tuple[torch.Tensor, list[Segment]]:
    """Fuse one frame.

    semantic:   H x W integer category ids from the semantic model (0 = no class).
    masks:      N x H x W instance mask probabilities (or booleans), at the same resolution.
    scores:     N detection scores.
    categories: N panoptic category ids of the instances (all thing categories).
    is_thing:   bool lookup indexed by category id (length = number of categories + 1).
    Returns the H x W int32 panoptic map (on the inputs' device) and its segments:
    things in placement order, then stuff by category id.
    """
    height, width = semantic.shape
    device = semantic.device
    num_categories = is_thing.numel() - 1

    order = torch.argsort(scores, descending=True, stable=True)
    order = order[scores[order] >= params.score_threshold]
    binary = masks[order] >= params.mask_threshold if masks.dtype != torch.bool else masks[order]
    instance_categories = categories[order].long()
    count = binary.shape[0]

    owner = place_instances(binary, params.overlap_threshold)  # H x W: index into `order`, -1 = free

    # Instance ids: 1, 2, 3... per category among the placed instances, in score order.
    claimed = owner >= 0
    placed_area = torch.bincount(owner[claimed].long(), minlength=count)[:count]
    placed = placed_area > 0
    one_hot = torch.nn.functional.one_hot(instance_categories, num_categories + 1) * placed[:, None]
    instance_ids = one_hot.cumsum(0).gather(1, instance_categories[:, None]).squeeze(1)
    placed &= instance_ids < params.label_divisor  # ids must not spill into the next category
    thing_values = torch.where(placed, instance_categories * params.label_divisor + instance_ids, 0)

    # Stuff fills what the instances left free; small stuff regions and unclaimed thing pixels stay void.
    semantic = semantic.long()
    stuff = torch.where(~claimed & ~is_thing[semantic] & (semantic > 0), semantic, 0)
    stuff_area = torch.bincount(stuff.flatten(), minlength=num_categories + 1)
    stuff_kept = stuff_area >= max(params.stuff_area_min, 1)
    stuff_kept[0] = False
    stuff = torch.where(stuff_kept[stuff], stuff, 0)

    # Compact labels for statistics: 1..C stuff categories, C+1.. the instances.
    placed_pixel = torch.cat([placed, placed.new_zeros(1)])[owner.long()]  # owner -1 reads the False pad
    compact = torch.where(placed_pixel, num_categories + 1 + owner.long(), torch.where(claimed, 0, stuff))
    table = torch.cat([torch.arange(num_categories + 1, device=device) * params.label_divisor, thing_values])
    panoptic = table[compact].to(torch.int32)

    segments = _segments(compact, table, instance_categories, scores[order], num_categories, (height, width))
    return panoptic, segments


def place_instances(binary: torch.Tensor, overlap_threshold: float) -> torch.Tensor:
    """Greedy placement of score-ordered binary masks; returns the owner index per pixel (-1 = free).

    Each mask is only touched inside its bounding box. The boxes and areas come to the host in one
    transfer before the loop; inside it the accept/reject decision stays a device tensor.
    """
    count, height, width = binary.shape
    owner = torch.full((height, width), -1, dtype=torch.int32, device=binary.device)
    if count == 0:
        return owner
    rows = binary.any(dim=2)  # N x H
    cols = binary.any(dim=1)  # N x W
    areas = binary.sum(dim=(1, 2))
    boxes = torch.stack([_first(rows), _last(rows), _first(cols), _last(cols), areas], dim=1).tolist()
    occupied = torch.zeros((height, width), dtype=torch.bool, device=binary.device)
    for index, (y0, y1, x0, x1, area) in enumerate(boxes):
        if area == 0:
            continue
        window = (slice(y0, y1 + 1), slice(x0, x1 + 1))
        mask = binary[index][window]
        taken = occupied[window]
        overlap = (mask & taken).sum(dtype=torch.float64) / area
        new = mask & ~taken & (overlap <= overlap_threshold)
        owner[window] = torch.where(new, index, owner[window])
        occupied[window] = taken | new
    return owner


def _first(flags: torch.Tensor) -> torch.Tensor:
    return flags.int().argmax(dim=1)


def _last(flags: torch.Tensor) -> torch.Tensor:
    return flags.shape[1] - 1 - flags.flip(1).int().argmax(dim=1)


def _segments(
    compact: torch.Tensor,
    table: torch.Tensor,
    instance_categories: torch.Tensor,
    scores: torch.Tensor,
    num_categories: int,
    shape: tuple[int, int],
) -> list[Segment]:
    """Area and bounding box of every label of `compact`, brought to the host in one transfer."""
    height, width = shape
    labels = compact.flatten()
    size = table.numel()
    area = torch.bincount(labels, minlength=size)
    ys = torch.arange(height, device=labels.device).repeat_interleave(width)
    xs = torch.arange(width, device=labels.device).repeat(height)
    big = max(height, width)
    x0 = torch.full((size,), big, device=labels.device).scatter_reduce(0, labels, xs, "amin")
    x1 = torch.full((size,), -1, device=labels.device).scatter_reduce(0, labels, xs, "amax")
    y0 = torch.full((size,), big, device=labels.device).scatter_reduce(0, labels, ys, "amin")
    y1 = torch.full((size,), -1, device=labels.device).scatter_reduce(0, labels, ys, "amax")
    padded_scores = torch.cat([torch.full((num_categories + 1,), -1.0, device=labels.device), scores.float()])
    padded_categories = torch.cat([torch.arange(num_categories + 1, device=labels.device), instance_categories])
    stats = torch.stack([table, padded_categories, area, x0, y0, x1, y1]).T.tolist()
    score_list = padded_scores.tolist()

    things, stuff = [], []
    for label, (value, category, pixels, left, top, right, bottom) in enumerate(stats):
        if label == 0 or pixels == 0:
            continue
        isthing = label > num_categories
        segment = Segment(
            id=int(value),
            category_id=int(category),
            isthing=isthing,
            score=score_list[label] if isthing else None,
            area=int(pixels),
            bbox=(int(left), int(top), int(right - left + 1), int(bottom - top + 1)),
        )
        (things if isthing else stuff).append(segment)
    return things + stuff
