"""Draw a panoptic map over its frame: palette, alpha blend, outlines, labels.

`Renderer.overlay` does it all on the host (numpy/OpenCV). `DeviceOverlay` does the colours, blend
and outlines as tensor code where the panoptic map is (a GPU), so only the finished frame comes back
to the host; `Renderer.draw_labels` then adds the labels there.

Things (instances) are blended at `alpha` and outlined in white; stuff at `stuff_alpha` (by default
lower) and outlined in its own colour lightened halfway to white (`outline_colors`), so that a region
whose colour is close to what it shows (a grey building, a blue sky) is still visibly marked. Labels
scale with the frame (`label_style`) and are placed by `place_labels`: most confident first, never
on top of each other, none for tiny objects. A tracked thing's colour follows its instance id,
which the tracker keeps for the track's whole life, and its label names the track ("car 12").
Counting lines and zones are drawn over it all in amber, with their counts (`draw_counting`).
"""
from __future__ import annotations

import colorsys
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from streamer.boxes import to_coco
from streamer.frames import Category, Counts, Panoptic, Segment, Speed, ZoneVisits

INSTANCE_COLORS = 256  # instance ids cycle through this many hues per category
CONTOUR_COLOR = (255, 255, 255)
COUNT_COLOR = (0, 200, 255)  # BGR amber: counting lines and zones, apart from every class colour
MAX_TABLE = 1 << 22  # entries of the value -> colour table (16 MiB)
STRIP_ROWS = 32  # overlay works on strips this high: a 1080p strip's intermediates fit in the CPU cache
VOID, STUFF, THING = 0, 1, 2  # the kind of a panoptic value, the 4th byte of the value table

FONT = cv2.FONT_HERSHEY_SIMPLEX
DOT = "\u00b7"  # the middle dot between a label's track and its speed, drawn as a disc (label_patch)
LINE_HEIGHT = 1 / 24  # a label's line (as cv2.getTextSize measures it) as a fraction of the frame's shorter side:
MIN_LINE_HEIGHT = 12  # 15 px at 360p, 45 px at 1080p, but at least 12 px (capitals about 9 px: smaller is not legible)
MIN_LABEL_SIDE = 1 / 36  # things of fewer pixels than a square of this side (fraction of the shorter side) get no label

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels: x0 <= x < x1, y0 <= y < y1


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


@dataclass(frozen=True)
class LabelStyle:
    """How labels look on frames of one size (pixels unless said otherwise)."""

    scale: float  # cv2.putText font scale
    weight: int  # cv2.putText thickness of the white letters
    halo: int  # width of the black outline around the letters
    gap: int  # between a label and its object's box
    min_area: int  # things with fewer pixels get no label


def label_style(width: int, height: int) -> LabelStyle:
    """The label style for a width x height frame. Sizes follow the shorter side, so a frame shown
    fitted to a screen has labels of the same apparent size whatever its resolution (a 32:9 frame
    does not get huge ones); the floor keeps them legible on small frames."""
    short = min(width, height)
    line = max(MIN_LINE_HEIGHT, round(short * LINE_HEIGHT))
    weight = 1 if line < 24 else 2  # thin strokes look faint on large letters (OpenCV 5: 2 = bold)
    return LabelStyle(
        scale=cv2.getFontScaleFromHeight(FONT, line, weight),
        weight=weight,
        halo=max(1, round(line / 12)),
        gap=max(1, round(line / 8)),
        min_area=round(short * MIN_LABEL_SIDE) ** 2,
    )


@functools.lru_cache(maxsize=512)  # a label is one of (classes x 101 scores); 1080p patches are ~25 kB
def label_patch(text: str, style: LabelStyle) -> tuple[np.ndarray, np.ndarray]:
    """(letters, halo): two h x w uint8 coverage masks (0-255) of `text`, cut to the halo's extent,
    so that h x w is exactly the rectangle the label paints. Cached; read only."""
    (width, height), baseline = cv2.getTextSize(text.replace(DOT, " "), FONT, style.scale, style.weight)
    margin = style.halo + 2
    letters = np.zeros((height + baseline + 2 * margin, width + 2 * margin), np.uint8)
    x = margin
    for i, part in enumerate(text.split(DOT)):  # Hershey fonts are ASCII: the middle dot is drawn as a disc
        if i:
            space = cv2.getTextSize(" ", FONT, style.scale, style.weight)[0][0]
            cv2.circle(letters, (x + space // 2, margin + height // 2), max(1, style.weight), 255, -1, cv2.LINE_AA)
            x += space
        cv2.putText(letters, part, (x, margin + height), FONT, style.scale, 255, style.weight, cv2.LINE_AA)
        x += cv2.getTextSize(part, FONT, style.scale, style.weight)[0][0] if part else 0
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * style.halo + 1, 2 * style.halo + 1))
    halo = cv2.dilate(letters, disc)
    x, y, w, h = cv2.boundingRect(halo)
    letters, halo = letters[y:y + h, x:x + w], halo[y:y + h, x:x + w]
    letters.flags.writeable = halo.flags.writeable = False
    return letters, halo


def label_text(segment: Segment, categories: dict[int, Category], speed: Speed | None = None, unit: str = "kmh",
               zones: Mapping[str, float] | None = None) -> str:
    """What a thing's label says: its class name and track, e.g. "car 12", with its speed when it
    has a plausible one ("car 12 · 43 km/h", `unit` 'kmh' or 'mph') and its time in `zones` (zone ->
    seconds: "person 4 · crosswalk 12 s"); untracked, its score, "car 0.87"."""
    name = categories[segment.category_id].name
    if segment.track_id is not None:
        times = "".join(f" {DOT} {zone} {seconds:.0f} s" for zone, seconds in (zones or {}).items())
        if speed is not None and speed.plausible:
            return f"{name} {segment.track_id} {DOT} {speed.shown(unit)}{times}"
        return f"{name} {segment.track_id}{times}"
    return f"{name} {segment.score:.2f}" if segment.score is not None else name


def draw_counting(image: np.ndarray, counts: Counts) -> np.ndarray:
    """The counting zones (outlined) and lines (with an arrow towards their "in" side) of `counts`,
    each named with its totals ("north in 3 out 1", "crosswalk 4"), drawn into `image` (H x W x 3
    uint8 BGR, returned) in COUNT_COLOR; coordinates in pixels of the frame."""
    height, width = image.shape[:2]
    style = label_style(width, height)
    thick = max(2, 2 * style.weight)
    line_height = label_patch("Ag", style)[0].shape[0]
    for zone in counts.zones:
        points = np.round(np.array(zone.points)).astype(np.int32)
        cv2.polylines(image, [points], True, COUNT_COLOR, thick, cv2.LINE_AA)
        entries = sum(n for (name, _), n in counts.zone_entries.items() if name == zone.name)
        top = min(zone.points, key=lambda p: (p[1], p[0]))
        _stamp(image, f"{zone.name} {entries}", top[0], top[1] - line_height, style)
    for line in counts.lines:
        a, b = np.array(line.a), np.array(line.b)
        cv2.line(image, tuple(np.round(a).astype(int)), tuple(np.round(b).astype(int)), COUNT_COLOR, thick, cv2.LINE_AA)
        middle, along = (a + b) / 2, (b - a) / np.hypot(*(b - a))
        inward = np.array([-along[1], along[0]])  # the right-hand side looking from a to b (y down): "in"
        tip = middle + inward * 1.5 * line_height
        cv2.arrowedLine(image, tuple(np.round(middle).astype(int)), tuple(np.round(tip).astype(int)), COUNT_COLOR, thick,
                        cv2.LINE_AA, tipLength=0.4)
        crossed = {d: sum(n for (name, _, way), n in counts.line_crossings.items() if name == line.name and way == d)
                   for d in ("in", "out")}
        corner = middle - inward * 1.5 * line_height
        _stamp(image, f"{line.name} in {crossed['in']} out {crossed['out']}", corner[0], corner[1] - line_height / 2, style)
    return image


def _stamp(image: np.ndarray, text: str, x: float, y: float, style: LabelStyle) -> None:
    """`text` as a label (white letters, black outline) with its top-left corner near (x, y), moved into the frame."""
    letters, halo = label_patch(text, style)
    h, w = letters.shape
    x0 = int(min(max(round(x), 0), image.shape[1] - w))
    y0 = int(min(max(round(y), 0), image.shape[0] - h))
    if x0 >= 0 and y0 >= 0:
        _paste(image, letters, halo, x0, y0)


def _paste(image: np.ndarray, letters: np.ndarray, halo: np.ndarray, x0: int, y0: int) -> None:
    """A label patch (`label_patch`) into `image` with its top-left corner at (x0, y0), inside the frame."""
    area = image[y0:y0 + letters.shape[0], x0:x0 + letters.shape[1]]
    darkened = cv2.multiply(area, cv2.merge([255 - halo] * 3), scale=1 / 255)  # the black outline
    area[:] = cv2.add(darkened, cv2.merge([letters] * 3))  # white letters on it


def place_labels(segments: Sequence[Segment], sizes: Sequence[tuple[int, int]], frame: tuple[int, int], min_area: int,
                 gap: int) -> list[tuple[int, Rect]]:
    """Where the labels of `segments` go, chosen greedily, most confident first (score descending, a
    missing score counting as certain; then the larger area). A label is left-aligned with its box
    (moved left or right to stay in the frame) and takes the first of three places that lies inside
    the frame and meets no label placed before: above the box, inside the box's top, below the box.
    A label that fits nowhere, and the label of a segment of fewer than `min_area` pixels, is left out.

    sizes[i]: (width, height) in pixels of segment i's label; frame: (width, height); gap: pixels
    between a label and its box. Returns (index into segments, rectangle) per placed label, in
    placement order; the rectangles lie inside the frame and do not intersect.
    """
    frame_w, frame_h = frame

    def confidence(index: int) -> tuple[float, int]:
        segment = segments[index]
        return (1.0 if segment.score is None else segment.score), segment.area

    placed: list[tuple[int, Rect]] = []
    for index in sorted((i for i, s in enumerate(segments) if s.area >= min_area), key=confidence, reverse=True):
        x, y, w, h = to_coco(segments[index].box)  # whole pixels: the label is placed on the pixel grid
        width, height = sizes[index]
        left = min(max(x, 0), frame_w - width)
        for top in (y - gap - height, y + gap, y + h + gap):  # above, inside the top, below
            rect = (left, top, left + width, top + height)
            if left >= 0 and top >= 0 and top + height <= frame_h and not any(_intersect(rect, r) for _, r in placed):
                placed.append((index, rect))
                break
    return placed


def _intersect(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class Renderer:
    """Holds the palettes for one category table; `overlay` is the per-frame call.

    alpha: opacity of things (instances), 0-1; stuff_alpha: opacity of stuff, 0-1; contours: outline
    every segment (things in white, stuff in its colour lightened); labels: class name and score of
    things, placed by `place_labels`."""

    def __init__(self, categories: tuple[Category, ...], label_divisor: int, alpha: float, contours: bool, labels: bool,
                 stuff_alpha: float, speed_unit: str = "kmh", zone_times: bool = False):
        self.categories = {c.id: c for c in categories}
        self.zone_times = zone_times  # labels show each track's time in zones
        self.speed_unit = speed_unit  # 'kmh' or 'mph': how label_text shows speeds
        self.divisor = label_divisor
        self.alpha = alpha
        self.stuff_alpha = stuff_alpha
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

    def overlay(self, image: np.ndarray, panoptic: np.ndarray, segments: tuple[Segment, ...],
                speeds: Mapping[int, Speed] | None = None, zone_times: ZoneVisits | None = None) -> np.ndarray:
        """The frame with its segmentation drawn (H x W x 3 uint8 BGR, a new array); `image` H x W x 3
        uint8 BGR, `panoptic` H x W integer values; `speeds`: track id -> speed, for the labels. Void
        pixels keep the original image."""
        if self._table is None or panoptic.dtype.kind not in "iu":  # the plain (slow) way, same result
            colors = self.colorize(panoptic)
            things = panoptic % self.divisor > 0
            out = cv2.addWeighted(image, 1.0 - self.stuff_alpha, colors, self.stuff_alpha, 0.0)
            out[things] = cv2.addWeighted(image, 1.0 - self.alpha, colors, self.alpha, 0.0)[things]
            out[panoptic <= 0] = image[panoptic <= 0]
            if self.contours:
                edges = boundaries(panoptic)
                stuff_edges = edges & ~things & (panoptic > 0)
                out[stuff_edges] = outline_colors(colors)[stuff_edges]
                out[edges & things] = CONTOUR_COLOR
        else:  # the same steps, a strip of rows at a time so that they run in the CPU's cache
            if image.shape[:2] != panoptic.shape:
                raise ValueError(f"image is {image.shape[:2]} but its panoptic map {panoptic.shape}")
            out = np.empty_like(image)
            for top in range(0, panoptic.shape[0], STRIP_ROWS):
                self._overlay_rows(self._table, image, panoptic, out, top, min(top + STRIP_ROWS, panoptic.shape[0]))
        return self.draw_labels(out, segments, speeds, zone_times)

    def render(self, result: Panoptic) -> np.ndarray:
        """The frame with its segmentation drawn (H x W x 3 uint8 BGR): the whole overlay, or only
        the labels where the rest was drawn on the models' device (`result.drawn`); then the
        counting lines and zones, when the source has any."""
        visits = result.zone_times if self.zone_times else None
        if result.drawn is None:
            out = self.overlay(result.frame.image, result.panoptic_map, result.segments, result.speeds, visits)
        else:
            out = self.draw_labels(result.drawn, result.segments, result.speeds, visits)
        if result.counts is not None and (result.counts.lines or result.counts.zones):
            draw_counting(out, result.counts)
        return out

    def draw_labels(self, image: np.ndarray, segments: tuple[Segment, ...], speeds: Mapping[int, Speed] | None = None,
                    zone_times: ZoneVisits | None = None) -> np.ndarray:
        """Things' labels ("car 12", "car 12 · 43 km/h" with a speed in `speeds`, `label_text`), sized
        for this frame by `label_style` and put where `place_labels` says, drawn into `image`
        (H x W x 3 uint8 BGR, returned) when labels are on."""
        if not self.labels:
            return image
        height, width = image.shape[:2]
        style = label_style(width, height)
        things = [s for s in segments if s.isthing]
        speeds = speeds or {}
        patches = [label_patch(label_text(s, self.categories, speeds.get(s.track_id) if s.track_id is not None else None,
                                          self.speed_unit, zone_times.of(s.track_id) if zone_times and s.track_id is not None else None),
                               style) for s in things]
        sizes = [(letters.shape[1], letters.shape[0]) for letters, _ in patches]
        for index, (x0, y0, _, _) in place_labels(things, sizes, (width, height), style.min_area, style.gap):
            _paste(image, *patches[index], x0, y0)
        return image

    def device_overlay(self, device: torch.device) -> DeviceOverlay | None:
        """This renderer's colours and outlines as tensor code on `device` (None: no value table,
        as with a huge label_divisor; the host draws those frames)."""
        if self._table is None:
            return None
        return DeviceOverlay(self._table, self.alpha, self.stuff_alpha, self.contours, device)

    def _overlay_rows(self, table: np.ndarray, image: np.ndarray, panoptic: np.ndarray, out: np.ndarray, top: int, bottom: int) -> None:
        """Rows top..bottom-1 of `overlay`, written into `out`. Colours and kinds come from `table`, one
        lookup (out-of-range values raise IndexError and negative ones wrap, exactly as in
        `colorize`); one row above and below is looked up too, for the outlines."""
        above, below = max(top - 1, 0), min(bottom + 1, panoptic.shape[0])
        packed = np.take(table, panoptic[above:below])
        channels = packed.view(np.uint8).reshape(below - above, panoptic.shape[1], 4)  # B, G, R, kind
        rows = slice(top - above, bottom - above)
        colors = cv2.cvtColor(channels[rows], cv2.COLOR_BGRA2BGR)
        kind = cv2.extractChannel(channels[rows], 3)
        things = kind == THING
        source, target = image[top:bottom], out[top:bottom]
        cv2.addWeighted(source, 1.0 - self.stuff_alpha, colors, self.stuff_alpha, 0.0, dst=target)
        if self.alpha != self.stuff_alpha:
            cv2.copyTo(cv2.addWeighted(source, 1.0 - self.alpha, colors, self.alpha, 0.0), things.view(np.uint8), target)
        cv2.copyTo(source, (panoptic[top:bottom] <= 0).view(np.uint8), target)  # void keeps the image
        if self.contours:
            edges = boundaries(panoptic[above:below])[rows]
            cv2.copyTo(outline_colors(colors), (edges & (kind == STUFF)).view(np.uint8), target)
            cv2.copyTo(self._contour_image(target.shape[1:])[: bottom - top], (edges & things).view(np.uint8), target)

    def _contour_image(self, shape: tuple[int, ...]) -> np.ndarray:
        """STRIP_ROWS rows of the contour colour at this width (one width at a time; read only, so
        sink threads may share it)."""
        image = self._contour_images.get(shape)
        if image is None:
            image = np.full((STRIP_ROWS, *shape), CONTOUR_COLOR, np.uint8)
            self._contour_images = {shape: image}
        return image


class DeviceOverlay:
    """`Renderer.overlay` less the labels, in torch on the panoptic map's device: one table lookup
    for colour and kind, the blends, void pixels keeping the image, the outlines. The blend rounds
    half to even as OpenCV's does; the tests hold it to the host result."""

    def __init__(self, table: np.ndarray, alpha: float, stuff_alpha: float, contours: bool, device: torch.device):
        self.table = torch.from_numpy(table.view(np.uint8).reshape(-1, 4)).to(device)  # B, G, R, kind
        self.alpha = alpha
        self.stuff_alpha = stuff_alpha
        self.contours = contours
        self.contour_color = torch.tensor(CONTOUR_COLOR, dtype=torch.uint8, device=device)

    def __call__(self, image: torch.Tensor, panoptic: torch.Tensor) -> torch.Tensor:
        """image: H x W x 3 uint8 BGR; panoptic: H x W int32 from the fusion; both on this device."""
        if image.shape[:2] != panoptic.shape:
            raise ValueError(f"image is {tuple(image.shape[:2])} but its panoptic map {tuple(panoptic.shape)}")
        packed = self.table.index_select(0, panoptic.flatten()).view(*panoptic.shape, 4)
        colors, kind = packed[..., :3], packed[..., 3:]
        things = kind == THING
        out = torch.where(things, _blend(image, colors, self.alpha), _blend(image, colors, self.stuff_alpha))
        out = torch.where((panoptic > 0)[..., None], out, image)
        if self.contours:
            edges = boundaries(panoptic)[..., None]
            out = torch.where(edges & (kind == STUFF), outline_colors(colors), out)
            out = torch.where(edges & things, self.contour_color, out)
        return out


def _blend(image: torch.Tensor, colors: torch.Tensor, alpha: float) -> torch.Tensor:
    """cv2.addWeighted(image, 1 - alpha, colors, alpha, 0) in torch: uint8, rounded half to even."""
    return (image.float() * (1.0 - alpha) + colors.float() * alpha).round_().to(torch.uint8)


def outline_colors(colors):
    """The outline colour of stuff: its colour halfway to white, (c >> 1) + 128 per channel (uint8
    numpy array or torch tensor in, the same out), light enough to show on what a stuff colour
    resembles."""
    return (colors >> 1) + 128


def instance_boundaries(panoptic: np.ndarray, divisor: int) -> np.ndarray:
    """Boolean H x W: pixels of a thing segment that touch a different segment (4-neighbourhood)."""
    return boundaries(panoptic) & (panoptic % divisor > 0)


def boundaries(panoptic):
    """Boolean H x W: pixels whose value differs from a 4-neighbour's (a numpy array or a torch
    tensor in, the same kind out). A seam between two segments is marked on both sides."""
    edges = panoptic != panoptic  # all False, of the same kind
    horizontal = panoptic[:, 1:] != panoptic[:, :-1]
    vertical = panoptic[1:, :] != panoptic[:-1, :]
    edges[:, :-1] |= horizontal
    edges[:, 1:] |= horizontal
    edges[:-1, :] |= vertical
    edges[1:, :] |= vertical
    return edges


def value_table(stuff: np.ndarray, instances: np.ndarray, divisor: int) -> np.ndarray | None:
    """Every panoptic value 0 .. (C+1)*divisor-1 -> its colour and kind (VOID, STUFF or THING)
    packed in a little-endian uint32 (bytes B, G, R, kind), so a frame is coloured by one lookup.
    None when the table would be too big (a huge label_divisor)."""
    size = len(stuff) * divisor
    if size > MAX_TABLE:
        return None
    values = np.arange(size)
    category, instance = values // divisor, values % divisor
    colors = np.where((instance > 0)[:, None], instances[category, instance % INSTANCE_COLORS], stuff[category])
    table = np.zeros((size, 4), np.uint8)
    table[:, :3] = colors
    table[:, 3] = np.where(instance > 0, THING, np.where(category > 0, STUFF, VOID))
    return table.view("<u4").reshape(size)
