"""Boxes: one convention from the model to the export, converted only at the edges, here.

A `Box` is (x0, y0, x1, y1) in float pixels of the frame, as torchvision's detection models give
them: x to the right, y down, (x0, y0) the top-left corner of the first pixel covered and (x1, y1)
the bottom-right corner of the last, so a box of whole pixels covers columns x0 .. x1 - 1 and rows
y0 .. y1 - 1. The edges: COCO's `bbox` [x, y, width, height] in the export (`to_coco`), integer
windows for slicing arrays (`window`), a thing's ground point for counting (`ground_points`).
"""
from __future__ import annotations

import math

import numpy as np

Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def of_pixels(left: int, top: int, right: int, bottom: int) -> Box:
    """The box of whole pixels from column `left` to `right` and row `top` to `bottom`, all included."""
    return float(left), float(top), float(right + 1), float(bottom + 1)


def of_mask(mask: np.ndarray) -> Box:
    """The box of a 2-D boolean mask's True pixels (at least one). Raises ValueError on an empty mask."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        raise ValueError("an empty mask has no box")
    return of_pixels(int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def to_coco(box: Box) -> list[int]:
    """COCO's bbox, [x, y, width, height] in whole pixels (the COCO data format; our boxes of masks
    are whole pixels, so nothing is rounded away)."""
    x0, y0, x1, y1 = box
    left, top = math.floor(x0), math.floor(y0)
    return [left, top, math.ceil(x1) - left, math.ceil(y1) - top]


def of_xywh(bbox: tuple[float, float, float, float] | list[float]) -> Box:
    """[x, y, width, height] (COCO's bbox, OpenCV's Rect) as a Box."""
    x, y, w, h = bbox
    return float(x), float(y), float(x + w), float(y + h)


def window(box: Box) -> tuple[slice, slice]:
    """Rows and columns of the whole pixels the box touches, for indexing an H x W array
    (`array[window(box)]`); numpy clips them to the array."""
    x0, y0, x1, y1 = box
    return slice(max(math.floor(y0), 0), max(math.ceil(y1), 0)), slice(max(math.floor(x0), 0), max(math.ceil(x1), 0))


def ground_points(boxes: np.ndarray) -> np.ndarray:
    """N x 4 boxes -> N x 2 (x, y) bottom centres: where an upright object stands on the ground."""
    return np.column_stack(((boxes[:, 0] + boxes[:, 2]) / 2, boxes[:, 3]))
