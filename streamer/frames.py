"""The data types that travel between the pipeline stages.

Frame (capture -> worker) and Panoptic (worker -> sink) are immutable; each stage reads what the
previous one produced and adds its own fields by building the next type.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from streamer.inference.counting import Counts, Event

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
    bbox: tuple[int, int, int, int]  # x, y, w, h
    track_id: int | None = None  # things: the object across frames (None: not tracked, or its track is too new)


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
