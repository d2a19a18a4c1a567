"""Modes (a), (b), (c) of the bench on the same frames: (a) models only, as the pipeline runs them;
(b) the one-thread loop a tutorial would write; (c) the threaded pipeline; plus the codecs alone
and the long memory run."""
from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamer.config import Config
from streamer.errors import StreamerError
from streamer.inference.fusion import FusionParams
from streamer.inference.models import PanopticModels, build_models
from streamer.inference.worker import load_models
from streamer.inputs.sources import open_source
from streamer.outputs.recording import VideoOutput
from streamer.outputs.render import Renderer
from streamer.service import build
from streamer.service.pipeline import Pipeline
from streamer.tools.baselines import naive_fusion
from streamer.tools.bench.measure import Sampler, as_result, on_own_thread, rss_mb, summarize
from streamer.tools.bench.options import BenchOptions, load_bench_config

log = logging.getLogger(__name__)


def models_only(config: Config, device: torch.device, images: list[np.ndarray]) -> float:
    """(a): seconds for both models over frames already in memory, run as the pipeline runs them
    (the same number of frames at once, threads and loading; see worker.InferencePool)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    pool, models = load_models(config, device)
    predict = lambda image: (models.predict([image]), sync())  # noqa: E731
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
    stages = dict.fromkeys(("read", "models", "fusion", "overlay", "encode"), 0.0)
    started = time.perf_counter()
    reader = open_source(uri)
    video = VideoOutput(output, reader.fps)
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
                prediction.semantic, prediction.masks.dense(), prediction.scores, prediction.categories, models.is_thing,
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
    samples: list[tuple[float, int, float | None]]


def pipeline_run(config: Config) -> PipelineRun:
    """`streamer run` in this process. Throughput is timed from the first result (so the first
    frame's pass through fresh models is left out, as (a) and (b) run warm models) to the return
    of Pipeline.run, which includes closing the video and up to 0.1 s of the main thread's polling.
    Falls back to timing from the first frame read when only one frame was processed."""
    pipeline = Pipeline(config, build.outputs)
    sampler = Sampler(lambda: sum(stats.processed for stats in pipeline.stats.values()), pipeline.control.first_frame)
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


def sequential_run(options: BenchOptions, device: torch.device, torch_threads: int, output: Path) -> tuple[float, int, dict[str, float]]:
    """(b) with models loaded (and warmed up) on the calling thread, on `torch_threads` threads."""
    torch.set_num_threads(torch_threads)
    config = load_bench_config(options)
    models = build_models(config.models, config.categories(), device, config.runtime.half)
    reader = open_source(options.source())
    first = reader.read()
    assert first is not None  # the synthetic street has frames
    models.predict([first[0]])  # warm-up: first-call allocations and kernel selection
    reader.close()
    return sequential_loop(models, build.renderer(config), build.fusion_params(config), options.source(), output)


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
            functools.partial(sequential_run, options, device, torch_threads, workdir / f"sequential-{repeat}.mp4"), "bench-sequential")
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
        result[mode] = {"fps": summarize(fps), "seconds_per_frame": summarize([1.0 / value for value in fps]),
                        "runs_fps": [round(v, 4) for v in fps]}
    result["sequential"]["stage_ms_per_frame"] = {stage: round(1000 * float(np.median([s[stage] for s in stages])), 2)
                                                  for stage in stages[0]}
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


def codecs(options: BenchOptions, images: list[np.ndarray], fps: float, workdir: Path) -> dict[str, Any]:
    """H.264 encode alone (the MP4 writer of `streamer run`) and decode alone (sources.open_source)."""

    writer = VideoOutput
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
    counted = [(count, rss) for _, count, rss in run.samples if rss is not None]
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
