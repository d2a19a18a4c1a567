"""What the coordinator shows while an archive is annotated: one bar over all videos on a terminal
(videos done, frames, frames per second, ETA), a status line every interval otherwise.

The workers report each video's frames done and expected (the file's frame count) about every
REPORT_S; the total is estimated from the videos seen so far: the frames of those done and in
flight, plus the average of them for each video not started yet.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from streamer.service.status import Bar, RecentRate, usable_terminal

log = logging.getLogger(__name__)

REPORT_S = 0.5  # how often a worker reports its video's frames
RATE_WINDOW_S = 30.0  # frames per second (and the ETA) over about this long


class ArchiveProgress:
    """`todo` videos to annotate; `update(path, done, expected)` as workers report, `ended(path,
    frames, failed)` as videos end (`forget(path)` when one is tried again), `show()` at least
    every REPORT_S (the bar, or the status line once an interval has passed), `close()` at the end."""

    def __init__(self, todo: int, interval_s: float):
        self.todo = todo
        self.interval = interval_s
        self.ended_count = self.failed = self.frames = 0  # frames: of the videos ended
        self.in_flight: dict[Path, tuple[int, int | None]] = {}  # path -> (done, expected)
        self.rate = RecentRate(RATE_WINDOW_S)
        self._next_line = time.monotonic() + interval_s
        self._bar = None
        if usable_terminal(sys.stderr):
            self._bar = Bar(desc=f"0/{todo} videos", total=None, unit="frame", dynamic_ncols=True, file=sys.stderr, rate=self.rate,
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} frames [{elapsed}<{remaining}, {rate_fmt}]")
            self._redirect = logging_redirect_tqdm(tqdm_class=Bar)  # log lines above the bar
            self._redirect.__enter__()
        self.show(force=True)

    def update(self, path: Path, done: int, expected: int | None) -> None:
        self.in_flight[path] = (done, expected)

    def forget(self, path: Path) -> None:
        self.in_flight.pop(path, None)

    def ended(self, path: Path, frames: int, failed: bool) -> None:
        self.forget(path)
        self.ended_count += 1
        self.failed += failed
        self.frames += frames

    def done_frames(self) -> int:
        return self.frames + sum(done for done, _ in self.in_flight.values())

    def total(self) -> int | None:
        """Frames of the whole run, estimated; None until one video's count is known."""
        expected = [e for _, e in self.in_flight.values() if e]
        known = len(expected) + self.ended_count
        if not known:
            return None
        frames = self.frames + sum(expected)
        return frames + round(frames / known * (self.todo - known))

    def eta(self, now: float) -> float | None:
        total, rate = self.total(), self.rate.rate(now)
        return (total - self.done_frames()) / rate if total is not None and rate > 0 else None

    def text(self, now: float) -> str:
        """`3/6 videos (1 failed), 1234 frames, 2.7 fps, ETA 120 s`"""
        eta = self.eta(now)
        return (f"{self.ended_count}/{self.todo} videos ({self.failed} failed), {self.done_frames()} frames, "
                f"{self.rate.rate(now):.1f} fps, ETA {'?' if eta is None else f'{eta:.0f} s'}")

    def show(self, force: bool = False) -> None:
        now = time.monotonic()
        done = self.done_frames()
        self.rate.add(now, done)
        if self._bar is not None:
            self._bar.total = self.total()
            self._bar.n = done
            self._bar.set_description_str(f"{self.ended_count}/{self.todo} videos" + (f", {self.failed} failed" if self.failed else ""),
                                          refresh=False)
            self._bar.refresh()
        elif force or now >= self._next_line:
            self._next_line = now + self.interval
            log.info("annotate: %s", self.text(now))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._redirect.__exit__(None, None, None)
