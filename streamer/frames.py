"""The data types that travel between the pipeline stages.

Frame (capture -> worker) and Panoptic (worker -> sink) are immutable; each stage reads what the
previous one produced and adds its own fields by building the next type. Line, Zone, Event and
Counts are the counting types (streamer.inference.counting computes them).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from streamer.boxes import Box

LABEL_DIVISOR = 1000
"""Panoptic maps hold `category_id * LABEL_DIVISOR + instance_id`; stuff has instance_id 0; void is 0."""


@dataclass(frozen=True)
class Category:
    """One row of the panoptic category table. Ids are 1-based; 0 is void."""

    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int]  # RGB


@dataclass(frozen=True)
class Frame:
    """One decoded image from a source."""

    source_id: str
    index: int  # 0-based position in the source's stream
    image: np.ndarray = field(repr=False)  # H x W x 3, uint8, BGR (OpenCV order)
    pts_ms: float  # the stream's own timestamp
    captured_at: float  # wall clock (time.time()) when it was read
    captured_mono: float  # time.monotonic() when it was read, for latency
    connection: int = 0  # the source's reconnects before it: a change means a gap, and tracks end

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.image.shape[1], self.image.shape[0]


@dataclass(frozen=True)
class Segment:
    """One region of a panoptic map: a stuff class or one thing instance."""

    id: int  # the value of its pixels in the panoptic map
    category_id: int
    isthing: bool
    score: float | None  # detection score for things; None for stuff
    area: int
    box: Box  # x0, y0, x1, y1 in float pixels (streamer.boxes); a segment's is whole pixels
    track_id: int | None = None  # things: the object across frames (None: not tracked, or its track is too new)


KMH_PER_MPS = 3.6
MPH_PER_MPS = 3600.0 / 1609.344


@dataclass(frozen=True)
class Speed:
    """A track's speed on one frame, from its ground points (streamer.analytics.speed)."""

    mps: float  # metres per second, >= 0
    plausible: bool  # False: above its category's cap; never reported as a measurement

    @property
    def kmh(self) -> float:
        return self.mps * KMH_PER_MPS

    def shown(self, unit: str) -> str:
        """'43 km/h', or '27 mph' for `unit` 'mph'."""
        return f"{self.mps * MPH_PER_MPS:.0f} mph" if unit == "mph" else f"{self.kmh:.0f} km/h"


@dataclass(frozen=True)
class Panoptic:
    """A frame with its fused panoptic segmentation."""

    frame: Frame
    panoptic_map: np.ndarray = field(repr=False)  # H x W int32, see LABEL_DIVISOR
    segments: tuple[Segment, ...]
    timings: Mapping[str, float] = field(default_factory=dict, repr=False)  # worker stage -> seconds; read only
    drawn: np.ndarray | None = field(default=None, repr=False)  # the overlay less labels, when drawn on the models' device
    counts: Counts | None = None  # the source's counts after this frame (None: not counting)
    events: tuple[Event, ...] = ()  # the line crossings and zone entries of this frame
    capped: bool = False  # the instance model returned its detections_per_image: there may have been more
    zone_times: ZoneVisits | None = None  # time in the source's zones after this frame (None: no zones, or not tracking)
    speeds: Mapping[int, Speed] = field(default_factory=dict)  # track id -> its speed on this frame (tracks with one only)


@dataclass(frozen=True)
class Line:
    """A counting line from `a` to `b`, pixels (x, y); "in" is towards its right-hand side on screen (module docstring)."""

    name: str
    a: tuple[float, float]
    b: tuple[float, float]

    def __post_init__(self) -> None:
        a, b = (tuple(float(v) for v in p) for p in (self.a, self.b))  # lists (from a config file) become tuples
        if len(a) != 2 or len(b) != 2 or not all(map(math.isfinite, (*a, *b))) or a == b:
            raise ValueError(f"line {self.name!r}: a and b must be two distinct finite points, got {self.a}, {self.b}")
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)


@dataclass(frozen=True)
class Zone:
    """A counting zone: a simple or self-intersecting polygon of >= 3 points (x, y), pixels, even-odd rule;
    `loitering_s`: a visit this long (stream seconds) raises a loitering event (None: never)."""

    name: str
    points: tuple[tuple[float, float], ...]
    loitering_s: float | None = None

    def __post_init__(self) -> None:
        points = tuple(tuple(float(v) for v in p) for p in self.points)
        if len(points) < 3 or not all(len(p) == 2 and all(map(math.isfinite, p)) for p in points):
            raise ValueError(f"zone {self.name!r}: needs >= 3 finite points (x, y), got {self.points}")
        if self.loitering_s is not None and not (math.isfinite(self.loitering_s) and self.loitering_s >= 0):
            raise ValueError(f"zone {self.name!r}: loitering_s must be >= 0, got {self.loitering_s}")
        object.__setattr__(self, "points", points)


@dataclass(frozen=True)
class ZoneVisits:
    """Time in zones after one frame (streamer.analytics.zone_time), stream seconds."""

    tracks: tuple[int, ...]  # the track ids seen this frame
    zones: tuple[str, ...]  # the zones' names
    seconds: np.ndarray = field(repr=False)  # len(tracks) x len(zones) float64: time inside so far; NaN: never inside
    ended: tuple[tuple[str, str, float], ...] = ()  # visits that ended this frame: (zone, category, seconds)

    def of(self, track_id: int) -> dict[str, float]:
        """The track's seconds per zone it has been in ({} when it has been in none, or was not seen this frame)."""
        try:
            row = self.seconds[self.tracks.index(track_id)]
        except ValueError:
            return {}
        return {zone: float(v) for zone, v in zip(self.zones, row) if v == v}


@dataclass(frozen=True)
class Event:
    """One count: a track crossing a line (direction "in" / "out") or entering a zone (direction None)."""

    kind: Literal["line", "zone"]
    name: str  # the line's or zone's
    track_id: int
    category: str
    direction: str | None
    pts_s: float  # stream time of the frame it happened in


@dataclass(frozen=True)
class Counts:
    """A snapshot of the totals since the Counter was made (the dicts are copies)."""

    objects_total: dict[str, int]  # category -> distinct tracks seen
    visible: dict[str, int]  # category -> tracked things in the last frame; 0 for categories seen before
    line_crossings: dict[tuple[str, str, str], int]  # (line, category, "in" | "out") -> n; only those > 0
    zone_entries: dict[tuple[str, str], int]  # (zone, category) -> n; only those > 0
    lines: tuple[Line, ...] = ()  # every configured line, in order
    zones: tuple[Zone, ...] = ()  # every configured zone, in order

    def to_dict(self) -> dict:
        """JSON-friendly: {"objects_total": {cat: n}, "visible": {cat: n}, "lines": {line: {cat: {"in": n, "out": n}}},
        "zones": {zone: {cat: n}}}. Every configured line and zone has its entry, `{}` before anything counted; a
        category that crossed a line has both directions."""
        lines: dict[str, dict] = {line.name: {} for line in self.lines}
        for (line, category, direction), n in sorted(self.line_crossings.items()):
            lines.setdefault(line, {}).setdefault(category, {"in": 0, "out": 0})[direction] = n
        zones: dict[str, dict] = {zone.name: {} for zone in self.zones}
        for (zone, category), n in sorted(self.zone_entries.items()):
            zones.setdefault(zone, {})[category] = n
        return {"objects_total": dict(self.objects_total), "visible": dict(self.visible), "lines": lines, "zones": zones}
