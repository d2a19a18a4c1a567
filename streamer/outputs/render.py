"""Draw a panoptic map over its frame: palette, alpha blend, instance contours, labels.

`Renderer.overlay` does it all on the host (numpy/OpenCV). `DeviceOverlay` does the colours, blend
and contours as tensor code where the panoptic map is (a GPU), so only the finished frame comes back
to the host; `Renderer.draw_labels` then adds the labels there.
"""
from __future__ import annotations

import colorsys

import cv2
import numpy as np
import torch

from streamer.frames import Category, Panoptic, Segment

INSTANCE_COLORS = 256  # instance ids cycle through this many hues per category
CONTOUR_COLOR = (255, 255, 255)
MAX_TABLE = 1 << 22  # entries of the value -> colour table (16 MiB)
STRIP_ROWS = 32  # overlay works on strips this high: a 1080p strip's intermediates fit in the CPU cache


def stuff_palette(categories: tuple[Category, ...]) -> np.ndarray:
    """(C+1) x 3 BGR: index = category id, row 0 (void) black."""
    lut = np.zeros((len(categories) + 1, 3), dtype=np.uint8)
    for category in categories:
        lut[category.id] = category.color[::-1]
    return lut


def instance_palette(categories: tuple[Category, ...]) -> np.ndarray:
    """(C+1) x INSTANCE_COLORS x 3 BGR: a distinct, stable colour for every (category, instance id).

    Hues step by the golden ratio from the category colour's own hue, so neighbouring ids differ
    clearly and the same id always gets the same colour.
    """
    lut = np.zeros((len(categories) + 1, INSTANCE_COLORS, 3), dtype=np.uint8)
    for category in categories:
        r, g, b = (c / 255.0 for c in category.color)
        hue, _, _ = colorsys.rgb_to_hsv(r, g, b)
        for index in range(INSTANCE_COLORS):
            h = (hue + index * 0.618033988749895) % 1.0
            value = 0.95 - 0.25 * ((index * 7) % 4) / 3
            rgb = colorsys.hsv_to_rgb(h, 0.85, value)
            lut[category.id, index] = [round(255 * c) for c in rgb[::-1]]
    return lut


class Renderer:
    """Holds the palettes for one category table; `overlay` is the per-frame call."""

    def __init__(self, categories: tuple[Category, ...], label_divisor: int, alpha: float, contours: bool, labels: bool):
        self.categories = {c.id: c for c in categories}
        self.divisor = label_divisor
        self.alpha = alpha
        self.contours = contours
        self.labels = labels
        self._stuff = stuff_palette(categories)
        self._instances = instance_palette(categories)
        self._table = value_table(self._stuff, self._instances, label_divisor)
        self._contour_images: dict[tuple[int, ...], np.ndarray] = {}

    def colorize(self, panoptic: np.ndarray) -> np.ndarray:
        """H x W x 3 BGR colour of every segment; void black."""
        category = panoptic // self.divisor
        instance = panoptic % self.divisor
        colors = self._instances[category, instance % INSTANCE_COLORS]
        return np.where((instance > 0)[..., None], colors, self._stuff[category])

    def overlay(self, image: np.ndarray, panoptic: np.ndarray, segments: tuple[Segment, ...]) -> np.ndarray:
        """The frame with its segmentation blended in; void pixels keep the original image."""
        if self._table is None or panoptic.dtype.kind not in "iu":  # the plain (slow) way, same result
            colors = self.colorize(panoptic)
            blended = cv2.addWeighted(image, 1.0 - self.alpha, colors, self.alpha, 0.0)
            out = np.where((panoptic > 0)[..., None], blended, image)
            if self.contours:
                out[instance_boundaries(panoptic, self.divisor)] = CONTOUR_COLOR
        else:  # the same steps, a strip of rows at a time so that they run in the CPU's cache
            if image.shape[:2] != panoptic.shape:
                raise ValueError(f"image is {image.shape[:2]} but its panoptic map {panoptic.shape}")
            out = np.empty_like(image)
            for top in range(0, panoptic.shape[0], STRIP_ROWS):
                self._overlay_rows(image, panoptic, out, top, min(top + STRIP_ROWS, panoptic.shape[0]))
        return self.draw_labels(out, segments)

    def render(self, result: Panoptic) -> np.ndarray:
        """The frame with its segmentation drawn (H x W x 3 uint8 BGR): the whole overlay, or only
        the labels where the rest was drawn on the models' device (`result.drawn`)."""
        if result.drawn is None:
            return self.overlay(result.frame.image, result.panoptic_map, result.segments)
        return self.draw_labels(result.drawn, result.segments)

    def draw_labels(self, image: np.ndarray, segments: tuple[Segment, ...]) -> np.ndarray:
        """Each thing's name and score above its box, drawn into `image` (when labels are on)."""
        if self.labels:
            for segment in segments:
                if segment.isthing:
                    self._label(image, segment)
        return image

    def device_overlay(self, device: torch.device) -> DeviceOverlay | None:
        """This renderer's colours and contours as tensor code on `device` (None: no value table,
        as with a huge label_divisor; the host draws those frames)."""
        return None if self._table is None else DeviceOverlay(self._table, self.alpha, self.contours, device)

    def _overlay_rows(self, image: np.ndarray, panoptic: np.ndarray, out: np.ndarray, top: int, bottom: int) -> None:
        """Rows top..bottom-1 of `overlay`, written into `out`. Colours and the instance flag come
        from one table lookup (out-of-range values raise IndexError and negative ones wrap, exactly
        as in `colorize`); one row above and below is looked up too, for the contours."""
        above, below = max(top - 1, 0), min(bottom + 1, panoptic.shape[0])
        packed = np.take(self._table, panoptic[above:below])
        channels = packed.view(np.uint8).reshape(below - above, panoptic.shape[1], 4)  # B, G, R, is-instance
        rows = slice(top - above, bottom - above)
        colors = cv2.cvtColor(channels[rows], cv2.COLOR_BGRA2BGR)
        target = out[top:bottom]
        cv2.addWeighted(image[top:bottom], 1.0 - self.alpha, colors, self.alpha, 0.0, dst=target)
        cv2.copyTo(image[top:bottom], (panoptic[top:bottom] <= 0).view(np.uint8), target)  # void keeps the image
        if self.contours:
            edges = _boundaries(panoptic[above:below], cv2.extractChannel(channels, 3).view(bool))[rows]
            cv2.copyTo(self._contour_image(target.shape[1:])[: bottom - top], edges.view(np.uint8), target)

    def _contour_image(self, shape: tuple[int, ...]) -> np.ndarray:
        """STRIP_ROWS rows of the contour colour at this width (one width at a time; read only, so
        sink threads may share it)."""
        image = self._contour_images.get(shape)
        if image is None:
            image = np.full((STRIP_ROWS, *shape), CONTOUR_COLOR, np.uint8)
            self._contour_images = {shape: image}
        return image

    def _label(self, image: np.ndarray, segment: Segment) -> None:
        name = self.categories[segment.category_id].name
        text = f"{name} {segment.score:.2f}" if segment.score is not None else name
        x, y = segment.bbox[0], max(segment.bbox[1] - 3, 10)
        cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)


class DeviceOverlay:
    """`Renderer.overlay` less the labels, in torch on the panoptic map's device: one table lookup
    for colour and instance flag, the blend, void pixels keeping the image, the contours. The blend
    rounds half to even as OpenCV's does; the tests hold it to the host result."""

    def __init__(self, table: np.ndarray, alpha: float, contours: bool, device: torch.device):
        self.table = torch.from_numpy(table.view(np.uint8).reshape(-1, 4)).to(device)  # B, G, R, is-instance
        self.alpha = alpha
        self.contours = contours
        self.contour_color = torch.tensor(CONTOUR_COLOR, dtype=torch.uint8, device=device)

    def __call__(self, image: torch.Tensor, panoptic: torch.Tensor) -> torch.Tensor:
        """image: H x W x 3 uint8 BGR; panoptic: H x W int32 from the fusion; both on this device."""
        if image.shape[:2] != panoptic.shape:
            raise ValueError(f"image is {tuple(image.shape[:2])} but its panoptic map {tuple(panoptic.shape)}")
        packed = self.table.index_select(0, panoptic.flatten()).view(*panoptic.shape, 4)
        blended = (image.float() * (1.0 - self.alpha) + packed[..., :3].float() * self.alpha).round_().to(torch.uint8)
        out = torch.where((panoptic > 0)[..., None], blended, image)
        if self.contours:
            out = torch.where(_boundaries(panoptic, packed[..., 3].bool())[..., None], self.contour_color, out)
        return out


def instance_boundaries(panoptic: np.ndarray, divisor: int) -> np.ndarray:
    """Boolean H x W: pixels of a thing segment that touch a different segment (4-neighbourhood)."""
    return _boundaries(panoptic, panoptic % divisor > 0)


def _boundaries(panoptic, is_instance):
    """Pixels that differ from a 4-neighbour, where `is_instance` (numpy arrays or torch tensors)."""
    edges = is_instance & False  # all False, of the same kind
    horizontal = panoptic[:, 1:] != panoptic[:, :-1]
    vertical = panoptic[1:, :] != panoptic[:-1, :]
    edges[:, :-1] |= horizontal
    edges[:, 1:] |= horizontal
    edges[:-1, :] |= vertical
    edges[1:, :] |= vertical
    edges &= is_instance
    return edges


def value_table(stuff: np.ndarray, instances: np.ndarray, divisor: int) -> np.ndarray | None:
    """Every panoptic value 0 .. (C+1)*divisor-1 -> its colour and instance flag packed in a
    little-endian uint32 (bytes B, G, R, flag), so a frame is coloured by one lookup.
    None when the table would be too big (a huge label_divisor)."""
    size = len(stuff) * divisor
    if size > MAX_TABLE:
        return None
    values = np.arange(size)
    category, instance = values // divisor, values % divisor
    colors = np.where((instance > 0)[:, None], instances[category, instance % INSTANCE_COLORS], stuff[category])
    table = np.zeros((size, 4), np.uint8)
    table[:, :3] = colors
    table[:, 3] = instance > 0
    return table.view("<u4").reshape(size)
