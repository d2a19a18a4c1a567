"""The bench's many-detections cases: big frames with many instances through the models and the
fusion, as the pipeline runs them (its InferencePool: two frames at once on a CPU), with the peak
memory of each case.

The instance model is forced to return `count` detections: a Mask R-CNN of random weights
(`models.instance.weights=none`), score threshold 0, `detections_per_image` = count, and its
classes those the class map keeps, so that every detection reaches the masks and the fusion. The
semantic model is the configured one.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from streamer.config import Config
from streamer.inference.fusion import fuse
from streamer.inference.worker import load_models
from streamer.inputs.synthetic import StreetScene
from streamer.service import build
from streamer.tools.bench.measure import ms_summary, peak_rss_mb, reset_peak_rss, timed
from streamer.tools.bench.options import BenchOptions, load_bench_config

log = logging.getLogger(__name__)


def forced(options: BenchOptions, config: Config, count: int) -> Config:
    """The bench's configuration with the instance model forced to `count` detections of kept classes."""
    classes = ",".join(sorted(config.models.instance.class_map))
    overrides = ("models.instance.weights=none", "models.instance.score_threshold=0.0",
                 f"models.instance.detections_per_image={count}", f"models.instance.classes=[{classes}]")
    return load_bench_config(dataclasses.replace(options, overrides=options.overrides + overrides))


def detection_cases(options: BenchOptions, config: Config, device: torch.device) -> list[dict[str, Any]]:
    """Every --detections case (frame size, detections) in turn; none without thing classes."""
    if not config.models.instance.class_map:
        log.warning("bench: the class map keeps no instance class, no many-detections case")
        return []
    rows = []
    for size, count in options.detection_cases:
        row = detection_case(options, forced(options, config, count), size, count, device)
        rows.append(row)
        log.info("bench: %dx%d, %d detections, %d in flight: %.0f ms per frame, %d kept, peak RSS %.0f MiB", *size, count,
                 row["in_flight"], row["ms_per_frame"]["median"], row["kept"], row["peak_rss_mb"] or 0)
    return rows


def detection_case(options: BenchOptions, config: Config, size: tuple[int, int], count: int, device: torch.device) -> dict[str, Any]:
    """One frame size and detection count: the models loaded, one warm-up round, then
    --micro-repeats timed rounds of `pool.size` frames at once through both models and the fusion.
    The peak memory counts from before the models load (RSS: VmHWM reset; on a GPU the CUDA peak)."""
    image = StreetScene(options.seed, size).render(0).image
    params = build.fusion_params(config)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pool, models = load_models(config, device)

    def one() -> tuple[int, bool]:
        (prediction,) = models.predict([image])
        fuse(prediction.semantic, prediction.masks, prediction.scores, prediction.categories, models.is_thing, params)
        sync()
        return len(prediction.masks), prediction.capped

    def round_() -> list[tuple[int, bool]]:
        return [future.result() for future in [pool.submit(one) for _ in range(pool.size)]]

    try:
        round_()  # warm-up
        seconds, results = timed(round_, options.micro_repeats)
    finally:
        pool.close()
    return {
        "size": list(size), "detections_per_image": count, "in_flight": len(results), "kept": results[0][0],
        "capped": results[0][1], "ms_per_frame": ms_summary([s / len(results) for s in seconds]),
        "peak_rss_mb": peak_rss_mb(),
        "cuda_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }
