"""OUT/manifest.jsonl: one line per video when it finishes or fails, so a rerun knows what is done.

A line: {"input", "output", "size", "mtime", "status": "done" | "partial" | "failed", "frames",
"seconds", "attempts", "error"}; "size" and "mtime" are the input's when its attempt began (null when
it could not be read). Each is appended, flushed and fsynced as one write, so a kill leaves whole
lines and at most a cut-off last one. A line is appended on a fresh line: after a cut-off one, a
newline comes first, so the next record is never glued onto it. The newest line of a video counts. A
video is finished when that line says "done" for the input's current size and modification time and
its export (OUT/output/panoptic.json, written last) is there; "partial" (annotated up to
runtime.max_frames) is finished only for a run with a limit no higher than its frames.

Reading survives any damage (a cut-off line, a stray byte that is not UTF-8, NULs from a crash,
a field of the wrong type, nesting too deep for the parser): such a line is skipped, one warning
line names how many and where, and a record glued after the damage on the same line (by an older
streamer) is still read.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from streamer.errors import CannotCreate
from streamer.logs import shown_name
from streamer.tools.annotate.jobs import Job
from streamer.uris import redact_uri

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
DONE, PARTIAL, FAILED = "done", "partial", "failed"
STATUSES = (DONE, PARTIAL, FAILED)
SHOWN_LINES = 5  # damaged lines named in the warning; the others counted


@dataclass(frozen=True)
class Entry:
    input: str  # the video's path, as found
    output: str  # its folder under OUT
    size: int | None  # bytes, when its attempt began (None: the file could not be read)
    mtime: float | None  # its modification time then (os.stat st_mtime)
    status: str  # DONE | PARTIAL | FAILED
    frames: int  # annotated
    seconds: float  # wall time of the last attempt
    attempts: int
    error: str | None  # the failure's one line


def entry(job: Job, status: str, frames: int, seconds: float, attempts: int, error: str | None = None,
          stat: tuple[int, float] | None = None) -> Entry:
    """A manifest line for `job`: `stat` (size, mtime) is the input's when the attempt began; without
    it, the input's now (None, None when it is gone or unreadable)."""
    if stat is None:
        try:
            now = os.stat(job.path)
            stat = (now.st_size, now.st_mtime)
        except OSError:
            stat = None
    size, mtime = stat if stat is not None else (None, None)
    shown_error = redact_uri(error) if error else error  # whichever path failed: never a secret in the manifest
    return Entry(str(job.path), job.name.as_posix(), size, mtime, status, frames, round(seconds, 3), attempts, shown_error)


def _number(value: Any, kind: type) -> bool:
    """`value` is a JSON number of `kind` (int; float also takes an int), finite, never a bool."""
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and math.isfinite(value)


_CHECKS = {
    "input": lambda v: isinstance(v, str) and v != "",
    "output": lambda v: isinstance(v, str) and v != "",
    "size": lambda v: v is None or (_number(v, int) and v >= 0),
    "mtime": lambda v: v is None or _number(v, float),
    "status": lambda v: v in STATUSES,
    "frames": lambda v: _number(v, int) and v >= 0,
    "seconds": lambda v: _number(v, float),
    "attempts": lambda v: _number(v, int) and v >= 0,
    "error": lambda v: v is None or isinstance(v, str),
}
assert set(_CHECKS) == {f.name for f in fields(Entry)}


def parse_entry(value: Any) -> Entry | None:
    """A decoded line as an Entry, None unless every field is there with its type (fields a newer
    streamer may add are left out, not refused)."""
    if not isinstance(value, dict) or not all(name in value and check(value[name]) for name, check in _CHECKS.items()):
        return None
    return Entry(**{name: value[name] for name in _CHECKS})


def parse_line(text: str) -> tuple[list[Entry], bool]:
    """The records of one line, and whether it was whole: one record; for a damaged line whatever
    whole records it still holds (a record appended by an older streamer right after a cut-off one
    shares its line)."""
    try:
        item = parse_entry(json.loads(text))
    except (ValueError, RecursionError):  # not JSON, a number too long to read, nesting too deep
        item = None
    if item is not None:
        return [item], True
    decoder, found = json.JSONDecoder(), []
    start = text.find("{")
    while start != -1:
        try:
            value, end = decoder.raw_decode(text, start)
            item = parse_entry(value)
        except (ValueError, RecursionError):
            item = None
        if item is not None:
            found.append(item)
        start = text.find("{", end if item is not None else start + 1)
    return found, False


class Manifest:
    """The manifest of OUT (read once when opened; lines appended as videos end). The caller holds
    OUT's lock: one run writes it at a time."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out / MANIFEST
        self.latest: dict[str, Entry] = {}  # output folder -> its newest line
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CannotCreate(f"{shown_name(self.path)}: cannot be read ({exc.strerror}); "
                               "fix its permissions, or choose another --out") from None
        damaged: list[int] = []
        for number, raw in enumerate(data.split(b"\n"), 1):
            if not raw.strip(b" \t\r"):
                continue
            try:
                items, whole = parse_line(raw.decode("utf-8"))
            except UnicodeDecodeError:  # the damage is skipped; a record beside it may be whole
                items, whole = parse_line(raw.decode("utf-8", errors="replace"))[0], False
            if not whole:
                damaged.append(number)
            for item in items:
                self.latest[item.output] = item
        if damaged:
            more = f" and {len(damaged) - SHOWN_LINES} more" if len(damaged) > SHOWN_LINES else ""
            where = ", ".join(map(str, damaged[:SHOWN_LINES])) + more
            log.warning("%s: %d damaged line%s skipped (line%s %s; cut off by a kill, or edited); "
                        "the videos they recorded are done again", self.path, len(damaged),
                        "" if len(damaged) == 1 else "s", "" if len(damaged) == 1 else "s", where)

    def finished(self, job: Job, max_frames: int | None = None) -> bool:
        """Done before, from this same input, and its export is whole; with `max_frames`, also a
        partial record of at least that many frames."""
        item = self.latest.get(job.name.as_posix())
        if item is None or not (item.status == DONE or (item.status == PARTIAL and max_frames and item.frames >= max_frames)):
            return False
        try:
            if not (self.out / job.name / "panoptic.json").is_file():
                return False
            stat = os.stat(job.path)
        except OSError:  # gone since it was found: it is tried (and failed) with the others
            return False
        return (item.size, item.mtime) == (stat.st_size, stat.st_mtime)

    def record(self, item: Entry) -> None:
        """Append `item` (on a fresh line), flushed to the disk; CannotCreate when it cannot be written."""
        self.latest[item.output] = item
        data = (json.dumps(asdict(item)) + "\n").encode()  # ASCII: a name's odd bytes are \\u escapes
        try:
            descriptor = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                size = os.fstat(descriptor).st_size
                if size and os.pread(descriptor, 1, size - 1) != b"\n":  # the last line was cut off: not onto it
                    data = b"\n" + data
                os.write(descriptor, data)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        except OSError as exc:
            raise CannotCreate(f"{shown_name(self.path)}: cannot record {shown_name(item.input)} ({exc.strerror}); "
                               "the videos finished so far are recorded, the others are done again next time") from None

