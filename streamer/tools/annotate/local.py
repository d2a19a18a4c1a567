"""The local engine: worker processes on this machine, one per GPU or the CPU cores shared out,
each with its own models, each taking the next video when it finishes one.

Workers run in their own session, so a Ctrl-C on the terminal reaches only the coordinating
process, which stops them; a worker whose coordinator is gone (killed) exits at once, so a rerun
never meets a leftover writing into a folder. Each worker's log goes to OUT/logs/worker-N.log.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from streamer.config import Config
from streamer.logs import configure_logging, one_line, shown_name
from streamer.tools.annotate.jobs import Job
from streamer.tools.annotate.manifest import FAILED
from streamer.tools.annotate.progress import REPORT_S
from streamer.tools.annotate.work import Annotator, Outcome, Report, Run, dispatch

_annotator: Annotator | None = None  # in a worker process: its models
_reports: multiprocessing.Queue | None = None  # in a worker process: where its reports go


def layout(config: Config, workers: int | None) -> list[Config]:
    """One configuration per worker: a GPU each (runtime.device cuda:N) where the device is CUDA,
    else `workers` (default: one per core, at most 4) sharing the cores out as torch threads."""
    import torch

    from streamer.inference.worker import available_cores

    runtime = config.runtime
    cuda = runtime.device.startswith("cuda") or (runtime.device == "auto" and torch.cuda.is_available())
    if cuda and runtime.device in ("auto", "cuda"):
        count = workers or torch.cuda.device_count()
        return [config.model_copy(update={"runtime": runtime.model_copy(update={"device": f"cuda:{i % torch.cuda.device_count()}"})})
                for i in range(count)]
    cores = available_cores()
    count = workers or min(cores, 4)
    threads = max(1, cores // count)
    each = runtime.model_copy(update={"torch_threads": threads, "parallel_frames": 1})
    return [config.model_copy(update={"runtime": each})] * count


class LocalEngine:
    """`run(jobs, run)`: every job through a worker, told to `run` in the coordinating process (work.dispatch)."""

    def __init__(self, configs: list[Config], out: Path, video: bool, log_level: str):
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.configs = configs
        self.video = video
        self.log_level = log_level
        self.context = multiprocessing.get_context("spawn")  # no fork of a process that holds threads
        self.reports = self.context.Queue()
        self.workers = [self._start(n) for n in range(len(configs))]

    def run(self, jobs: Iterable[Job], run: Run) -> None:
        dispatch(jobs, len(self.workers), lambda n, job: self.workers[n].submit(_annotate, job, str(self.out)),
                 lambda futures: wait(futures, REPORT_S, FIRST_COMPLETED)[0], self._outcome, self._reports, run)

    def _reports(self) -> list[tuple]:
        items = []
        with contextlib.suppress(queue.Empty):
            while True:
                items.append(self.reports.get_nowait())
        return items

    def _start(self, n: int) -> ProcessPoolExecutor:
        """Worker n: a process of its own."""
        arguments = (self.configs[n], self.video, str(self.logs / f"worker-{n}.log"), self.log_level, self.reports)
        return ProcessPoolExecutor(1, self.context, _start_worker, arguments)

    def _outcome(self, future: Future, n: int, job: Job, started: float) -> Outcome:
        try:
            return future.result()
        except BrokenProcessPool:  # the worker died (out of memory, a crash in native code): a new one
            self.workers[n].shutdown(wait=False)
            self.workers[n] = self._start(n)
            return Outcome(FAILED, 0, time.monotonic() - started, f"{shown_name(job.path)}: the worker process died")
        except Exception as exc:  # noqa: BLE001 - a bug in the work: this video's failure, in one line, not the run's
            return Outcome(FAILED, 0, time.monotonic() - started, one_line(f"{type(exc).__name__}: {exc}"))

    def close(self, now: bool = False) -> None:
        """Stop the workers: after their current video, or `now` (killed: their videos are redone next
        time). Either way every process and thread of the pools is waited for, so the interpreter
        ends normally and releases the pools' semaphores (else multiprocessing's resource tracker
        warns of "leaked semaphore objects" after a Ctrl-C)."""
        for worker in self.workers:
            if now:
                for process in list((getattr(worker, "_processes", None) or {}).values()):  # the executor keeps them here
                    process.kill()
            worker.shutdown(wait=True, cancel_futures=True)  # killed ones: at once
        self.reports.close()
        self.reports.join_thread()


def _start_worker(config: Config, video: bool, log_path: str, log_level: str, reports: multiprocessing.Queue) -> None:
    """A worker process: its own session (no terminal signals), its log in its file, a watch on its
    coordinator, its models."""
    global _annotator, _reports
    os.setsid()
    descriptor = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # as Python's own stderr
    configure_logging(log_level, config.runtime.log_format)
    coordinator = os.getppid()
    threading.Thread(target=_exit_with, args=(coordinator,), name="coordinator-watch", daemon=True).start()
    _annotator, _reports = Annotator(config, video), reports


def _exit_with(coordinator: int) -> None:
    while os.getppid() == coordinator:
        time.sleep(0.5)
    os._exit(1)  # the coordinator is gone: what this worker writes now nobody records


def _annotate(job: Job, out: str) -> Outcome:
    assert _annotator is not None
    return _annotator.annotate(job, Path(out), Report(_reports, job.path))
