"""Micro-benchmarks of the bench: fusion (ours, the reference loop, the naive loop; with an
identical-output check) and the overlay on one thread, on random street-like scenes; tracking and
counting per frame on one thread, on objects that move smoothly (with a check that they kept their
tracks), and the scene analytics after them (speed, time in zones, heatmaps)."""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from streamer.analytics.calibration import GroundPlane
from streamer.analytics.heatmap import Heatmap
from streamer.analytics.speed import SpeedEstimator
from streamer.analytics.zone_time import ZoneTimes
from streamer.boxes import of_xywh, window
from streamer.config import Config
from streamer.frames import KMH_PER_MPS, Category, Line, Segment, Zone
from streamer.inference.counting import Counter
from streamer.inference.fusion import FusionParams, fuse
from streamer.inference.masks import BoxMasks
from streamer.inference.tracking import SourceTracker, TrackingParams
from streamer.outputs.render import Renderer
from streamer.service import build
from streamer.tools.baselines import naive_fusion, reference_fusion
from streamer.tools.bench.measure import ms_summary, single_thread, timed
from streamer.tools.bench.options import BenchOptions

log = logging.getLogger(__name__)

TRACKING_FPS = 30.0  # the moving objects' frame rate: pts_s = frame / 30
TRACKING_WARMUP = 5  # first frames of each tracking run left out of the timings (at most half of them)
MAX_SPEED = 4.0  # px per frame, the fastest an object moves along either axis


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
    semantic_t, masks_t, scores_t, labels_t, is_thing_t = (
        torch.from_numpy(a).to(device) for a in (semantic, masks, scores, labels, is_thing))
    # each mask inside its box, as the model adapter gives them
    inputs = (semantic_t, BoxMasks.from_dense(masks_t), scores_t, labels_t, is_thing_t)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def fast() -> tuple[np.ndarray, list[Segment]]:
        panoptic, segments = fuse(*inputs, params)
        result = panoptic.cpu().numpy()  # as the worker does
        sync()
        return result, segments

    reference = lambda: reference_fusion(semantic, masks, scores, labels, is_thing, params)  # noqa: E731
    naive = lambda: naive_fusion(semantic, masks, scores, labels, is_thing, params.mask_threshold, label_divisor=params.label_divisor)  # noqa: E731
    for call in (fast, reference, naive):
        call()  # one warm-up before each timed case
    fast_s, (fast_map, segments) = timed(fast, repeats)
    ref_s, (ref_map, ref_segments) = timed(reference, repeats)
    naive_s, _ = timed(naive, repeats)
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
    overlay_row = {"size": [width, height], "instances": count, "things_drawn": sum(s.isthing for s in drawn),
                   "ms": ms_summary(overlay_s), "threads": 1}
    return fusion_row, overlay_row


def tracking_and_counting(options: BenchOptions, config: Config) -> list[dict]:
    """SourceTracker.update then Counter.update (2 lines, 1 zone) per frame on one thread, at every
    micro size and instance count, as the worker runs them after the fusion."""
    import trackers  # noqa: F401 - the library and supervision load (~0.6 s) before any clock starts

    params = build.tracking_params(config)
    divisor = build.fusion_params(config).label_divisor
    categories = config.categories()
    if not any(c.isthing for c in categories):
        log.warning("bench: no thing categories in the configuration, nothing to track")
        return []
    rows = []
    for width, height in options.micro_sizes:
        for count in options.instances:
            row = tracking_case((width, height), count, options, categories, params, divisor)
            rows.append(row)
            log.info("bench: %dx%d, %d objects: tracking + counting %.2f ms (tracking %.2f, counting %.2f), %d of %d tracks kept",
                     width, height, count, row["ms"]["median"], row["tracking_ms"]["median"], row["counting_ms"]["median"],
                     row["kept_tracks"], count)
    return rows


def moving_objects(
    width: int, height: int, count: int, things: list[int], frames: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`count` boxes of the thing categories (in turn) that move smoothly, each in its own cell of a
    grid over the frame, so that they never overlap: (categories, N; boxes, frames x N x 4 int
    x, y, w, h). Each box swings from side to side of its cell (and half as fast up and down) along
    a sine, at most MAX_SPEED px per frame; at 1080p x 50 a box is about 60-115 x 85-150 pixels."""
    rng = np.random.default_rng(seed)
    cols = max(1, math.ceil(math.sqrt(count * width / height)))
    cell_w, cell_h = width / cols, height / math.ceil(count / cols)
    labels = np.array([things[i % len(things)] for i in range(count)], np.int64)
    w = np.maximum(2, (cell_w * rng.uniform(0.3, 0.6, count)).astype(int))
    h = np.maximum(2, (cell_h * rng.uniform(0.4, 0.7, count)).astype(int))
    left, top = (np.arange(count) % cols) * cell_w, (np.arange(count) // cols) * cell_h
    swing_x, swing_y = np.maximum(0.0, cell_w - w - 1), np.maximum(0.0, cell_h - h - 1)
    # d/dk of A (1 + sin(wk)) / 2 is at most A w / 2 (along y: A w / 4)
    omega = np.minimum(0.2, 2 * MAX_SPEED / np.maximum.reduce([swing_x, swing_y / 2, np.ones(count)]))
    phase_x, phase_y = rng.uniform(0, 2 * np.pi, count), rng.uniform(0, 2 * np.pi, count)
    k = np.arange(frames)[:, None]
    x = left + swing_x * (1 + np.sin(phase_x + omega * k)) / 2
    y = top + swing_y * (1 + np.sin(phase_y + omega * k / 2)) / 2
    x = np.clip(np.round(x).astype(int), 0, width - w)
    y = np.clip(np.round(y).astype(int), 0, height - h)
    boxes = np.stack([x, y, np.broadcast_to(w, x.shape), np.broadcast_to(h, y.shape)], axis=2)
    return labels, boxes


def draw_objects(
    panoptic: np.ndarray, stuff: list[int], labels: np.ndarray, boxes: np.ndarray, scores: np.ndarray, divisor: int
) -> tuple[tuple[Segment, ...], np.ndarray]:
    """One frame as the fusion leaves it, drawn into `panoptic` (H x W int32): stuff in horizontal
    bands, each object a rectangle of category * divisor + its rank by score in its category (from
    1), so instance ids change from frame to frame as scores do; segments things first, by score,
    then stuff. Returns the segments and the object index of each thing segment, in their order."""
    height, width = panoptic.shape
    order = np.argsort(-scores, kind="stable")
    rank: dict[int, int] = {}
    things = []
    for index in order:
        category = int(labels[index])
        rank[category] = rank.get(category, 0) + 1
        x, y, w, h = (int(v) for v in boxes[index])
        things.append(Segment(category * divisor + rank[category], category, True, float(scores[index]), w * h, of_xywh((x, y, w, h))))
    cuts = np.linspace(0, height, len(stuff) + 1).astype(int)
    segments_stuff = []
    for category, top, bottom in zip(stuff, cuts[:-1], cuts[1:]):
        panoptic[top:bottom] = category * divisor
        covered = sum(w * max(0, min(y + h, bottom) - max(y, top)) for _, y, w, h in boxes.tolist())
        if bottom > top and covered < (bottom - top) * width:
            segments_stuff.append(Segment(category * divisor, category, False, None, int((bottom - top) * width - covered),
                                          of_xywh((0, int(top), width, int(bottom - top)))))
    if not stuff:
        panoptic[:] = 0
    for segment in things:
        panoptic[window(segment.box)] = segment.id
    return tuple(things + segments_stuff), order


def counting_layout(width: int, height: int) -> tuple[list[Line], list[Zone]]:
    """Two lines (a diagonal across the frame, a vertical one right of the middle) and one zone (a
    quadrilateral in the lower left), in fractions of the frame so that some objects cross or enter them."""
    lines = [Line("diagonal", (0.1 * width, 0.2 * height), (0.9 * width, 0.8 * height)),
             Line("vertical", (0.55 * width, 0.0), (0.55 * width, float(height)))]
    zones = [Zone("lower left", ((0.05 * width, 0.55 * height), (0.45 * width, 0.5 * height),
                                 (0.5 * width, 0.95 * height), (0.02 * width, 0.9 * height)))]
    return lines, zones


def analytics_state(width: int, height: int, zones: list[Zone], categories: tuple[Category, ...]
                    ) -> tuple[SpeedEstimator, ZoneTimes, Heatmap]:
    """The scene analytics as a source runs them (default settings): speeds over a ground plane that
    maps the frame onto 20 x 40 m of road, time in `zones`, and the heatmaps."""
    from streamer.config import Analytics

    settings = Analytics()
    image = np.array([[0, height], [width, height], [0.75 * width, 0.4 * height], [0.25 * width, 0.4 * height]], np.float64)
    plane = GroundPlane.from_points(image, [[-10, 5], [10, 5], [10, 45], [-10, 45]])
    speed, heat = settings.speed, settings.heatmap
    speeds = SpeedEstimator(plane, speed.window_s, speed.min_span, speed.max_kmh / KMH_PER_MPS, {}, speed.max_error)
    names = {c.id: c.name for c in categories}
    return (speeds, ZoneTimes(zones, names),
            Heatmap({c.id: c.name for c in categories if c.isthing}, heat.max_width, heat.half_life_s))


def time_analytics(speeds: SpeedEstimator, zone_times: ZoneTimes, heatmap: Heatmap, panoptic: np.ndarray,
                   tracked: tuple[Segment, ...], pts_s: float) -> list[float]:
    """One frame through speed, time in zones and the heatmap: the seconds of each."""
    stamps = [time.perf_counter()]
    speeds.update(panoptic, tracked, pts_s)
    stamps.append(time.perf_counter())
    zone_times.update(tracked, pts_s)
    stamps.append(time.perf_counter())
    heatmap.add(panoptic, tracked, pts_s)
    stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps[:-1], stamps[1:])]


def tracking_case(
    size: tuple[int, int], count: int, options: BenchOptions, categories: tuple[Category, ...], params: TrackingParams,
    divisor: int,
) -> dict[str, Any]:
    """One size and object count over --tracking-frames frames: each frame's map and segments are
    drawn before its clock starts, then SourceTracker.update and Counter.update are timed, each
    alone, and the scene analytics after them (speed, time in zones, heatmap: `analytics_ms`, and
    each part's); the first TRACKING_WARMUP frames (at most half) are left out of the timings. Also counts
    the objects that kept one track id throughout (from their min_hits-th frame on)."""
    width, height = size
    frames = options.tracking_frames
    warmup = min(TRACKING_WARMUP, frames // 2)
    rng = np.random.default_rng(options.seed + count)
    labels, boxes = moving_objects(width, height, count, [c.id for c in categories if c.isthing], frames, options.seed + count)
    # each object's score wanders about its own level: as the fusion ranks by score, instance ids change when ranks do
    scores = np.clip(rng.uniform(0.5, 0.95, count) + rng.normal(0, 0.03, (frames, count)), 0.3, 1.0)
    stuff = [c.id for c in categories if not c.isthing]
    lines, zones = counting_layout(width, height)
    tracker = SourceTracker(params, divisor)
    counter = Counter(lines, zones, {c.id: c.name for c in categories})
    speeds, zone_times, heatmap = analytics_state(width, height, zones, categories)
    panoptic = np.empty((height, width), np.int32)
    track_s, count_s, events = [], [], 0
    parts: dict[str, list[float]] = {"speed": [], "zone_time": [], "heatmap": []}
    tracks_of: list[set[int | None]] = [set() for _ in range(count)]
    with single_thread():
        for index in range(frames):
            segments, objects = draw_objects(panoptic, stuff, labels, boxes[index], scores[index], divisor)
            pts_s = index / TRACKING_FPS
            started = time.perf_counter()
            _, tracked = tracker.update(panoptic, segments, pts_s)
            between = time.perf_counter()
            events += len(counter.update(tracked, pts_s))
            ended = time.perf_counter()
            steps = time_analytics(speeds, zone_times, heatmap, panoptic, tracked, pts_s)
            if index >= warmup:
                track_s.append(between - started)
                count_s.append(ended - between)
                for name, seconds in zip(parts, steps):
                    parts[name].append(seconds)
            if index >= params.min_hits - 1:  # with min_hits 1 from the first frame on
                for obj, segment in zip(objects.tolist(), tracked):  # things come first, in the order drawn
                    tracks_of[obj].add(segment.track_id)
    total_s = [a + b for a, b in zip(track_s, count_s)]
    kept = sum(len(ids) == 1 and None not in ids for ids in tracks_of)
    counted = counter.counts()
    return {
        "size": [width, height], "instances": count, "tracker": params.tracker, "frames": frames, "timed_frames": len(total_s),
        "lines": len(lines), "zones": len(zones),
        "ms": ms_summary(total_s), "tracking_ms": ms_summary(track_s), "counting_ms": ms_summary(count_s),
        "analytics_ms": ms_summary([sum(step) for step in zip(*parts.values())]),
        **{f"{name}_ms": ms_summary(seconds) for name, seconds in parts.items()},
        "tracks": len(set().union(*tracks_of) - {None}), "kept_tracks": kept,
        "objects_counted": sum(counted.objects_total.values()), "events": events, "threads": 1,
    }
