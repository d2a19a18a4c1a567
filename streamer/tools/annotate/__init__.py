"""`streamer annotate INPUT... --out DIR`: every video of a folder tree, a list or a glob through
the pipeline of `run` (models, fusion, tracking, COCO panoptic export, optionally the annotated
MP4), each into its own folder under DIR, resumable from DIR/manifest.jsonl.

This package: jobs.py (which videos, which folders), manifest.py (what is done), work.py (one
video, and the loop both engines run), local.py (worker processes on this machine), cluster.py
(Ray actors).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from streamer.arguments import add_config_arguments, config_overrides, positive_int
from streamer.config import load_config
from streamer.errors import EXIT_FAILURE, EXIT_OK, UsageError
from streamer.logs import configure_logging
from streamer.tools.annotate.jobs import Job, find_videos
from streamer.tools.annotate.manifest import DONE, FAILED, Manifest, entry
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
    jobs = find_videos(args.inputs)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out)
    todo = [job for job in jobs if not manifest.finished(job)]
    log.info("annotate: %d video%s, %d done before, %d to do", len(jobs), "" if len(jobs) == 1 else "s", len(jobs) - len(todo), len(todo))
    if not todo:
        return EXIT_OK
    from streamer.inference import checkpoints
    from streamer.service import build

    build.announce_models(video_config(config, todo[0], out / todo[0].name, args.video))  # here, not only in the workers' logs
    checkpoints.require(config.models)  # missing weights: one line now, not a failure per video
    engine, workers = start_engine(args, config, out, len(todo))
    run = Run(manifest, args.retries + 1, ArchiveProgress(len(todo), config.runtime.status_interval_s))
    try:
        engine.run(todo, run)
    except BaseException:
        run.progress.close()
        engine.close(now=True)
        raise
    engine.close()
    return run.summary(len(jobs) - len(todo), workers)


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

    def __init__(self, manifest: Manifest, tries: int, progress: ArchiveProgress):
        self.manifest = manifest
        self.tries = tries
        self.progress = progress
        self.attempts: dict[Path, int] = {}
        self.annotated = 0
        self.started = time.monotonic()

    def done(self, job: Job, outcome: Outcome) -> bool:
        attempts = self.attempts[job.path] = self.attempts.get(job.path, 0) + 1
        if outcome.status == FAILED and attempts < self.tries:
            log.warning("annotate: %s failed (%s), trying again", job.path, outcome.error)
            self.progress.forget(job.path)
            return True
        self.manifest.record(entry(job, outcome.status, outcome.frames, outcome.seconds, attempts, outcome.error))
        self.progress.ended(job.path, outcome.frames, outcome.status == FAILED)
        if outcome.status == DONE:
            self.annotated += 1
            log.info("annotate: %s: %d frames in %.1f s; %s",
                     job.name, outcome.frames, outcome.seconds, self.progress.text(time.monotonic()))
        else:
            log.error("annotate: %s failed: %s", job.path, outcome.error)
        return False

    def report(self, path: Path, done: int, expected: int | None) -> None:
        self.progress.update(path, done, expected)

    def show(self) -> None:
        self.progress.show()

    def summary(self, skipped: int, workers: int) -> int:
        self.progress.close()
        elapsed = time.monotonic() - self.started
        frames, failed = self.progress.frames, self.progress.failed
        fps = frames / max(elapsed, 1e-9)
        log.info("annotate done: %d annotated, %d skipped (done before), %d failed; "
                 "%d frames in %.1f s, %.2f fps (%.2f per worker, %d workers)",
                 self.annotated, skipped, failed, frames, elapsed, fps, fps / workers, workers)
        return EXIT_FAILURE if failed else EXIT_OK
