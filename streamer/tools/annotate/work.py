"""One video through the pipeline into its export folder: the unit of work both engines run, in a
worker process of this machine or a Ray actor, with the models loaded once per worker.

Archives change under a long run. A video is taken as it is when its attempt begins (its size and
modification time then go into the manifest), so one replaced while it waited is annotated as it
is now; one that is gone or unreadable then is failed at once, not tried again. One that changes
while it is read (size, modification time, or another file put in its place) is failed, tried
again as --retries allows, and one deleted meanwhile is failed: its export would not match its
file. Any error of one video (an exception of the work included) is that video's failure; the
others go on."""
from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Any, Protocol

from streamer.config import Config
from streamer.control import Stats
from streamer.errors import StreamerError
from streamer.logs import one_line, shown_name
from streamer.tools.annotate.jobs import Job
from streamer.tools.annotate.manifest import DONE, FAILED, PARTIAL
from streamer.tools.annotate.progress import REPORT_S
from streamer.uris import redact_uri

VIDEO_NAME = "annotated.mp4"  # with --video, beside the export


@dataclass(frozen=True)
class Outcome:
    """How one attempt at one video went."""

    status: str  # DONE | PARTIAL | FAILED
    frames: int  # annotated
    seconds: float  # wall time
    error: str | None  # the failure's one line
    stat: tuple[int, float] | None = None  # the input's (size, mtime) when the attempt began; None: unreadable then
    retry: bool = True  # False: another attempt cannot go better (the file is gone)


def video_config(config: Config, job: Job, folder: Path, video: bool) -> Config:
    """`config` for one video: it as the only source, its export (and annotated MP4) in `folder`,
    no window, no server (runtime.max_frames as configured: such a video is recorded partial)."""
    source = (config.source or config.sources[0]).model_copy(update={"uri": str(job.path), "id": "video"})
    output = config.output.model_copy(update={"export_dir": str(folder), "video": str(folder / VIDEO_NAME) if video else None,
                                              "display": False, "overwrite": False, "segment_seconds": None,
                                              "keep_hours": None, "max_bytes": None})
    return config.model_copy(update={
        "source": source, "sources": [], "output": output,
        "server": config.server.model_copy(update={"enabled": False}),
    })


@dataclass(frozen=True)
class Report:
    """`report(done, expected)`: puts (path, done, expected) on `queue`, a multiprocessing or a Ray
    queue the coordinator reads."""

    queue: Any
    path: Path

    def __call__(self, done: int, expected: int | None) -> None:
        self.queue.put_nowait((self.path, done, expected))


@contextlib.contextmanager
def reporting(stats: Stats, report: Report | None):
    """While inside: `report(frames done with, frames expected)` every REPORT_S, from a thread."""
    if report is None:
        yield
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(REPORT_S):
            report(stats.processed + sum(stats.dropped.values()), stats.expected)

    thread = threading.Thread(target=loop, name="report", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class Annotator:
    """The models (loaded once, on the configured device) and the settings every video shares."""

    def __init__(self, config: Config, video: bool):
        from streamer.inference.models import resolve_device
        from streamer.inference.worker import load_models

        self.config = config
        self.video = video
        self.loaded = load_models(config, resolve_device(config.runtime.device))

    def annotate(self, job: Job, out: Path, report: Report | None = None) -> Outcome:
        """`job`'s video into OUT/name/; a folder left there by an attempt that was cut off is
        replaced. `report(done, expected)` gets its frames about every REPORT_S meanwhile."""
        from streamer.service import build
        from streamer.service.pipeline import Pipeline

        folder = out / job.name
        started = time.monotonic()
        shown = shown_name(job.path)
        try:
            before = os.stat(job.path)
        except OSError as exc:
            why = (f"cannot be read ({exc.strerror})" if not isinstance(exc, FileNotFoundError)
                   else "a link to nothing" if os.path.islink(job.path) else "no such file (deleted since the run found it)")
            return Outcome(FAILED, 0, time.monotonic() - started, f"{shown}: {why}", None, retry=False)
        if not S_ISREG(before.st_mode):  # a FIFO or a device named like a video: never opened (a FIFO would block)
            return Outcome(FAILED, 0, time.monotonic() - started, f"{shown}: not a regular file", None, retry=False)
        stat = (before.st_size, before.st_mtime)
        try:
            if folder.exists():
                shutil.rmtree(folder)  # never a finished export: annotate only hands over unfinished videos
            pipeline = Pipeline(video_config(self.config, job, folder, self.video), build.outputs, self.loaded)
            with reporting(pipeline.stats["video"], report):
                summary = pipeline.run()
        except (StreamerError, OSError) as exc:  # a change of the file explains it better, where there was one
            if changed := _changed(job.path, before):
                return Outcome(FAILED, 0, time.monotonic() - started, f"{shown}: {changed[0]}", stat, retry=changed[1])
            error = str(exc) if isinstance(exc, StreamerError) else f"{type(exc).__name__}: {exc}"
            return Outcome(FAILED, 0, time.monotonic() - started, one_line(redact_uri(error)), stat)
        seconds = time.monotonic() - started
        if changed := _changed(job.path, before):
            return Outcome(FAILED, summary.processed, seconds, f"{shown}: {changed[0]}", stat, retry=changed[1])
        if summary.exit_code != 0:
            error = one_line(redact_uri(str(pipeline.control.failure or f"exit {summary.exit_code}")))
            return Outcome(FAILED, summary.processed, seconds, error, stat)
        if summary.processed == 0:
            return Outcome(FAILED, 0, seconds, f"{shown}: no frame could be read", stat)
        limit = self.config.runtime.max_frames
        if limit is not None and pipeline.stats["video"].read >= limit:  # stopped there: the rest is not annotated
            return Outcome(PARTIAL, summary.processed, seconds, None, stat)
        return Outcome(DONE, summary.processed, seconds, None, stat)


def _changed(path: Path, before: os.stat_result) -> tuple[str, bool] | None:
    """How the file at `path` changed since `before` was taken, so that its export would not match
    it, and whether another attempt may go better (not for a file that is gone); None when it did not."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return "deleted while it was annotated", False
    except OSError as exc:
        return f"could no longer be read while it was annotated ({exc.strerror})", True
    if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
        return "replaced by another file while it was annotated", True
    if now.st_size != before.st_size or now.st_mtime_ns != before.st_mtime_ns:
        return (f"changed while it was annotated ({before.st_size} -> {now.st_size} bytes"
                + (", modified" if now.st_mtime_ns != before.st_mtime_ns else "") + ")"), True
    return None


class Run(Protocol):
    """What the engines' loop tells the coordinator."""

    def done(self, job: Job, outcome: Outcome) -> bool: ...  # record an attempt; True: try it again
    def report(self, path: Path, done: int, expected: int | None) -> None: ...  # a worker's frames
    def show(self) -> None: ...  # called at least every REPORT_S
    def check(self) -> None: ...  # called at least every REPORT_S: raises to stop the run (a stop signal)


def dispatch(jobs: Iterable[Job], workers: int, submit: Callable[[int, Job], Any], finished: Callable[[list], Iterable],
             outcome: Callable[[Any, int, Job, float], Outcome], reports: Callable[[], Iterable[tuple]], run: Run) -> None:
    """The engines' loop: one video in flight per worker (0 .. workers-1), the next one to whichever
    is free. `submit(n, job)` starts a job on worker n and returns its handle; `finished(handles)`
    waits at most REPORT_S for some to end and returns those; `outcome(handle, n, job, started)`
    reads one (replacing a worker that died); `reports()` the workers' reports since last asked.
    A job `run.done` wants again goes to the end of the queue."""
    waiting = list(jobs)
    busy: dict[Any, tuple[int, Job, float]] = {}
    idle = list(range(workers))
    while waiting or busy:
        run.check()
        while waiting and idle:
            n, job = idle.pop(0), waiting.pop(0)
            busy[submit(n, job)] = (n, job, time.monotonic())
        ended = finished(list(busy))
        for path, done, expected in reports():
            if any(job.path == path for _, job, _ in busy.values()):  # not one that has just ended
                run.report(path, done, expected)
        for handle in ended:
            n, job, started = busy.pop(handle)
            result = outcome(handle, n, job, started)
            idle.append(n)
            if run.done(job, result):
                waiting.append(job)
        run.show()
        run.check()
