"""`streamer bench`: how fast each stage is, and what the threaded pipeline gains.

In one process, on the same frames of the synthetic street:
  (a) models only: both models on frames already in memory, as many at once and on as many
      threads as the pipeline runs them (the limit);
  (b) the sequential loop a tutorial would write: read, models, naive overwrite fusion, overlay,
      H.264 encode, one frame after the other in one thread, at torch's default thread count;
  (c) the threaded pipeline (`streamer run`) from the same source to the same kind of MP4;
plus micro-benchmarks (fusion against a plain per-instance numpy loop of the same rule and the
naive loop; overlay at one thread; H.264 decode and encode alone) and, with --memory-frames,
RSS over a long pipeline run. Modes (a)-(c) take turns within every repeat, so a change in the
machine's load hits all three alike.

Nothing here asserts a timing: the report's `targets` says which goals were met. Without -c the
packaged default configuration (the bundled demo models) is used, not ./config.yaml, so numbers
from different machines compare.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamer.errors import EXIT_OK, StreamerError
from streamer.frames import Category, Frame, Panoptic, Segment

if TYPE_CHECKING:
    import torch

    from streamer.config import Config
    from streamer.inference.fusion import FusionParams
    from streamer.inference.models import PanopticModels
    from streamer.outputs.render import Renderer

log = logging.getLogger(__name__)

DEFAULT_SIZE = (640, 360)
DEFAULT_FRAMES = 60
DEFAULT_REPEATS = 3
DEFAULT_SEED = 1000
MICRO_SIZES = ((1280, 720), (1920, 1080))
MICRO_INSTANCES = (10, 50, 100)
MICRO_REPEATS = 5
SAMPLE_S = 0.2  # how often RSS and thread CPU times are read during a pipeline run
POLL_S = 0.01  # how often the pipeline's frame counter is looked at

# Goals from the performance issue; read from the results, never asserted.
PIPELINE_VS_MODELS = 0.90
PIPELINE_VS_SEQUENTIAL = 1.0
FUSION_SPEEDUP = 5.0
OVERLAY_MS = 10.0
RSS_GROWTH_PCT = 5.0
TARGET_SIZE = (1920, 1080)
TARGET_INSTANCES = 50


@dataclass(frozen=True)
class BenchOptions:
    config: str | None = None  # None: the packaged default (demo models)
    overrides: tuple[str, ...] = ()  # --set items
    device: str | None = None
    size: tuple[int, int] = DEFAULT_SIZE
    frames: int = DEFAULT_FRAMES
    repeats: int = DEFAULT_REPEATS
    seed: int = DEFAULT_SEED
    micro_sizes: tuple[tuple[int, int], ...] = MICRO_SIZES
    instances: tuple[int, ...] = MICRO_INSTANCES
    micro_repeats: int = MICRO_REPEATS
    memory_frames: int = 0  # 0: no long run
    torch_threads: int | None = None  # None: torch's choice
    cv2_threads: int | None = None  # None: OpenCV's choice

    def source(self, frames: int | None = None) -> str:
        width, height = self.size
        return f"synthetic:street?seed={self.seed}&frames={frames or self.frames}&size={width}x{height}"


# ---------------------------------------------------------------------------------------------
# Command line


def add_parser(commands: Any) -> None:
    """The `bench` subcommand; torch and the models are only imported when it runs."""
    from streamer.cli import add_config_arguments, frame_size, positive_int

    parser = commands.add_parser(
        "bench", help="measure the models alone, a sequential loop and the threaded pipeline; fusion, overlay and codec micro-benchmarks"
    )
    add_config_arguments(parser)
    for action in parser._actions:  # the bench has its own default configuration
        if action.dest == "config":
            action.help = "configuration file (default: the packaged default with the demo models, not ./config.yaml)"
    parser.add_argument("--device", metavar="DEV", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--size", type=frame_size, default=DEFAULT_SIZE, metavar="WxH", help="synthetic street frame size (default 640x360)")
    parser.add_argument("--frames", type=positive_int, default=DEFAULT_FRAMES, metavar="N", help=f"frames per run (default {DEFAULT_FRAMES})")
    parser.add_argument("--repeats", type=positive_int, default=DEFAULT_REPEATS, metavar="R", help=f"runs of each mode (default {DEFAULT_REPEATS})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"synthetic scene seed (default {DEFAULT_SEED})")
    parser.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    parser.add_argument("--micro-sizes", type=size_list, default=MICRO_SIZES, metavar="WxH,...", help="fusion/overlay frame sizes (default 1280x720,1920x1080)")
    parser.add_argument("--instances", type=count_list, default=MICRO_INSTANCES, metavar="N,...", help="fusion/overlay instance counts (default 10,50,100)")
    parser.add_argument("--micro-repeats", type=positive_int, default=MICRO_REPEATS, metavar="R", help=f"repeats of each micro-benchmark (default {MICRO_REPEATS})")
    parser.add_argument("--memory-frames", type=memory_frames, default=0, metavar="N",
                        help="also run the pipeline over N frames and compare RSS at frame N/10 and N (default 0: off; 5000 takes ~25 min on 2 CPU cores)")
    parser.add_argument("--torch-threads", type=positive_int, metavar="N", help="torch threads per frame in the models (runtime.torch_threads) and for the sequential loop (default: the cores shared out; torch's choice for the loop)")
    parser.add_argument("--cv2-threads", type=positive_int, metavar="N", help="cv2.setNumThreads for the whole bench (default: OpenCV's choice)")
    parser.set_defaults(handler=command)


def size_list(text: str) -> tuple[tuple[int, int], ...]:
    from streamer.cli import frame_size

    return tuple(frame_size(item) for item in text.split(","))


def count_list(text: str) -> tuple[int, ...]:
    items = text.split(",")
    if not all(item.strip().isdigit() and 0 < int(item) < 1000 for item in items):
        raise argparse.ArgumentTypeError(f"expected instance counts between 1 and 999 separated by commas, got {text!r}")
    return tuple(int(item) for item in items)


def memory_frames(text: str) -> int:
    if not text.isdigit() or 0 < int(text) < 10:
        raise argparse.ArgumentTypeError(f"expected 0 (off) or at least 10 frames, got {text!r}")
    return int(text)


def command(args: argparse.Namespace) -> int:
    from streamer.logs import configure_logging

    options = BenchOptions(
        config=args.config, overrides=tuple(args.set), device=args.device, size=args.size, frames=args.frames,
        repeats=args.repeats, seed=args.seed, micro_sizes=args.micro_sizes, instances=args.instances,
        micro_repeats=args.micro_repeats, memory_frames=args.memory_frames, torch_threads=args.torch_threads,
        cv2_threads=args.cv2_threads,
    )
    config = load_bench_config(options)  # a bad configuration fails here, before anything slow
    configure_logging(args.log_level or config.runtime.log_level, args.log_format or config.runtime.log_format)
    json_path = Path(args.json) if args.json else None
    if json_path is not None:
        check_writable(json_path)
    report = run_bench(options, config)
    sys.stdout.write(format_report(report) + "\n")
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        log.info("wrote %s", json_path)
    return EXIT_OK


def check_writable(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise StreamerError(f"--json {path}: cannot write there ({exc.strerror}); choose another path") from None


# ---------------------------------------------------------------------------------------------
# Configuration


def config_path(options: BenchOptions) -> Path:
    if options.config is not None:
        return Path(options.config)
    return Path(str(resources.files("streamer") / "default_config.yaml"))


def config_overrides(options: BenchOptions, uri: str, video: Path | None) -> list[str]:
    """The user's --set items, then what the bench fixes: one synthetic source, one MP4 (not in
    segments), no window, no export, no metrics server."""
    from streamer.cli import quote

    fixed = [
        "sources=[]", f"source.uri={quote(uri)}", "output.display=false", "output.export_dir=null",
        f"output.video={quote(str(video)) if video else 'null'}", "output.segment_seconds=0",
        "runtime.max_frames=null", "metrics.enabled=false",
    ]
    if options.device:
        fixed.append(f"runtime.device={quote(options.device)}")
    if options.torch_threads:
        fixed.append(f"runtime.torch_threads={options.torch_threads}")
    return list(options.overrides) + fixed


def load_bench_config(options: BenchOptions, uri: str | None = None, video: Path | None = None) -> Config:
    from streamer.config import load_config

    return load_config(config_path(options), config_overrides(options, uri or options.source(), video))


# ---------------------------------------------------------------------------------------------
# Measuring


def summarize(values: list[float]) -> dict[str, float]:
    """Median, min, max and quartiles of repeated measurements."""
    data = np.asarray(values, dtype=float)
    q1, median, q3 = np.percentile(data, [25, 50, 75])
    return {"median": float(median), "min": float(data.min()), "max": float(data.max()), "q1": float(q1), "q3": float(q3), "n": len(values)}


def timed(call: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Seconds of each of `repeats` calls, and the last call's result."""
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - started)
    return seconds, result


def rss_mb() -> float | None:
    """Resident set size of this process (Linux), in MiB."""
    return _status_mib("VmRSS")


def peak_rss_mb() -> float | None:
    """The highest resident set size this process reached (Linux), in MiB."""
    return _status_mib("VmHWM")


def _status_mib(field: str) -> float | None:
    """A kB field of /proc/self/status, in MiB (None where there is no such file)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def thread_cpu_seconds() -> dict[int, tuple[str, float]]:
    """native thread id -> (name, user + system CPU seconds) for every thread of this process (Linux)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (names.get(int(tid), "native"), (int(fields[11]) + int(fields[12])) / ticks)
    return out


class Sampler:
    """Watches a pipeline run from its own thread: when the first frame is read and the first
    result is written (frame counter polled every POLL_S), and every SAMPLE_S seconds RSS and the
    CPU time of every thread. The CPU baseline is taken at the first frame read, so thread CPU
    covers the processing, not the model loading."""

    def __init__(self, counter: Callable[[], int | None], first_frame: threading.Event):
        self.counter = counter
        self.first_frame = first_frame
        self.samples: list[tuple[float, int | None, float | None]] = []  # (time, frames, RSS MiB)
        self.first_frame_at: float | None = None
        self.first_result_at: float | None = None
        self._baseline: dict[int, tuple[str, float]] = {}
        self._last: dict[int, tuple[str, float]] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5)
        self._sample()

    def _loop(self) -> None:
        next_sample = 0.0
        while not self._done.wait(POLL_S):
            now = time.perf_counter()
            if self.first_frame_at is None and self.first_frame.is_set():
                self.first_frame_at = now
                self._baseline = thread_cpu_seconds()
            if self.first_result_at is None and (self.counter() or 0) >= 1:
                self.first_result_at = now
            if now >= next_sample:
                self._sample()
                next_sample = now + SAMPLE_S

    def _sample(self) -> None:
        self.samples.append((time.perf_counter(), self.counter(), rss_mb()))
        if self.first_frame_at is not None:
            self._last.update(thread_cpu_seconds())

    def thread_cpu(self) -> dict[str, float]:
        """CPU seconds since the first frame, by Python thread name; other native threads (torch's
        OpenMP pool, codec threads) summed as one."""
        totals: dict[str, float] = {}
        for tid, (name, seconds) in self._last.items():
            if name == "bench-sampler":
                continue
            used = seconds - self._baseline.get(tid, (name, 0.0))[1]
            key = "native (torch pool, codecs)" if name == "native" else name
            totals[key] = totals.get(key, 0.0) + used
        return {name: round(seconds, 3) for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1])}


def video_output_class() -> type:
    """The MP4 writer `streamer run` uses for a file source."""
    from streamer.outputs.recording import VideoOutput

    return VideoOutput


def as_result(index: int, image: np.ndarray, pts_ms: float, panoptic: np.ndarray | None = None) -> Panoptic:
    now = time.time()
    frame = Frame("bench", index, image, pts_ms, now, time.monotonic())
    return Panoptic(frame, panoptic if panoptic is not None else np.zeros(image.shape[:2], np.int32), ())


# ---------------------------------------------------------------------------------------------
# (a) (b) (c): end to end


def models_only(config: Config, device: torch.device, images: list[np.ndarray]) -> float:
    """(a): seconds for both models over frames already in memory, run as the pipeline runs them
    (the same number of frames at once, threads and loading; see worker.InferencePool)."""
    import torch

    from streamer.inference.worker import load_models

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    predict = lambda image: (models.predict([image]), sync())  # noqa: E731
    pool, models = load_models(config, device)
    try:
        for future in [pool.submit(predict, image) for image in images[:pool.size]]:  # warm-up
            future.result()
        started = time.perf_counter()
        for future in [pool.submit(predict, image) for image in images]:
            future.result()
        return time.perf_counter() - started
    finally:
        pool.close()


def sequential_loop(
    models: PanopticModels, renderer: Renderer, params: FusionParams, uri: str, output: Path
) -> tuple[float, int, dict[str, float]]:
    """The tutorial loop: read, both models, naive overwrite fusion, overlay, H.264, in one thread.
    Returns seconds (closing the video included), frames, and seconds per stage."""
    from streamer.tools.pq import naive_fusion
    from streamer.inputs.sources import open_source

    stages = dict.fromkeys(("read", "models", "fusion", "overlay", "encode"), 0.0)
    started = time.perf_counter()
    reader = open_source(uri)
    video = video_output_class()(output, reader.fps)
    count = 0
    try:
        while True:
            t0 = time.perf_counter()
            item = reader.read()
            if item is None:
                break
            image, pts = item
            t1 = time.perf_counter()
            (prediction,) = models.predict([image])
            t2 = time.perf_counter()
            panoptic = naive_fusion(
                prediction.semantic, prediction.masks, prediction.scores, prediction.categories, models.is_thing,
                params.mask_threshold, label_divisor=params.label_divisor,
            )
            t3 = time.perf_counter()
            rendered = renderer.overlay(image, panoptic, ())  # the naive loop has no segment list, so no labels
            t4 = time.perf_counter()
            video.write(as_result(count, image, pts, panoptic), rendered)
            t5 = time.perf_counter()
            for stage, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                stages[stage] += seconds
            count += 1
    finally:
        closing = time.perf_counter()
        video.close()
        reader.close()
        stages["encode"] += time.perf_counter() - closing
    return time.perf_counter() - started, count, stages


@dataclass
class PipelineRun:
    seconds: float  # from the first result to the return of Pipeline.run
    frames: int  # results in that time (the first one not counted)
    seconds_from_first_read: float
    processed: int
    thread_cpu: dict[str, float]  # CPU seconds since the first frame read, by thread
    samples: list[tuple[float, int | None, float | None]]


def pipeline_run(config: Config) -> PipelineRun:
    """`streamer run` in this process. Throughput is timed from the first result (so the first
    frame's pass through fresh models is left out, as (a) and (b) run warm models) to the return
    of Pipeline.run, which includes closing the video and up to 0.1 s of the main thread's polling.
    Without the frame counter it falls back to timing from the first frame read."""
    pipeline = counting_pipeline(config)
    sampler = Sampler(pipeline.processed, pipeline.control.first_frame)
    try:
        summary = pipeline.run()
    finally:
        ended = time.perf_counter()
        sampler.stop()
    if summary.exit_code != 0:
        raise StreamerError(f"bench: the pipeline failed (exit {summary.exit_code}); see the error above")
    if sampler.first_frame_at is None or summary.processed == 0:
        raise StreamerError("bench: the pipeline processed no frame")
    from_read = ended - sampler.first_frame_at
    if sampler.first_result_at is not None and summary.processed > 1:
        seconds, frames = ended - sampler.first_result_at, summary.processed - 1
    else:
        seconds, frames = from_read, summary.processed
    return PipelineRun(seconds, frames, from_read, summary.processed, sampler.thread_cpu(), sampler.samples)


def counting_pipeline(config: Config) -> Any:
    """The real pipeline, keeping each source's counters so the bench can watch progress.
    (It hooks `_prepare`; if that ever goes, the counters read None and nothing else changes.)"""
    from streamer.service.pipeline import Pipeline

    class CountingPipeline(Pipeline):
        def __init__(self, config: Config):
            super().__init__(config)
            self.counters: list = []

        def _prepare(self, *args: Any, **kwargs: Any) -> Any:
            run = super()._prepare(*args, **kwargs)
            self.counters.append(run.stats)
            return run

        def processed(self) -> int | None:
            return sum(stats.processed for stats in self.counters) if self.counters else None

    return CountingPipeline(config)


def on_own_thread(call: Callable[[], Any], name: str) -> Any:
    """call() on a thread that ends with it, and with the thread its OpenMP pool: the pipeline's
    worker then has the only pool in the process, as it has in `streamer run` (two pools make
    libgomp throttle its spin-waits; see worker.InferencePool)."""
    result: Future = Future()

    def target() -> None:
        try:
            result.set_result(call())
        except BaseException as exc:  # noqa: BLE001 - raised again on the calling thread
            result.set_exception(exc)

    thread = threading.Thread(target=target, name=name)
    thread.start()
    thread.join()
    return result.result()


def sequential_run(options: BenchOptions, device: torch.device, torch_threads: int, output: Path) -> tuple[float, int, dict[str, float]]:
    """(b) with models loaded (and warmed up) on the calling thread, on `torch_threads` threads."""
    import torch

    from streamer.inference.models import PanopticModels
    from streamer.service.pipeline import fusion_params
    from streamer.outputs.render import Renderer
    from streamer.inputs.sources import open_source

    torch.set_num_threads(torch_threads)
    config = load_bench_config(options)
    params = fusion_params(config)
    categories = config.categories()
    renderer = Renderer(categories, params.label_divisor, config.render.alpha, config.render.contours, config.render.labels)
    models = PanopticModels(config.models, categories, device, config.runtime.half)
    reader = open_source(options.source())
    models.predict([reader.read()[0]])  # warm-up: first-call allocations and kernel selection
    reader.close()
    return sequential_loop(models, renderer, params, options.source(), output)


def end_to_end(options: BenchOptions, device: torch.device, torch_threads: int, images: list[np.ndarray], workdir: Path) -> dict[str, Any]:
    """Modes (a), (b), (c) in turn, `repeats` times; (b) on `torch_threads` threads."""
    uri = options.source()
    config = load_bench_config(options)
    runs: dict[str, list[float]] = {"models_only": [], "sequential": [], "pipeline": []}
    stages: list[dict[str, float]] = []
    threads: list[dict[str, float]] = []
    from_first_read: list[float] = []
    rss: dict[str, list[float | None]] = {"after_repeat": []}
    load: list[float] = []
    for repeat in range(options.repeats):
        load.append(round(os.getloadavg()[0], 2))
        seconds = models_only(config, device, images)
        runs["models_only"].append(len(images) / seconds)
        log.info("bench %d/%d: models only %.2f fps", repeat + 1, options.repeats, runs["models_only"][-1])

        seconds, count, stage_seconds = on_own_thread(
            lambda: sequential_run(options, device, torch_threads, workdir / f"sequential-{repeat}.mp4"), "bench-sequential")
        runs["sequential"].append(count / seconds)
        stages.append({stage: value / max(count, 1) for stage, value in stage_seconds.items()})
        log.info("bench %d/%d: sequential loop %.2f fps", repeat + 1, options.repeats, runs["sequential"][-1])

        video = workdir / f"pipeline-{repeat}.mp4"
        run = pipeline_run(load_bench_config(options, uri, video))
        runs["pipeline"].append(run.frames / run.seconds)
        from_first_read.append(run.processed / run.seconds_from_first_read)
        threads.append({name: round(value / run.seconds_from_first_read, 3) for name, value in run.thread_cpu.items()})
        log.info("bench %d/%d: pipeline %.2f fps", repeat + 1, options.repeats, runs["pipeline"][-1])
        rss["after_repeat"].append(rss_mb())
        for path in workdir.glob("*.mp4"):
            path.unlink()

    result: dict[str, Any] = {}
    for mode, fps in runs.items():
        result[mode] = {"fps": summarize(fps), "seconds_per_frame": summarize([1.0 / value for value in fps]), "runs_fps": [round(v, 4) for v in fps]}
    result["sequential"]["stage_ms_per_frame"] = {stage: round(1000 * float(np.median([s[stage] for s in stages])), 2) for stage in stages[0]}
    result["pipeline"]["fps_from_first_read"] = summarize(from_first_read)  # the first frame's warm-up included
    result["pipeline"]["thread_cpu_cores"] = threads[-1]  # CPU seconds per wall second, last repeat
    models_fps, sequential_fps, pipeline_fps = (result[m]["fps"]["median"] for m in ("models_only", "sequential", "pipeline"))
    result["ratios"] = {
        "pipeline_vs_models_only": pipeline_fps / models_fps,
        "pipeline_vs_sequential": pipeline_fps / sequential_fps,
        "sequential_vs_models_only": sequential_fps / models_fps,
    }
    result["rss_mb"] = rss
    result["load_average_at_repeat_start"] = load
    return result


# ---------------------------------------------------------------------------------------------
# Fusion and overlay micro-benchmarks


def random_scene(
    width: int, height: int, count: int, categories: tuple[Category, ...], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A street-like semantic map (stuff in horizontal bands, thing classes under the objects) and
    `count` soft elliptical instance masks the size of cars and people (about 100-300 x 80-250
    pixels at 1080p), placed anywhere and overlapping at random, with random scores."""
    rng = np.random.default_rng(seed)
    stuff = [c.id for c in categories if not c.isthing] or [0]
    things = [c.id for c in categories if c.isthing]
    semantic = np.empty((height, width), np.int64)
    cuts = [0, *sorted(rng.integers(0, height, len(stuff) - 1).tolist()), height]
    for category, top, bottom in zip(rng.permutation(stuff), cuts[:-1], cuts[1:]):
        semantic[top:bottom] = category
    count = count if things else 0
    masks = np.zeros((count, height, width), np.float32)
    labels = rng.choice(things, count) if count else np.zeros(0, np.int64)
    for index in range(count):
        box_w = max(2, min(width, int(rng.uniform(0.05, 0.16) * width)))
        box_h = max(2, min(height, int(rng.uniform(0.07, 0.23) * height)))
        x0, y0 = int(rng.integers(0, width - box_w + 1)), int(rng.integers(0, height - box_h + 1))
        yy, xx = np.mgrid[0:box_h, 0:box_w]
        distance = ((yy - box_h / 2) / (box_h / 2)) ** 2 + ((xx - box_w / 2) / (box_w / 2)) ** 2
        masks[index, y0 : y0 + box_h, x0 : x0 + box_w] = np.clip(1.2 - distance, 0, 1) * rng.uniform(0.6, 1.0)
        semantic[y0 + box_h // 4 : y0 + 3 * box_h // 4, x0 + box_w // 4 : x0 + 3 * box_w // 4] = labels[index]
    scores = rng.uniform(0.3, 1.0, count).astype(np.float32)
    return semantic, masks, scores, labels.astype(np.int64)


def reference_fusion(
    semantic: np.ndarray, masks: np.ndarray, scores: np.ndarray, categories: np.ndarray, is_thing: np.ndarray, params: FusionParams
) -> tuple[np.ndarray, list[Segment]]:
    """The Panoptic FPN rule as the plain per-instance loop (after panopticapi / detectron2): every
    step works on whole frames. Gives what fusion.fuse gives, segments included (for fewer than
    label_divisor instances per category)."""

    def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
        ys, xs = np.nonzero(mask)
        return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)

    panoptic = np.zeros(semantic.shape, np.int32)
    claimed = np.zeros(semantic.shape, bool)
    next_id: dict[int, int] = {}
    things, stuff = [], []
    for index in np.argsort(-scores, kind="stable"):
        if scores[index] < params.score_threshold:
            break
        mask = masks[index] >= params.mask_threshold
        area = int(mask.sum())
        if area == 0 or (mask & claimed).sum() / area > params.overlap_threshold:
            continue
        mask &= ~claimed
        placed = int(mask.sum())
        if placed == 0:
            continue
        category = int(categories[index])
        next_id[category] = next_id.get(category, 0) + 1
        value = category * params.label_divisor + next_id[category]
        panoptic[mask] = value
        claimed |= mask
        things.append(Segment(value, category, True, float(scores[index]), placed, bbox(mask)))
    for category in range(1, len(is_thing)):
        if is_thing[category]:
            continue
        mask = (semantic == category) & ~claimed
        area = int(mask.sum())
        if area < max(params.stuff_area_min, 1):
            continue
        panoptic[mask] = category * params.label_divisor
        stuff.append(Segment(category * params.label_divisor, category, False, None, area, bbox(mask)))
    return panoptic, things + stuff


def fusion_and_overlay(options: BenchOptions, config: Config, device: torch.device) -> tuple[list[dict], list[dict]]:
    """fusion.fuse vs the reference loop vs the naive loop, and Renderer.overlay on one thread,
    at every micro size and instance count."""
    from streamer.service.pipeline import fusion_params
    from streamer.outputs.render import Renderer

    params = fusion_params(config)
    categories = config.categories()
    renderer = Renderer(categories, params.label_divisor, config.render.alpha, config.render.contours, config.render.labels)
    fusion_rows, overlay_rows = [], []
    for width, height in options.micro_sizes:
        for count in options.instances:
            fusion_row, overlay_row = fusion_case((width, height), count, options, categories, params, renderer, device)
            fusion_rows.append(fusion_row)
            overlay_rows.append(overlay_row)
            log.info("bench: %dx%d, %d instances: fuse %.1f ms, reference %.1f ms, overlay %.1f ms", width, height, count,
                     fusion_row["fuse_ms"]["median"], fusion_row["reference_ms"]["median"], overlay_row["ms"]["median"])
    return fusion_rows, overlay_rows


def fusion_case(
    size: tuple[int, int], count: int, options: BenchOptions, categories: tuple[Category, ...], params: FusionParams,
    renderer: Renderer, device: torch.device,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One size and instance count: the three fusions on the same random scene, then the overlay
    of the fused result."""
    import torch

    from streamer.tools.pq import naive_fusion
    from streamer.inference.fusion import fuse

    width, height = size
    repeats = options.micro_repeats
    is_thing = np.array([False] + [c.isthing for c in categories])
    semantic, masks, scores, labels = random_scene(width, height, count, categories, options.seed + count)
    inputs = [torch.from_numpy(a).to(device) for a in (semantic, masks, scores, labels, is_thing)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def fast() -> tuple[np.ndarray, list[Segment]]:
        panoptic, segments = fuse(*inputs, params)
        result = panoptic.cpu().numpy()  # as the worker does
        sync()
        return result, segments

    fast()  # warm-up
    fast_s, (fast_map, segments) = timed(fast, repeats)
    ref_s, (ref_map, ref_segments) = timed(lambda: reference_fusion(semantic, masks, scores, labels, is_thing, params), repeats)
    naive_s, _ = timed(lambda: naive_fusion(semantic, masks, scores, labels, is_thing, params.mask_threshold,
                                            label_divisor=params.label_divisor), repeats)
    identical = bool(np.array_equal(fast_map, ref_map) and segments == ref_segments)
    if not identical:
        log.error("fusion at %dx%d with %d instances differs from the reference loop", width, height, count)
    fusion_row = {
        "size": [width, height], "instances": count, "things_placed": sum(s.isthing for s in segments),
        "fuse_ms": _ms(fast_s), "reference_ms": _ms(ref_s), "naive_ms": _ms(naive_s),
        "speedup_vs_reference": float(np.median(ref_s) / np.median(fast_s)), "identical": identical,
        "torch_threads": torch.get_num_threads(),
    }

    image = np.random.default_rng(options.seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    drawn = tuple(segments)
    with single_thread():
        renderer.overlay(image, fast_map, drawn)  # warm-up
        overlay_s, _ = timed(lambda: renderer.overlay(image, fast_map, drawn), max(repeats, 10))
    overlay_row = {"size": [width, height], "instances": count, "things_drawn": sum(s.isthing for s in drawn), "ms": _ms(overlay_s), "threads": 1}
    return fusion_row, overlay_row


class single_thread:  # noqa: N801 - used as a context manager
    """torch and OpenCV on one thread inside the block."""

    def __enter__(self) -> None:
        import cv2
        import torch

        self._saved = (torch.get_num_threads(), cv2.getNumThreads())
        torch.set_num_threads(1)
        cv2.setNumThreads(1)

    def __exit__(self, *exc: object) -> None:
        import cv2
        import torch

        torch.set_num_threads(self._saved[0])
        cv2.setNumThreads(self._saved[1])


def _ms(seconds: list[float]) -> dict[str, float]:
    return {key: (round(1000 * value, 3) if key != "n" else value) for key, value in summarize(seconds).items()}


# ---------------------------------------------------------------------------------------------
# Codecs and memory


def codecs(options: BenchOptions, images: list[np.ndarray], fps: float, workdir: Path) -> dict[str, Any]:
    """H.264 encode alone (the MP4 writer of `streamer run`) and decode alone (sources.open_source)."""
    from streamer.inputs.sources import open_source

    writer = video_output_class()
    encode_fps, decode_fps = [], []
    for repeat in range(options.repeats):
        path = workdir / f"codec-{repeat}.mp4"
        started = time.perf_counter()
        video = writer(path, fps)
        for index, image in enumerate(images):
            video.write(as_result(index, image, index * 1000.0 / fps), image)
        video.close()
        encode_fps.append(len(images) / (time.perf_counter() - started))

        started = time.perf_counter()
        reader = open_source(str(path))
        decoded = 0
        while reader.read() is not None:
            decoded += 1
        reader.close()
        decode_fps.append(decoded / (time.perf_counter() - started))
        if decoded != len(images):
            raise StreamerError(f"bench: decoded {decoded} of the {len(images)} frames just encoded")
        path.unlink()
    width, height = options.size
    return {"size": [width, height], "frames": len(images), "encode_fps": summarize(encode_fps), "decode_fps": summarize(decode_fps)}


def memory_run(options: BenchOptions, workdir: Path) -> dict[str, Any]:
    """RSS of a long pipeline run at frame N/10 and at frame N."""
    frames = options.memory_frames
    checkpoint = max(1, frames // 10)
    log.info("bench: memory check, %d frames through the pipeline", frames)
    run = pipeline_run(load_bench_config(options, options.source(frames), workdir / "memory.mp4"))
    counted = [(count, rss) for _, count, rss in run.samples if count is not None and rss is not None]
    early = next((rss for count, rss in counted if count >= checkpoint), None)
    late = next((rss for count, rss in reversed(counted) if count >= frames), counted[-1][1] if counted else None)
    growth = None if early is None or late is None else 100.0 * (late - early) / early
    series = counted[:: max(1, len(counted) // 100)]  # at most ~100 points for the report
    for path in workdir.glob("memory*"):
        path.unlink()
    return {
        "frames": frames, "processed": run.processed, "fps": run.frames / run.seconds, "checkpoint_frame": checkpoint,
        "rss_mb_at_checkpoint": early, "rss_mb_at_end": late, "growth_pct": growth,
        "series": [[count, round(rss, 1)] for count, rss in series],
    }


# ---------------------------------------------------------------------------------------------
# The whole bench


def run_bench(options: BenchOptions, config: Config) -> dict[str, Any]:
    import cv2
    import torch

    from streamer.inference.models import resolve_device
    from streamer.inputs.sources import open_source

    # torch's thread count is one setting for the whole process (each thread applies it to its own
    # OpenMP pool), and the pipeline's threads change it: (b) and the micro-benchmarks restate it.
    torch_threads = options.torch_threads or torch.get_num_threads()
    if options.cv2_threads:
        cv2.setNumThreads(options.cv2_threads)
    started = time.monotonic()
    device = resolve_device(config.runtime.device)
    report: dict[str, Any] = {
        "command": "streamer " + " ".join(sys.argv[1:]) if Path(sys.argv[0]).name in ("streamer", "__main__.py") else None,
        "settings": settings(options, config, device),
        "environment": environment(device),
    }
    reader = open_source(options.source())
    images = []
    while (item := reader.read()) is not None:
        images.append(item[0])
    fps = reader.fps
    reader.close()
    with tempfile.TemporaryDirectory(prefix="streamer-bench-") as folder:
        workdir = Path(folder)
        report["end_to_end"] = end_to_end(options, device, torch_threads, images, workdir)
        report["memory"] = memory_run(options, workdir) if options.memory_frames else None
        report["codec"] = codecs(options, images, fps, workdir)
    del images
    torch.set_num_threads(torch_threads)
    report["fusion"], report["overlay"] = fusion_and_overlay(options, config, device)
    report["environment"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    report["environment"]["rss_mb_end"] = rss_mb()
    report["environment"]["rss_mb_peak"] = peak_rss_mb()
    report["targets"] = targets(report)
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def settings(options: BenchOptions, config: Config, device: torch.device) -> dict[str, Any]:
    from streamer.inference import demo_models
    from streamer.inference.models import uses_autocast
    from streamer.inference.worker import available_cores, thread_layout

    semantic, instance = config.models.semantic, config.models.instance
    demo_semantic, demo_instance = semantic.weights == "demo", instance.weights == "demo"  # the demo ignores arch/encoder
    return {
        "config": str(config_path(options)), "overrides": list(options.overrides), "source": options.source(),
        "size": list(options.size), "frames": options.frames, "repeats": options.repeats,
        "device": str(device), "dtype": "float16 (autocast)" if uses_autocast(device, config.runtime.half) else "float32",
        "parallel_frames_and_torch_threads": list(thread_layout(device.type, available_cores(), config.runtime.parallel_frames,
                                                                config.runtime.torch_threads)),
        "semantic_model": {
            "weights": semantic.weights, "arch": demo_models.SEMANTIC_ARCH if demo_semantic else semantic.arch,
            "encoder": demo_models.SEMANTIC_ENCODER if demo_semantic else semantic.encoder, "input_size": list(semantic.input_size),
        },
        "instance_model": {
            "weights": instance.weights, "arch": "Mask R-CNN, MobileNetV3-FPN" if demo_instance else instance.arch,
            "min_size": instance.min_size, "max_size": instance.max_size,
        },
        "micro_sizes": [list(s) for s in options.micro_sizes], "instances": list(options.instances),
        "micro_repeats": options.micro_repeats, "memory_frames": options.memory_frames,
    }


def environment(device: torch.device) -> dict[str, Any]:
    import cv2
    import torch

    from streamer.inference.worker import available_cores

    versions = {"python": platform.python_version()}
    for name, package in (("torch", "torch"), ("torchvision", "torchvision"), ("smp", "segmentation-models-pytorch"),
                          ("av", "av"), ("numpy", "numpy"), ("timm", "timm")):
        try:
            versions[name] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["cv2"] = cv2.__version__
    from streamer import __version__

    versions["streamer"] = __version__
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": available_cores(),  # affinity, capped by a cgroup CPU quota
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cv2_threads": cv2.getNumThreads(),
        "env_threads": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "versions": versions,
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "rss_mb_start": rss_mb(),
    }


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the performance issue with the measured value and whether it was met (None:
    not measured in this run)."""
    ratios = report["end_to_end"]["ratios"]
    out = [
        {"name": "pipeline >= 0.90 x models only", "value": ratios["pipeline_vs_models_only"], "met": ratios["pipeline_vs_models_only"] >= PIPELINE_VS_MODELS},
        {"name": "pipeline >= 1.0 x sequential loop", "value": ratios["pipeline_vs_sequential"], "met": ratios["pipeline_vs_sequential"] >= PIPELINE_VS_SEQUENTIAL},
    ]
    fusion = [r for r in report["fusion"] if tuple(r["size"]) == TARGET_SIZE and r["instances"] == TARGET_INSTANCES]
    out.append({
        "name": "fusion 1080p x 50 instances >= 5x the reference loop, identical output",
        "value": fusion[0]["speedup_vs_reference"] if fusion else None,
        "met": (fusion[0]["speedup_vs_reference"] >= FUSION_SPEEDUP and fusion[0]["identical"]) if fusion else None,
    })
    overlay = [r for r in report["overlay"] if tuple(r["size"]) == TARGET_SIZE]
    worst = max((r["ms"]["median"] for r in overlay), default=None)
    out.append({"name": "overlay 1080p < 10 ms on one core (every instance count)", "value": worst,
                "met": worst < OVERLAY_MS if worst is not None else None})
    memory = report.get("memory")
    growth = memory["growth_pct"] if memory else None
    out.append({"name": "RSS at frame N within 5% of frame N/10", "value": growth,
                "met": abs(growth) <= RSS_GROWTH_PCT if growth is not None else None})
    out.append({"name": "every fusion output identical to the reference loop", "value": all(r["identical"] for r in report["fusion"]),
                "met": all(r["identical"] for r in report["fusion"])})
    return out


# ---------------------------------------------------------------------------------------------
# Text report


def format_report(report: dict[str, Any]) -> str:
    s, env, e2e = report["settings"], report["environment"], report["end_to_end"]
    width, height = s["size"]
    fusion_threads = report["fusion"][0]["torch_threads"] if report["fusion"] else "-"
    fusion_title = f"fusion (ms, median; fuse on {fusion_threads} threads)"
    lines = [
        f"streamer bench: {s['device']} ({s['dtype']}), synthetic street {width}x{height}, {s['frames']} frames x {s['repeats']} repeats",
        f"machine: {env['cpu']}, {env['cpu_count']} CPUs, torch threads {env['torch_threads']}, cv2 threads {env['cv2_threads']}"
        + (f", GPU {env['gpu']}" if env["gpu"] else "")
        + f"; load average {env['load_average_start'][0]:.2f} at start, {env['load_average_end'][0]:.2f} at end",
        "",
        f"{'end to end':<34}{'fps median':>11}{'[min - max]':>17}{'ms/frame':>10}",
    ]
    names = {"models_only": "(a) models only (the limit)", "sequential": "(b) sequential loop, one thread", "pipeline": "(c) threaded pipeline"}
    for mode, label in names.items():
        fps = e2e[mode]["fps"]
        lines.append(f"  {label:<32}{fps['median']:>11.2f}{_spread(fps):>17}{1000 / fps['median']:>10.0f}")
    ratios = e2e["ratios"]
    lines += [
        f"  pipeline / models only {ratios['pipeline_vs_models_only']:.3f}   pipeline / sequential {ratios['pipeline_vs_sequential']:.3f}",
        "  sequential loop, ms per frame: " + ", ".join(f"{k} {v:.1f}" for k, v in e2e["sequential"]["stage_ms_per_frame"].items()),
        "  pipeline, CPU cores busy by thread: " + ", ".join(f"{k} {v:.2f}" for k, v in e2e["pipeline"]["thread_cpu_cores"].items()),
        "",
        fusion_title,
        f"{'  size x instances':<28}{'fuse':>9}{'reference':>11}{'naive':>9}{'speedup':>9}{'identical':>11}",
    ]
    for row in report["fusion"]:
        label = f"  {row['size'][0]}x{row['size'][1]} x {row['instances']}"
        lines.append(f"{label:<28}{row['fuse_ms']['median']:>9.1f}{row['reference_ms']['median']:>11.1f}{row['naive_ms']['median']:>9.1f}"
                     f"{row['speedup_vs_reference']:>8.1f}x{'yes' if row['identical'] else 'NO':>11}")
    lines += ["", "overlay (ms, one thread)", f"{'  size x instances':<28}{'median':>9}{'[min - max]':>17}"]
    for row in report["overlay"]:
        label = f"  {row['size'][0]}x{row['size'][1]} x {row['instances']}"
        ms = row["ms"]
        lines.append(f"{label:<28}{ms['median']:>9.2f}{_spread(ms):>17}")
    codec = report["codec"]
    lines += ["", f"codecs at {codec['size'][0]}x{codec['size'][1]}: H.264 decode {codec['decode_fps']['median']:.0f} fps, "
                  f"encode {codec['encode_fps']['median']:.0f} fps (medians)"]
    memory = report["memory"]
    if memory:
        lines.append(f"memory: RSS {_mb(memory['rss_mb_at_checkpoint'])} at frame {memory['checkpoint_frame']}, "
                     f"{_mb(memory['rss_mb_at_end'])} at frame {memory['frames']} ({_pct(memory['growth_pct'])})")
    else:
        after = e2e["rss_mb"]["after_repeat"]
        lines.append("memory: RSS after each repeat " + ", ".join(_mb(v) for v in after) + " (long run off: --memory-frames N)")
    lines += ["", "targets:"]
    for target in report["targets"]:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        value = target["value"]
        shown = "" if value is None or isinstance(value, bool) else f" ({value:.2f})"
        lines.append(f"  {verdict:<13}{target['name']}{shown}")
    lines.append(f"\n{report['seconds']:.0f} s in all")
    return "\n".join(lines)


def _spread(stats: dict[str, float]) -> str:
    return f"[{stats['min']:.2f} - {stats['max']:.2f}]"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} MiB"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}%"
