"""streamer.boxes: the one box convention and its edges, against the pixels themselves."""
from __future__ import annotations

import numpy as np
import pytest

from streamer.boxes import ground_points, of_mask, of_pixels, of_xywh, to_coco, window


def test_a_mask_box_covers_exactly_its_pixels_and_converts_to_coco_and_back() -> None:
    mask = np.zeros((20, 30), bool)
    mask[3:9, 4:17] = True  # rows 3..8, columns 4..16
    box = of_mask(mask)
    assert box == (4.0, 3.0, 17.0, 9.0) == of_pixels(4, 3, 16, 8)
    assert to_coco(box) == [4, 3, 13, 6]  # COCO: x, y, width, height
    assert of_xywh(to_coco(box)) == box
    assert mask[window(box)].all() and mask[window(box)].sum() == mask.sum()


def test_a_single_pixel_and_a_box_over_the_edge() -> None:
    mask = np.zeros((5, 5), bool)
    mask[4, 0] = True
    assert to_coco(of_mask(mask)) == [0, 4, 1, 1]
    image = np.arange(25).reshape(5, 5)
    assert image[window((-2.5, 3.2, 2.0, 9.0))].tolist() == [[15, 16], [20, 21]]  # clipped to the array, sub-pixel edges widened


def test_an_empty_mask_has_no_box() -> None:
    with pytest.raises(ValueError):
        of_mask(np.zeros((4, 4), bool))


def test_ground_points_are_bottom_centres() -> None:
    boxes = np.array([(0, 0, 10, 20), (5.5, 1, 6.5, 2)], np.float64)
    assert ground_points(boxes).tolist() == [[5.0, 20.0], [6.0, 2.0]]
