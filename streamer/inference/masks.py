"""Instance masks held only inside their boxes (pure tensor code).

Mask R-CNN (He et al. 2017) predicts each instance's mask as M x M probabilities (M = 28) inside its
box; torchvision pastes every one into a frame-sized map (N x H x W floats: 8 GB for 100
detections on a 4K frame). Here each is resized into its own box and kept there: the same
interpolation and the same pixels as torchvision's `paste_masks_in_image`, without the zeros around.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

PixelBox = tuple[int, int, int, int]  # x0, y0, x1, y1 as streamer.boxes, whole pixels: columns x0..x1-1, rows y0..y1-1


@dataclass(frozen=True)
class BoxMasks:
    """N instance masks on an H x W frame, each only inside its box.

    boxes:   N boxes (PixelBox), clipped to the frame; an empty one (x0 == x1 or y0 == y1) holds nothing.
    size:    (H, W) of the frame.
    sources: per mask, its pixels inside its box ((y1 - y0) x (x1 - x0) probabilities or booleans),
             or, with `grown`, Mask R-CNN's padded M x M probabilities, resized into the box only
             when `mask(n)` asks: then at most one mask is ever at frame resolution.
    grown:   per mask, the box (x0, y0, x1, y1, inclusive, may reach outside the frame) its source
             is resized to; None when the sources are the pixels already.
    """

    boxes: tuple[PixelBox, ...]
    size: tuple[int, int]
    sources: tuple[torch.Tensor, ...]
    grown: tuple[tuple[int, int, int, int], ...] | None = None

    def __len__(self) -> int:
        return len(self.boxes)

    def mask(self, n: int) -> torch.Tensor:
        """Mask n inside its box: (y1 - y0) x (x1 - x0), on the sources' device."""
        if self.grown is None:
            return self.sources[n]
        x0, y0, x1, y1 = self.boxes[n]
        if y0 == y1 or x0 == x1:
            return self.sources[n].new_zeros((y1 - y0, x1 - x0))
        bx0, by0, bx1, by1 = self.grown[n]
        h, w = max(by1 - by0 + 1, 1), max(bx1 - bx0 + 1, 1)
        resized = F.interpolate(self.sources[n][None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        return resized[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]

    def dense(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """N x H x W, zeros outside the boxes: for reference code and tests only, never on the hot path."""
        dtype = self.sources[0].dtype if self.sources else torch.float32
        full = torch.zeros((len(self), *self.size), dtype=dtype, device=device)
        for n, (plane, (x0, y0, x1, y1)) in enumerate(zip(full, self.boxes)):
            plane[y0:y1, x0:x1] = self.mask(n).to(device)
        return full

    @classmethod
    def from_dense(cls, masks: torch.Tensor) -> BoxMasks:
        """N x H x W masks -> each inside the box of its non-zero pixels (an empty box for a mask of
        zeros). For reference inputs and tests."""
        boxes, local = [], []
        for mask in masks:
            rows, cols = mask.bool().any(dim=1).nonzero()[:, 0], mask.bool().any(dim=0).nonzero()[:, 0]
            box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1) if rows.numel() else (0, 0, 0, 0)
            boxes.append(box)
            local.append(mask[box[1] : box[3], box[0] : box[2]])
        return cls(tuple(boxes), (int(masks.shape[1]), int(masks.shape[2])), tuple(local))


def paste_in_boxes(masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], padding: int = 1) -> BoxMasks:
    """Mask R-CNN's box-relative masks at frame resolution, each only inside its box.

    masks: N x 1 x M x M probabilities (float), boxes: N x 4 (x0, y0, x1, y1) in frame pixels, on
    the same device; size: (H, W). The rule is torchvision's `paste_masks_in_image` (padding by
    one pixel, the box grown to match, bilinear resize with align_corners=False, the box's last
    row and column included, clipped to the frame), so each mask holds exactly the pixels that
    function writes into its frame-sized map. The boxes come to the host in one transfer; the
    resizing waits for BoxMasks.mask.
    """
    height, width = size
    if masks.shape[0] == 0:
        return BoxMasks((), size, ())
    padded, scale = expand_masks(masks, padding=padding)
    grown = [tuple(box) for box in expand_boxes(boxes, scale).to(dtype=torch.int64).tolist()]
    clipped = []
    for bx0, by0, bx1, by1 in grown:
        y0, y1 = min(max(by0, 0), height), max(min(by1 + 1, height), 0)
        x0, x1 = min(max(bx0, 0), width), max(min(bx1 + 1, width), 0)
        clipped.append((x0, y0, max(x1, x0), max(y1, y0)))  # a box wholly outside the frame: empty
    return BoxMasks(tuple(clipped), size, tuple(padded[:, 0]), tuple(grown))
