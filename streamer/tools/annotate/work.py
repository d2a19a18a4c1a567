"""One video through the pipeline into its export folder: the unit of work both engines run, in a
worker process of this machine or a Ray actor, with the models loaded once per worker."""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.config import Config
from streamer.errors import StreamerError
from streamer.tools.annotate.jobs import Job
from streamer.tools.annotate.manifest import DONE, FAILED
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


class Annotator:
    """The models (loaded once, on the configured device) and the settings every video shares."""

    def __init__(self, config: Config, video: bool):
        from streamer.inference.models import resolve_device
        from streamer.inference.worker import load_models

        self.config = config
        self.video = video
        self.loaded = load_models(config, resolve_device(config.runtime.device))

    def annotate(self, job: Job, out: Path) -> Outcome:
        """`job`'s video into OUT/name/; a folder left there by an attempt that was cut off is replaced."""
        from streamer.service.pipeline import Pipeline

        folder = out / job.name
        started = time.monotonic()
        try:
            if folder.exists():
                shutil.rmtree(folder)  # never a finished export: annotate only hands over unfinished videos
            pipeline = Pipeline(video_config(self.config, job, folder, self.video), self.loaded)
            summary = pipeline.run()
        except StreamerError as exc:
            return Outcome(FAILED, 0, time.monotonic() - started, redact_uri(str(exc)))
        seconds = time.monotonic() - started
        if summary.exit_code != 0:
            return Outcome(FAILED, summary.processed, seconds, redact_uri(str(pipeline.control.failure or f"exit {summary.exit_code}")))
        if summary.processed == 0:
            return Outcome(FAILED, 0, seconds, f"{job.path}: no frame could be read")
        return Outcome(DONE, summary.processed, seconds, None)



def dispatch(jobs: Iterable[Job], workers: int, submit: Callable[[int, Job], Any], finished: Callable[[list], Iterable],
             outcome: Callable[[Any, int, Job, float], Outcome], done: Callable[[Job, Outcome], bool]) -> None:
    """The engines' loop: one video in flight per worker (0 .. workers-1), the next one to whichever
    is free. `submit(n, job)` starts a job on worker n and returns its handle; `finished(handles)`
    waits for some to end and returns those; `outcome(handle, n, job, started)` reads one (replacing
    a worker that died); `done(job, outcome)` records it, True: queue the job again, at the end."""
    waiting = list(jobs)
    busy: dict[Any, tuple[int, Job, float]] = {}
    idle = list(range(workers))
    while waiting or busy:
        while waiting and idle:
            n, job = idle.pop(0), waiting.pop(0)
            busy[submit(n, job)] = (n, job, time.monotonic())
        for handle in finished(list(busy)):
            n, job, started = busy.pop(handle)
            result = outcome(handle, n, job, started)
            idle.append(n)
            if done(job, result):
                waiting.append(job)
