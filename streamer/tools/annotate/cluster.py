"""The Ray engine: the same work (work.Annotator) as Ray actors, one per worker, each loading its
models once, on a local Ray instance or an existing cluster (`--address`). Every node must see the
inputs and OUT at the same paths (shared storage); the coordinator writes the manifest.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from streamer.config import Config
from streamer.errors import UsageError
from streamer.logs import one_line, shown_name
from streamer.tools.annotate.jobs import Job
from streamer.tools.annotate.manifest import FAILED
from streamer.tools.annotate.progress import REPORT_S
from streamer.tools.annotate.work import Annotator, Outcome, Report, Run, dispatch


def require():
    """The `ray` module; UsageError (one line) where Ray is not installed."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reports home
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.5x: no token file in ~/.ray
    try:
        import ray
    except ImportError:
        raise UsageError("--engine ray needs Ray: pip install 'streamer[ray]'") from None
    return ray


def connect(address: str | None, cpus: int | None):
    """Ray, started here (a local instance, `cpus` CPUs, no dashboard) or joined at `address`."""
    ray = require()
    if address:
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    else:
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    return ray


class RayEngine:
    """`run(jobs, run)` as LocalEngine's, on Ray actors: one per configuration in `configs`, each
    asking for `cpus` CPUs (its torch threads) and `gpus` GPUs."""

    def __init__(self, configs: list[Config], out: Path, video: bool, address: str | None, gpus: float):
        threads = configs[0].runtime.torch_threads or 1
        self.ray = connect(address, None if address else len(configs) * threads + 1)  # one CPU more: Ray's own work
        self.out = out
        self.actors: list = []
        try:
            self.remote = self.ray.remote(Annotator).options(num_cpus=threads, num_gpus=gpus, max_restarts=0, max_task_retries=0)
            self.configs, self.video = configs, video
            self.actors = [self.remote.remote(config, video) for config in configs]
            from ray.util.queue import Queue

            self.reports = Queue(actor_options={"num_cpus": 0})
        except BaseException:  # a stop signal too: no Ray left running behind us
            self.close(now=True)
            raise

    def run(self, jobs: Iterable[Job], run: Run) -> None:
        dispatch(jobs, len(self.actors), self._submit, lambda refs: self.ray.wait(refs, num_returns=1, timeout=REPORT_S)[0],
                 self._outcome, self._reports, run)

    def _submit(self, n: int, job: Job):
        absolute = Job(job.path.absolute(), job.name)  # an actor's working folder is not ours
        return self.actors[n].annotate.remote(absolute, self.out, Report(self.reports, job.path))

    def _reports(self) -> list[tuple]:
        count = self.reports.qsize()
        return self.reports.get_nowait_batch(count) if count else []

    def _outcome(self, ref, n: int, job: Job, started: float) -> Outcome:
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return self.ray.get(ref)
        except RayTaskError as exc:  # a bug in the work: its own message, one line
            return Outcome(FAILED, 0, time.monotonic() - started, one_line(f"{type(exc.cause).__name__}: {exc.cause}"))
        except RayActorError:  # the worker process died: a new one
            self.actors[n] = self.remote.remote(self.configs[n], self.video)
            return Outcome(FAILED, 0, time.monotonic() - started, f"{shown_name(job.path)}: the worker process died")

    def close(self, now: bool = False) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.ray.shutdown()
