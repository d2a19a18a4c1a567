"""One video through the pipeline into its export folder: the unit of work both engines run, in a
worker process of this machine or a Ray actor, with the models loaded once per worker."""
from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from streamer.config import Config
from streamer.control import Stats
from streamer.errors import StreamerError
from streamer.tools.annotate.jobs import Job
from streamer.tools.annotate.manifest import DONE, FAILED
from streamer.tools.annotate.progress import REPORT_S
from streamer.uris import redact_uri

VIDEO_NAME = "annotated.mp4"  # with --video, beside the export


@dataclass(frozen=True)
class Outcome:
    """How one attempt at one video went."""

    status: str  # DONE | FAILED
    frames: int  # annotated
    seconds: float  # wall time
    error: str | None  # the failure's one line


def video_config(config: Config, job: Job, folder: Path, video: bool) -> Config:
    """`config` for one video: it as the only source, its export (and annotated MP4) in `folder`,
    no window, no server, no frame limit."""
    source = (config.source or config.sources[0]).model_copy(update={"uri": str(job.path), "id": "video"})
    output = config.output.model_copy(update={"export_dir": str(folder), "video": str(folder / VIDEO_NAME) if video else None,
                                              "display": False, "overwrite": False, "segment_seconds": None,
                                              "keep_hours": None, "max_bytes": None})
    return config.model_copy(update={
        "source": source, "sources": [], "output": output,
        "server": config.server.model_copy(update={"enabled": False}),
        "runtime": config.runtime.model_copy(update={"max_frames": None}),
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
        try:
            if folder.exists():
                shutil.rmtree(folder)  # never a finished export: annotate only hands over unfinished videos
            pipeline = Pipeline(video_config(self.config, job, folder, self.video), build.outputs, self.loaded)
            with reporting(pipeline.stats["video"], report):
                summary = pipeline.run()
        except StreamerError as exc:
            return Outcome(FAILED, 0, time.monotonic() - started, redact_uri(str(exc)))
        seconds = time.monotonic() - started
        if summary.exit_code != 0:
            return Outcome(FAILED, summary.processed, seconds, redact_uri(str(pipeline.control.failure or f"exit {summary.exit_code}")))
        if summary.processed == 0:
            return Outcome(FAILED, 0, seconds, f"{job.path}: no frame could be read")
        return Outcome(DONE, summary.processed, seconds, None)



class Run(Protocol):
    """What the engines' loop tells the coordinator."""

    def done(self, job: Job, outcome: Outcome) -> bool: ...  # record an attempt; True: try it again
    def report(self, path: Path, done: int, expected: int | None) -> None: ...  # a worker's frames
    def show(self) -> None: ...  # called at least every REPORT_S


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
