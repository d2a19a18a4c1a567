"""Occupancy heatmaps: per category, how often each place of the frame was covered by a thing's mask,
and where things' ground points passed, accumulated at reduced resolution with exponential decay.

The grid. A frame of W x H pixels is cut into cells of `cell` x `cell` pixels (`cell_size`: the
smallest whole number that keeps the grid within `max_width` columns); cell (i, j) is sampled at its
centre pixel (row min(i * cell + cell // 2, H - 1), likewise for columns), so a mask covers a cell
when it covers that pixel: nearest-neighbour downsampling, exact on hand-made maps. A thing adds only
the cells of its box (box-local, like streamer.inference.masks): the cost of a frame is the sum of
its things' box areas / cell^2, whatever the frame size. A ground point (the bottom centre of the
box, the counter's anchor) adds one to the cell it falls in.

Decay. With a half-life h (stream seconds), a frame at time t weighs 2^((t - t0) / h) against the
first; read at time t, every count is divided by the newest weight, so a sample T seconds old counts
2^(-T / h): an exponentially weighted moving average over stream time (the running weight is rebased
now and then so that it stays finite). `frames` is the decayed number of frames, so
`counts / frames` is the occupancy: the fraction of (recent) frames in which the cell was covered.
With no half-life (None) every frame counts 1 for ever.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from streamer.frames import Segment

_REBASE = 2.0**16  # the running weight is folded into the counts past this (float32 keeps 24 bits)


def cell_size(width: int, max_width: int) -> int:
    """Pixels per cell side: the smallest n >= 1 with ceil(width / n) <= max_width. Raises ValueError
    for a width or max_width below 1."""
    if width < 1 or max_width < 1:
        raise ValueError(f"width and max_width must be >= 1, got {width}, {max_width}")
    return max(1, math.ceil(width / max_width))


@dataclass(frozen=True)
class Snapshot:
    """A heatmap as read at one moment: float32 rows x cols arrays per category name."""

    cell: int  # pixels per cell side
    size: tuple[int, int]  # (width, height) of the frames, pixels
    frames: float  # the decayed number of frames (the denominator of occupancy)
    masks: Mapping[str, np.ndarray]  # category -> decayed frames its masks covered each cell
    ground: Mapping[str, np.ndarray]  # category -> decayed ground points in each cell

    def occupancy(self, category: str | None = None) -> np.ndarray:
        """Fraction of frames each cell was covered, in [0, 1]: one category's, or every thing's (None)."""
        masks = [self.masks[category]] if category is not None else list(self.masks.values())
        total = sum(masks, np.zeros(self.shape, np.float32))
        return total / self.frames if self.frames > 0 else total

    @property
    def shape(self) -> tuple[int, int]:
        return -(-self.size[1] // self.cell), -(-self.size[0] // self.cell)


class Heatmap:
    """The heatmaps of one source. `add` per frame in stream order (any thread); `snapshot` from any
    other (a copy, under a lock held only for the copy).

    `categories`: category id -> name of the thing categories to map (others are ignored);
    `max_width`: most columns of the grid; `half_life_s`: decay (None: none);
    `label_divisor`: the panoptic encoding's (streamer.frames.LABEL_DIVISOR).
    """

    def __init__(self, categories: Mapping[int, str], max_width: int = 480, half_life_s: float | None = None) -> None:
        if max_width < 1:
            raise ValueError(f"max_width must be >= 1, got {max_width}")
        if half_life_s is not None and not (math.isfinite(half_life_s) and half_life_s > 0):
            raise ValueError(f"half_life_s must be > 0 or None, got {half_life_s}")
        self.categories = dict(categories)
        self.max_width = int(max_width)
        self.half_life_s = half_life_s
        self._lock = threading.Lock()
        self._size: tuple[int, int] | None = None
        self._cell = 1
        self._masks: dict[str, np.ndarray] = {}
        self._ground: dict[str, np.ndarray] = {}
        self._frames = 0.0
        self._t0: float | None = None  # the time whose frames weigh 1
        self._weight = 1.0  # the newest frame's weight

    def add(self, panoptic_map: np.ndarray, segments: Sequence[Segment], pts_s: float) -> None:
        """One frame: `panoptic_map` H x W int (segment ids), its `segments`, at stream time `pts_s` (s).
        A frame of another size than the last starts the maps over (a camera that changed its mode)."""
        height, width = panoptic_map.shape[:2]
        with self._lock:
            if self._size != (width, height):
                self._start(width, height)
            weight = self._step(pts_s)
            cell, half = self._cell, self._cell // 2
            rows, cols = self._shape()
            for s in segments:
                name = self.categories.get(s.category_id)
                if name is None or not s.isthing:
                    continue
                x0, y0, x1, y1 = s.box
                i0, i1 = _cells(y0, y1, cell, half, rows, height)
                j0, j1 = _cells(x0, x1, cell, half, cols, width)
                masks = self._masks.get(name)
                if masks is None:
                    masks, self._ground[name] = self._plane(self._masks, name), self._plane(self._ground, name)
                if i1 > i0 and j1 > j0:
                    r0, c0 = i0 * cell + half, j0 * cell + half
                    hit = panoptic_map[r0 : r0 + (i1 - i0 - 1) * cell + 1 : cell, c0 : c0 + (j1 - j0 - 1) * cell + 1 : cell] == s.id
                    if hit.shape != (i1 - i0, j1 - j0):  # the last row or column: its sample is clamped to the edge
                        hit = _clamped(panoptic_map, s.id, i0, i1, j0, j1, cell, half, height, width)
                    view = masks[i0:i1, j0:j1]
                    if weight == 1.0:
                        view += hit
                    else:
                        view += np.float32(weight) * hit
                gi, gj = int(y1 // cell), int((x0 + x1) / 2 // cell)  # its ground point, the box's bottom centre
                self._ground[name][min(max(gi, 0), rows - 1), min(max(gj, 0), cols - 1)] += weight

    def snapshot(self) -> Snapshot | None:
        """The maps now, decayed to the last frame; None before the first frame."""
        with self._lock:
            if self._size is None:
                return None
            scale = 1.0 / self._weight
            return Snapshot(self._cell, self._size, self._frames * scale,
                            {name: plane * np.float32(scale) for name, plane in self._masks.items()},
                            {name: plane * np.float32(scale) for name, plane in self._ground.items()})

    def _start(self, width: int, height: int) -> None:
        self._size, self._cell = (width, height), cell_size(width, self.max_width)
        self._masks, self._ground, self._frames, self._t0, self._weight = {}, {}, 0.0, None, 1.0

    def _shape(self) -> tuple[int, int]:
        assert self._size is not None
        return -(-self._size[1] // self._cell), -(-self._size[0] // self._cell)

    def _plane(self, planes: dict[str, np.ndarray], name: str) -> np.ndarray:
        plane = planes.get(name)
        if plane is None:
            plane = planes[name] = np.zeros(self._shape(), np.float32)
        return plane

    def _step(self, pts_s: float) -> float:
        """This frame's weight; counts the frame."""
        if self.half_life_s is None:
            weight = 1.0
        else:
            if self._t0 is None:
                self._t0 = pts_s
            weight = max(2.0 ** ((pts_s - self._t0) / self.half_life_s), self._weight)  # time never runs back
            if weight > _REBASE:  # fold the weight into the counts: they keep their ratios
                for plane in (*self._masks.values(), *self._ground.values()):
                    plane /= np.float32(weight)
                self._frames /= weight
                self._t0, weight = pts_s, 1.0
        self._weight = weight
        self._frames += weight
        return weight


def _cells(lo: float, hi: float, cell: int, half: int, count: int, extent: int) -> tuple[int, int]:
    """The cells [a, b) along one axis whose sample pixel (min(k * cell + half, extent - 1)) lies in [lo, hi)."""
    a = max(math.ceil((lo - half) / cell), 0)
    b = count if hi > extent - 1 else min(math.ceil((hi - half) / cell), count)  # the last sample may be clamped to the edge
    return a, max(b, a)


def _clamped(panoptic_map: np.ndarray, segment_id: int, i0: int, i1: int, j0: int, j1: int, cell: int, half: int,
             height: int, width: int) -> np.ndarray:
    rows = np.minimum(np.arange(i0, i1) * cell + half, height - 1)
    cols = np.minimum(np.arange(j0, j1) * cell + half, width - 1)
    return panoptic_map[np.ix_(rows, cols)] == segment_id


def sample(panoptic_map: np.ndarray, cell: int) -> np.ndarray:
    """The reference: every cell's sample pixel of `panoptic_map` (H x W) -> rows x cols."""
    height, width = panoptic_map.shape[:2]
    half = cell // 2
    rows = np.minimum(np.arange(-(-height // cell)) * cell + half, height - 1)
    cols = np.minimum(np.arange(-(-width // cell)) * cell + half, width - 1)
    return panoptic_map[np.ix_(rows, cols)]


def colorize(values: np.ndarray, size: tuple[int, int] | None = None, background: np.ndarray | None = None,
             alpha: float = 0.6) -> np.ndarray:
    """A map (rows x cols, >= 0) as a picture: the square root of each value's fraction of the maximum
    (so that places visited rarely still show beside a busy one), OpenCV's INFERNO colour map,
    resized to `size` (width, height; nearest neighbour, so cells stay cells) and, over `background`
    (H x W x 3 uint8 BGR of that size), blended with `alpha` where the map is above zero. Returns
    H x W x 3 uint8 BGR."""
    peak = float(values.max()) if values.size else 0.0
    scaled: np.ndarray = np.zeros(values.shape, np.uint8) if peak <= 0 else \
        np.clip(np.sqrt(np.maximum(values, 0) / peak) * 255.0, 0, 255).astype(np.uint8)
    picture = cv2.applyColorMap(scaled, cv2.COLORMAP_INFERNO)
    if size is not None and (picture.shape[1], picture.shape[0]) != tuple(size):
        picture = cv2.resize(picture, tuple(size), interpolation=cv2.INTER_NEAREST)
        scaled = cv2.resize(scaled, tuple(size), interpolation=cv2.INTER_NEAREST)
    if background is None:
        return picture
    blended = cv2.addWeighted(background, 1.0 - alpha, picture, alpha, 0.0)
    return np.where(scaled[..., None] > 0, blended, background)


def png(values: np.ndarray, size: tuple[int, int] | None = None, background: np.ndarray | None = None) -> bytes:
    """`colorize` encoded as PNG bytes."""
    ok, data = cv2.imencode(".png", colorize(values, size, background))
    if not ok:
        raise ValueError("the heatmap could not be encoded as PNG")
    return data.tobytes()
