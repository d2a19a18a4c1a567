"""`streamer annotate INPUT... --out DIR`: every video of a folder tree, a list or a glob through
the pipeline of `run` (models, fusion, tracking, COCO panoptic export, optionally the annotated
MP4), each into its own folder under DIR, resumable from DIR/manifest.jsonl.

This package: jobs.py (which videos, which folders), manifest.py (what is done), work.py (one
video, and the loop both engines run), local.py (worker processes on this machine), cluster.py
(Ray actors).

One run per --out: it holds OUT's lock (outputs.locks, `OUT/.streamer.lock`) from before it reads
the manifest to its end, so a second run on the same OUT is refused (exit 73, naming the first's
PID) before it touches anything there. SIGINT (Ctrl-C), SIGTERM and SIGHUP stop the run at once:
the workers are stopped, the videos in flight are done again next time, the manifest keeps what
finished, and the exit status is 128 + the signal's number (130, 143, 129), as a shell's.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import Any

from streamer.arguments import add_config_arguments, config_overrides, positive_int
from streamer.config import load_config
from streamer.errors import EXIT_FAILURE, EXIT_OK, UsageError
from streamer.logs import configure_logging, one_line
from streamer.outputs import locks
from streamer.tools.annotate.jobs import Job, find_videos
from streamer.tools.annotate.manifest import DONE, FAILED, PARTIAL, Manifest, entry
from streamer.tools.annotate.progress import ArchiveProgress
from streamer.tools.annotate.work import Outcome, video_config

log = logging.getLogger(__name__)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("annotate", help="annotate every video of folders, files or globs, resumably, in parallel")
    add_config_arguments(parser)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="video files, folders (searched recursively) or globs")
    parser.add_argument("--out", required=True, metavar="DIR", help="gets DIR/<input's relative path>/ per video and DIR/manifest.jsonl")
    parser.add_argument("--video", action="store_true", help="also write each annotated video (annotated.mp4 beside its export)")
    parser.add_argument("--retries", type=int, default=1, metavar="N", help="tries again N times before a video is failed (default 1)")
    parser.add_argument("--workers", type=positive_int, metavar="N",
                        help="worker processes (default: one per GPU, else one per core, at most 4)")
    parser.add_argument("--device", metavar="DEV", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: worker processes on this machine (default); ray: Ray actors (pip install 'streamer[ray]')")
    parser.add_argument("--address", metavar="ADDR",
                        help="--engine ray: an existing cluster's address (default: a Ray instance started here)")
    parser.add_argument("--gpus-per-worker", type=float, default=None, metavar="G",
                        help="--engine ray: GPUs each worker asks for (default: 1 when the device is CUDA, else 0)")
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    overrides = config_overrides(args) + ([f"runtime.device='{args.device}'"] if args.device else [])
    config = load_config(args.config, overrides)
    configure_logging(args.log_level or config.runtime.log_level, args.log_format or config.runtime.log_format)
    if args.retries < 0:
        raise UsageError(f"--retries must be 0 or more, got {args.retries}")
    if args.engine == "ray":
        from streamer.tools.annotate import cluster

        cluster.require()  # before anything is looked at or loaded
    out = Path(args.out)
    jobs = find_videos(args.inputs, out)
    out.mkdir(parents=True, exist_ok=True)
    with locks.holding(out, "annotation output"), Signals() as signals:
        try:
            return annotate(args, config, out, jobs, signals)
        except Stopped as stop:
            log.warning("annotate: stopped by %s: the videos in flight are annotated again next time", signal.Signals(stop.signum).name)
            return 128 + stop.signum


def annotate(args: argparse.Namespace, config, out: Path, jobs: list[Job], signals: Signals) -> int:
    """The run, OUT's lock held."""
    limit = config.runtime.max_frames
    manifest = Manifest(out)
    todo = [job for job in jobs if not manifest.finished(job, limit)]
    log.info("annotate: %d video%s, %d done before, %d to do%s", len(jobs), "" if len(jobs) == 1 else "s", len(jobs) - len(todo),
             len(todo), f" (runtime.max_frames {limit}: the first {limit} frames of each, recorded partial)" if limit else "")
    if not todo:
        return EXIT_OK
    from streamer.inference import checkpoints
    from streamer.service import build

    build.announce_models(video_config(config, todo[0], out / todo[0].name, args.video))  # here, not only in the workers' logs
    checkpoints.require(config.models)  # missing weights: one line now, not a failure per video
    with signals.deferred():  # a signal raised inside Ray's native calls would come out as a SystemError
        engine, workers = start_engine(args, config, out, len(todo))
        signals.install()  # again: Ray's start puts its own SIGTERM handler in
        run = Run(manifest, args.retries + 1, ArchiveProgress(len(todo), config.runtime.status_interval_s), signals)
        try:
            signals.check()
            engine.run(todo, run)
        except BaseException:
            run.progress.close()
            engine.close(now=True)
            raise
    engine.close()
    return run.summary(len(jobs) - len(todo), workers)


class Stopped(BaseException):
    """A stop signal arrived (a BaseException, as KeyboardInterrupt: no `except Exception` holds it up)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Signals(contextlib.AbstractContextManager):
    """While inside: SIGINT, SIGTERM and SIGHUP raise Stopped in the main thread, at once, or where
    `deferred()`, at the next `check()` (the engines' loop checks every REPORT_S); a second one
    ends the process at once. The handlers before are put back on leaving. `install()` puts them in
    again (after a library's own)."""

    STOP = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __enter__(self) -> Signals:
        self.received: int | None = None
        self._deferred = False
        self.previous = {number: signal.getsignal(number) for number in self.STOP}
        self.install()
        return self

    def install(self) -> None:
        if self.received is None:
            for number in self.STOP:
                signal.signal(number, self._stop)

    @contextlib.contextmanager
    def deferred(self):
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False

    def check(self) -> None:
        if self.received is not None:
            raise Stopped(self.received)

    def _stop(self, signum: int, _frame) -> None:
        for number in self.STOP:  # a second one while the workers are stopped ends the process at once
            signal.signal(number, signal.SIG_DFL)
        self.received = signum
        if not self._deferred:
            raise Stopped(signum)

    def __exit__(self, *_exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def start_engine(args: argparse.Namespace, config, out: Path, todo: int):
    """(the engine, its worker count): at most one worker per video to do."""
    from streamer.tools.annotate.local import LocalEngine, layout

    configs = layout(config, args.workers)[:todo]
    if args.engine == "local":
        return LocalEngine(configs, out, args.video, args.log_level or config.runtime.log_level), len(configs)
    from streamer.tools.annotate.cluster import RayEngine

    cuda = configs[0].runtime.device.startswith("cuda")
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (1.0 if cuda else 0.0)
    if cuda:  # Ray gives each actor its GPU (CUDA_VISIBLE_DEVICES): the device is the first it sees
        configs = [c.model_copy(update={"runtime": c.runtime.model_copy(update={"device": "cuda"})}) for c in configs]
    return RayEngine(configs, out.resolve(), args.video, args.address, gpus), len(configs)


class Run:
    """The coordinator's record of a run (work.Run): the manifest, tries, counts, progress."""

    def __init__(self, manifest: Manifest, tries: int, progress: ArchiveProgress, signals: Signals):
        self.manifest = manifest
        self.signals = signals
        self.tries = tries
        self.progress = progress
        self.attempts: dict[Path, int] = {}
        self.annotated = 0
        self.partial = 0  # of those annotated: stopped at runtime.max_frames
        self.started = time.monotonic()

    def done(self, job: Job, outcome: Outcome) -> bool:
        attempts = self.attempts[job.path] = self.attempts.get(job.path, 0) + 1
        error = one_line(outcome.error) if outcome.error else None
        if outcome.status == FAILED and outcome.retry and attempts < self.tries:
            log.warning("annotate: %s failed (%s), trying again", job.path, error)
            self.progress.forget(job.path)
            return True
        self.manifest.record(entry(job, outcome.status, outcome.frames, outcome.seconds, attempts, error, outcome.stat))
        self.progress.ended(job.path, outcome.frames, outcome.status == FAILED)
        if outcome.status in (DONE, PARTIAL):
            self.annotated += 1
            self.partial += outcome.status == PARTIAL
            log.info("annotate: %s: %d frames in %.1f s%s; %s", job.name, outcome.frames, outcome.seconds,
                     " (partial: runtime.max_frames)" if outcome.status == PARTIAL else "", self.progress.text(time.monotonic()))
        else:
            log.error("annotate: %s failed: %s", job.path, error)
        return False

    def report(self, path: Path, done: int, expected: int | None) -> None:
        self.progress.update(path, done, expected)

    def show(self) -> None:
        self.progress.show()

    def check(self) -> None:
        self.signals.check()

    def summary(self, skipped: int, workers: int) -> int:
        self.progress.close()
        elapsed = time.monotonic() - self.started
        frames, failed = self.progress.frames, self.progress.failed
        fps = frames / max(elapsed, 1e-9)
        log.info("annotate done: %d annotated%s, %d skipped (done before), %d failed; "
                 "%d frames in %.1f s, %.2f fps (%.2f per worker, %d workers)",
                 self.annotated, f" ({self.partial} partial)" if self.partial else "", skipped, failed, frames, elapsed, fps,
                 fps / workers, workers)
        return EXIT_FAILURE if failed else EXIT_OK
