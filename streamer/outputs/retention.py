"""Retention: which finished segments to remove, by age, by total size, and to keep room free.

Order and age come from what each segment recorded about itself when it began, in its MP4 comment
tag: a sequence number that only grows, the wall-clock start, and the boot's id with its
CLOCK_BOOTTIME. Not from its name or its mtime: a wrong clock writes those too, and a clock corrected
by a day would otherwise make the newest footage look the oldest. Within one boot a segment's age is
measured on CLOCK_BOOTTIME, which no clock correction moves; across boots on the wall clock, but a
segment is never taken for younger than one recorded after it. A segment without a record (made by
another tool, or cut off before its header) counts as older than every recorded one, in name order.
The newest finished segment is never removed, and every removal is logged with what and why.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import av

from streamer.outputs import preflight

log = logging.getLogger(__name__)

TAG = "comment"  # the MP4 metadata key the record is written under
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class Retention:
    """Which finished segments to remove (defaults and meanings: `output:` in streamer.config)."""

    keep_hours: float | None  # older than this
    max_bytes: int | None  # the oldest, beyond this total

    @property
    def active(self) -> bool:
        return self.keep_hours is not None or self.max_bytes is not None


@dataclass(frozen=True)
class Moment:
    """A point in time on both clocks: wall (s since the epoch) and this boot's CLOCK_BOOTTIME (s)."""

    wall: float
    boot_id: str
    boottime: float

    @classmethod
    def now(cls) -> Moment:
        try:
            boot = BOOT_ID.read_text().strip()
        except OSError:
            boot = ""
        return cls(time.time(), boot, time.clock_gettime(time.CLOCK_BOOTTIME))

    def seconds_since(self, then: Moment) -> float:
        same_boot = self.boot_id and self.boot_id == then.boot_id
        return self.boottime - then.boottime if same_boot else self.wall - then.wall


@dataclass(frozen=True)
class Record:
    """What a segment records about itself as it begins: its place in the sequence and its start."""

    sequence: int
    start: Moment

    def tag(self) -> str:
        return json.dumps({"streamer_segment": {"sequence": self.sequence, "start": self.start.wall,
                                                "boot_id": self.start.boot_id, "boottime": self.start.boottime}})

    @classmethod
    def from_tag(cls, text: str | None) -> Record | None:
        try:
            fields = json.loads(text or "")["streamer_segment"]
            return cls(int(fields["sequence"]), Moment(float(fields["start"]), str(fields["boot_id"]), float(fields["boottime"])))
        except (ValueError, KeyError, TypeError):
            return None


def read_record(path: Path) -> Record | None:
    """The record in an MP4's header, None when it has none or cannot be read."""
    try:
        with av.open(str(path)) as container:
            return Record.from_tag(container.metadata.get(TAG))
    except (av.FFmpegError, OSError):
        return None


@dataclass(frozen=True)
class Segment:
    path: Path
    size: int  # bytes
    mtime: float  # a fallback start for a segment without a record
    record: Record | None


class Catalog:
    """The segments of one recording with their records, each file's header read once."""

    def __init__(self) -> None:
        self._known: dict[Path, Segment] = {}

    def segments(self, paths: list[Path]) -> list[Segment]:
        """`paths` as Segments, oldest first (ordered); a file that vanished meanwhile is left out."""
        found = {}
        for path in paths:
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            known = self._known.get(path)
            if known is None or (known.size, known.mtime) != (stat.st_size, stat.st_mtime):
                known = Segment(path, stat.st_size, stat.st_mtime, read_record(path))
            found[path] = known
        self._known = found
        return ordered(list(found.values()))

    def next_sequence(self, paths: list[Path]) -> int:
        """One more than any sequence recorded in `paths` (finished segments and leftovers alike)."""
        return 1 + max((s.record.sequence for s in self.segments(paths) if s.record), default=0)


def ordered(segments: list[Segment]) -> list[Segment]:
    """Oldest first: segments without a record by name, then recorded ones by sequence."""
    return sorted(segments, key=lambda s: (s.record is not None, s.record.sequence if s.record else 0, s.path.name))


def ages(segments: list[Segment], now: Moment) -> list[float]:
    """Seconds since each (ordered) segment began: on CLOCK_BOOTTIME within this boot, else on the
    wall clock, and never less than the age of a segment recorded after it."""
    raw = [now.seconds_since(s.record.start) if s.record else now.wall - s.mtime for s in segments]
    for index in range(len(raw) - 2, -1, -1):
        raw[index] = max(raw[index], raw[index + 1])
    return raw


def plan(segments: list[Segment], retention: Retention, now: Moment) -> list[tuple[Segment, str]]:
    """The (ordered) segments to remove, oldest first, each with why: older than keep_hours, or
    the oldest while the total exceeds max_bytes. The newest is never among them."""
    removals = []
    total = sum(s.size for s in segments)
    for segment, age in zip(segments[:-1], ages(segments, now)):
        if retention.keep_hours is not None and age > retention.keep_hours * 3600:
            why = f"recorded {age / 3600:.2f} h ago, over output.keep_hours = {retention.keep_hours:g}"
        elif retention.max_bytes is not None and total > retention.max_bytes:
            why = f"the oldest while the segments hold {total / 1e6:.1f} MB, over output.max_bytes = {retention.max_bytes / 1e6:g} MB"
        else:
            break
        removals.append((segment, why))
        total -= segment.size
    return removals


def enforce_retention(segments: list[Segment], retention: Retention, now: Moment | None = None) -> None:
    """Remove what `plan` says, logging each; warn when the newest segment alone exceeds max_bytes."""
    if not retention.active or not segments:
        return
    for segment, why in plan(segments, retention, now or Moment.now()):
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()
            log.info("retention: removed %s (%s)", segment.path.name, why)
    newest = segments[-1]
    if retention.max_bytes is not None and newest.size > retention.max_bytes:
        log.warning("retention: %s alone holds %.1f MB, more than output.max_bytes = %g MB; it is kept (the newest "
                    "segment always is): raise max_bytes or shorten output.segment_seconds",
                    newest.path.name, newest.size / 1e6, retention.max_bytes / 1e6)


def make_room(folder: Path, segments: list[Segment], min_free_mb: float) -> int:
    """Remove the oldest (ordered) segments, never the newest, while `folder` has less than
    `min_free_mb` MB free (as an NVR keeps recording by dropping its oldest footage); returns how
    many were removed."""
    removed = 0
    for segment in segments[:-1]:
        if preflight.free_mb(folder) >= min_free_mb:
            break
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()
            removed += 1
            log.info("retention: removed %s (to keep output.min_free_mb = %g MB free)", segment.path.name, min_free_mb)
    return removed
