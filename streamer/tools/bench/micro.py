"""Micro-benchmarks of the bench: fusion (ours, the reference loop, the naive loop; with an
identical-output check) and the overlay on one thread, on random street-like scenes."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from streamer.config import Config
from streamer.frames import Category, Segment
from streamer.inference.fusion import FusionParams, fuse
from streamer.outputs.render import Renderer
from streamer.service import build
from streamer.tools.baselines import naive_fusion, reference_fusion
from streamer.tools.bench.measure import ms_summary, single_thread, timed
from streamer.tools.bench.options import BenchOptions

log = logging.getLogger(__name__)


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


def fusion_and_overlay(options: BenchOptions, config: Config, device: torch.device) -> tuple[list[dict], list[dict]]:
    """fusion.fuse vs the reference loop vs the naive loop, and Renderer.overlay on one thread,
    at every micro size and instance count."""
    params = build.fusion_params(config)
    categories = config.categories()
    renderer = build.renderer(config)
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
        "fuse_ms": ms_summary(fast_s), "reference_ms": ms_summary(ref_s), "naive_ms": ms_summary(naive_s),
        "speedup_vs_reference": float(np.median(ref_s) / np.median(fast_s)), "identical": identical,
        "torch_threads": torch.get_num_threads(),
    }

    image = np.random.default_rng(options.seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    drawn = tuple(segments)
    with single_thread():
        renderer.overlay(image, fast_map, drawn)  # warm-up
        overlay_s, _ = timed(lambda: renderer.overlay(image, fast_map, drawn), max(repeats, 10))
    overlay_row = {"size": [width, height], "instances": count, "things_drawn": sum(s.isthing for s in drawn), "ms": ms_summary(overlay_s), "threads": 1}
    return fusion_row, overlay_row
