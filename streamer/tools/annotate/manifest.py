"""OUT/manifest.jsonl: one line per video when it finishes or fails, so a rerun knows what is done.

A line: {"input", "output", "size", "mtime", "status": "done" | "failed", "frames", "seconds",
"attempts", "error"}. Each is appended, flushed and fsynced as one write, so a kill leaves whole
lines (and at most a cut-off last one, which is skipped). The newest line of a video counts. A video
is finished when that line says "done" for the input's current size and modification time and its
export (OUT/output/panoptic.json, written last) is there.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from streamer.tools.annotate.jobs import Job

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
DONE, FAILED = "done", "failed"


@dataclass(frozen=True)
class Entry:
    input: str  # the video's path, as found
    output: str  # its folder under OUT
    size: int  # bytes, when it was read
    mtime: float  # its modification time then (os.stat st_mtime)
    status: str  # DONE | FAILED
    frames: int  # annotated
    seconds: float  # wall time of the last attempt
    attempts: int
    error: str | None  # the failure's one line


def entry(job: Job, status: str, frames: int, seconds: float, attempts: int, error: str | None = None) -> Entry:
    """A manifest line for `job`, with the input's size and modification time now."""
    stat = job.path.stat()
    return Entry(str(job.path), job.name.as_posix(), stat.st_size, stat.st_mtime, status, frames, round(seconds, 3), attempts, error)


class Manifest:
    """The manifest of OUT (read once when opened; lines appended as videos end)."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out / MANIFEST
        self.latest: dict[str, Entry] = {}  # output folder -> its newest line
        if self.path.exists():
            for number, line in enumerate(self.path.read_text().splitlines(), 1):
                try:
                    item = Entry(**json.loads(line))
                except (json.JSONDecodeError, TypeError):
                    log.warning("%s line %d: incomplete or damaged (cut off by a kill?), skipped", self.path, number)
                    continue
                self.latest[item.output] = item

    def finished(self, job: Job) -> bool:
        """Done before, from this same input, and its export is whole."""
        item = self.latest.get(job.name.as_posix())
        if item is None or item.status != DONE or not (self.out / job.name / "panoptic.json").is_file():
            return False
        stat = job.path.stat()
        return (item.size, item.mtime) == (stat.st_size, stat.st_mtime)

    def record(self, item: Entry) -> None:
        self.latest[item.output] = item
        data = (json.dumps(asdict(item)) + "\n").encode()
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, data)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
