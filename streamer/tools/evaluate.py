"""`streamer eval`: run the models over a synthetic scene and score three fusions against its ground truth.

The same model outputs feed the project's fusion, the naive overwrite loop and semantic-only, so the
difference in PQ is the fusion rule's alone. The fusion's output is also scored as video
(streamer.tools.vps: STQ, VPQ, ID switches) three ways: with the tracker's ids (`fused`, what
`streamer run` writes), with the per-frame ids the fusion numbers by score (`per_frame_ids`, the
baseline), and with the oracle association (each segment given the ground-truth track it
overlaps most: what a perfect tracker would give these masks, the practical ceiling of AQ).
"""
from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.config import Config
from streamer.errors import UsageError
from streamer.frames import Category, Frame, Panoptic, Segment
from streamer.inference.fusion import FusionParams, fuse
from streamer.inference.models import PanopticModels, resolve_device
from streamer.inference.tracking import SourceTracker, TrackingParams
from streamer.inference.worker import InferencePool, load_models
from streamer.inputs.sources import open_source
from streamer.inputs.spec import parse_source
from streamer.inputs.synthetic import CATEGORIES, SceneFrame, StreetScene, SyntheticReader
from streamer.outputs.export import PanopticExport
from streamer.service.build import fusion_params, tracking_params
from streamer.tools import speed_eval
from streamer.tools.analytics_eval import HeatmapScore, ZoneTimeScore, scene_zones
from streamer.tools.baselines import naive_fusion, semantic_only
from streamer.tools.pq import PQAccumulator, PQResult, format_pq_table
from streamer.tools.speed_eval import SpeedScore, speed_score
from streamer.tools.vps import VideoPanopticAccumulator, VideoPanopticResult, oracle_relabel

log = logging.getLogger(__name__)

METHODS = ("fused", "naive", "semantic_only", "per_frame_ids")
"""PQ is scored for each; `fused` holds the tracker's ids, `per_frame_ids` the same fusion's per-frame ids."""
TRACKED = ("fused", "per_frame_ids")  # the methods also scored as video
VIDEO_DIVISOR = 1 << 20  # the video metrics' label divisor: room for every track id of a long scene


@dataclass(frozen=True)
class EvalReport:
    source: str
    device: str
    seconds: float
    results: dict[str, PQResult]  # method -> PQ
    video: dict[str, VideoPanopticResult]  # `fused` (tracked ids) and `per_frame_ids` -> video metrics
    oracle_aq: float | None  # AQ with the oracle association: the practical ceiling of the tracker's
    analytics: dict[str, Any] = field(default_factory=dict)  # scene analytics: kind -> its figures (streamer.tools.analytics_eval)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "device": self.device, "seconds": round(self.seconds, 1)}
        for method, result in self.results.items():
            out[method] = result.to_dict()
            if method in self.video:
                out[method]["video"] = {**self.video[method].to_dict(), "oracle_aq": self.oracle_aq}
        if self.analytics:
            out["analytics"] = self.analytics
        return out

    def text(self) -> str:
        parts = [f"PQ on {self.source} ({self.device}, {self.seconds:.0f} s)"]
        for method, result in self.results.items():
            if method != "per_frame_ids":  # per-frame PQ is the same table as fused's: ids do not change it
                parts += ["", f"[{method}]", format_pq_table(result)]
        parts += ["", "summary (PQ all / things / stuff, %):"]
        for method, result in self.results.items():
            groups = (result.all, result.things, result.stuff)
            parts.append(f"  {method:<14}" + " / ".join("-" if g.pq is None else f"{100 * g.pq:.1f}" for g in groups))
        parts += ["", "video (%; ID switches of the matched track-frames):",
                  f"  {'':<14}{'STQ':>6}{'AQ':>6}{'SQ':>6}{'VPQ0':>6}{'VPQ5':>6}{'VPQ10':>6}{'VPQ15':>6}  ID switches"]
        for method, video in self.video.items():
            cells = [video.stq, video.aq, video.sq, *video.vpq.values()]
            share = video.id_switches / video.matched_track_frames if video.matched_track_frames else 0.0
            parts.append(f"  {method:<14}" + "".join("     -" if v is None else f"{100 * v:6.1f}" for v in cells)
                         + f"  {video.id_switches} of {video.matched_track_frames} ({100 * share:.1f} %)")
        oracle = "-" if self.oracle_aq is None else f"{100 * self.oracle_aq:.1f}"
        parts.append(f"  oracle AQ {oracle} (a perfect tracker's association of these masks)")
        zone_time, heatmap, speed = self.analytics.get("zone_time"), self.analytics.get("heatmap"), self.analytics.get("speed")
        if zone_time or heatmap or speed:
            parts += ["", "analytics:"]
        if speed:
            parts.append(speed_eval.text(speed))
        if zone_time:
            within = zone_time["within_0_2s"]
            parts.append(f"  time in zones within 0.2 s of the truth: {'-' if within is None else f'{100 * within:.1f} %'} "
                         f"of {zone_time['pairs']} track-zone pairs ({', '.join(zone_time['zones'])}; "
                         f"{zone_time['cut']} visits cut by the run's ends left out)")
        if heatmap:
            r = heatmap["correlation"]
            parts.append(f"  heatmap correlation with the true occupancy: {'-' if r is None else f'{r:.3f}'}")
        return "\n".join(parts)


def evaluate_synthetic(config: Config, uri: str, export_dir: str | None = None) -> EvalReport:
    """Score the configured models on `uri`, a synthetic scene (it carries ground truth)."""
    spec = parse_source(uri)
    if spec.kind != "synthetic":
        raise UsageError(f"eval: {spec.shown}: needs a synthetic:street?... source, which carries ground truth")
    reader = open_source(spec)
    assert isinstance(reader, SyntheticReader)  # what a synthetic source opens as: it reads frames with their ground truth
    if reader.frame_count is None:
        raise UsageError(f"eval: {uri}: give a frame count, e.g. &frames=300")
    ground_truth_lut(config.categories())  # a class missing: fail before the models load
    device = resolve_device(config.runtime.device)
    export = PanopticExport(export_dir, config.categories(), images=False, overwrite=config.output.overwrite) if export_dir else None
    pool, models = load_models(config, device)
    started = time.monotonic()
    zones, heatmap = scene_scores(config, reader.scene)
    speed = scene_speed(config, reader.scene)
    try:
        scenes = iter(reader.read_frame, None)
        scores = score(scenes, pool, models, fusion_params(config), config.categories(), tracking_params(config), export, reader.fps,
                       observe=(zones.observe, heatmap.observe, speed.observe))
    finally:
        pool.close()
    analytics = {"speed": speed.figures(), "zone_time": zones.figures(), "heatmap": heatmap.figures()}
    return EvalReport(uri, str(device), time.monotonic() - started, *scores, analytics=analytics)


def scene_scores(config: Config, scene: StreetScene) -> tuple[ZoneTimeScore, HeatmapScore]:
    """The time-in-zone and heatmap scorers of `scene`: the first configured source's zones if it has
    any, else the scene's own (streamer.tools.analytics_eval)."""
    named = next((s.counting_zones() for s in config.all_sources() if s.zones), [])
    image, ground = scene_zones(scene, named)
    lut = ground_truth_lut(config.categories())
    same_class = {c.id: int(lut[c.id]) for c in CATEGORIES}
    things = {c.id: c.name for c in config.categories() if c.isthing}
    return ZoneTimeScore(image, ground, same_class), HeatmapScore(things, {c.id: c.name for c in CATEGORIES if c.isthing})


def scene_speed(config: Config, scene: StreetScene) -> SpeedScore:
    """The speed scorer of `scene`: through the first configured source's calibration if one has it,
    else the scene camera's exact one (streamer.tools.speed_eval)."""
    from streamer.analytics.calibration import GroundPlane

    named = next((s.calibration for s in config.all_sources() if s.calibration), None)
    plane = GroundPlane.from_points(*((named.image, named.ground) if named else scene.ground_calibration()))
    lut = ground_truth_lut(config.categories())
    return speed_score(plane, config.analytics.speed, {c.name: c.id for c in config.categories()},
                       {c.id: int(lut[c.id]) for c in CATEGORIES})


def score(
    scenes: Iterable[SceneFrame], pool: InferencePool, models: PanopticModels, params: FusionParams,
    categories: tuple[Category, ...], tracking: TrackingParams | None = None, export: PanopticExport | None = None,
    fps: float = 1.0, observe: Sequence[Callable[[float, np.ndarray, Sequence[Segment], SceneFrame], None]] = (),
) -> tuple[dict[str, PQResult], dict[str, VideoPanopticResult], float | None]:
    """Over synthetic frames with their ground truth, scored in order, `pool.size` frames in the
    models at once: PQ of each of METHODS, the video metrics of TRACKED, and the oracle AQ. Without
    `tracking` (or with it disabled) `fused` keeps the per-frame ids. Frame i is at i / fps seconds
    (the tracker's clock); the fused predictions also go to `export`, and each frame's (time, fused map,
    its segments, scene frame) to every `observe`.
    Raises UsageError when the classes lack one the ground truth has."""
    lut = ground_truth_lut(categories)
    divisor = params.label_divisor
    scores = {method: PQAccumulator(categories, divisor) for method in METHODS}
    video = {method: VideoPanopticAccumulator(categories, VIDEO_DIVISOR) for method in (*TRACKED, "oracle")}
    tracker = SourceTracker(tracking, divisor) if tracking and tracking.enabled else None
    oracle_tracks: dict[int, int] = {}
    untracked = _Countdown(VIDEO_DIVISOR)
    scenes = iter(scenes)
    in_flight: collections.deque = collections.deque()
    index = 0
    try:
        while True:
            while len(in_flight) < pool.size and (scene := next(scenes, None)) is not None:
                in_flight.append((scene, pool.submit(_outputs, models, params, scene.image)))
            if not in_flight:
                break
            scene, outputs = in_flight.popleft()
            per_frame, per_frame_segments, naive, semantic = outputs.result()
            fused, segments = (per_frame, per_frame_segments) if tracker is None else \
                tracker.update(per_frame.copy(), per_frame_segments, index / fps)  # it relabels in place; per_frame is scored too
            truth = relabel(scene.panoptic, lut, divisor)
            for method, prediction in zip(METHODS, (fused, naive, semantic, per_frame)):
                scores[method].add(prediction, truth)
            truth_tracks = relabel(by_track(scene.panoptic, scene.segments, divisor, VIDEO_DIVISOR), lut, VIDEO_DIVISOR)
            tracked = by_track(fused, segments, divisor, VIDEO_DIVISOR, untracked) if tracker else None
            per_frame = by_track(per_frame, (), divisor, VIDEO_DIVISOR)
            video["fused"].add(per_frame if tracked is None else tracked, truth_tracks)
            video["per_frame_ids"].add(per_frame, truth_tracks)
            video["oracle"].add(oracle_relabel(per_frame, truth_tracks, categories, oracle_tracks, VIDEO_DIVISOR), truth_tracks)
            for watch in observe:
                watch(index / fps, fused, segments, scene)
            if export is not None:
                frame = Frame("synthetic", index, scene.image, index * 1000.0 / fps, time.time(), time.monotonic())
                export.write(Panoptic(frame, fused, tuple(segments)), scene.image)
            index += 1
            if index % 50 == 0:
                log.info("eval: %d frames scored", index)
    finally:
        if export is not None:
            export.close()
    oracle = video.pop("oracle").result()
    return ({method: accumulator.result() for method, accumulator in scores.items()},
            {method: accumulator.result() for method, accumulator in video.items()}, oracle.aq)


class _Countdown:
    """Instance ids for things without a track, from the top of the id range down: each a track of one frame."""

    def __init__(self, divisor: int):
        self.next = divisor - 1

    def __call__(self) -> int:
        self.next -= 1
        return self.next + 1


def by_track(panoptic: np.ndarray, segments: Iterable[Segment], divisor: int, to_divisor: int,
             untracked: _Countdown | None = None) -> np.ndarray:
    """`panoptic` (H x W, category * divisor + instance) encoded at `to_divisor` with each thing segment's
    instance id replaced by its track id, so that one id means one object across frames; a thing whose
    track_id is None gets `untracked()` (or keeps its instance id when that is None); segments not
    listed keep theirs. Returns H x W int64."""
    instances: dict[int, int] = {}
    for segment in segments:
        if segment.isthing:
            track = segment.track_id
            instances[segment.id] = track if track is not None else (untracked() if untracked else segment.id % divisor)
    values, inverse = np.unique(panoptic, return_inverse=True)
    encoded = np.array([v // divisor * to_divisor + instances.get(v, v % divisor) for v in values.tolist()], np.int64)
    return encoded[inverse].reshape(panoptic.shape)


def _outputs(models: PanopticModels, params: FusionParams, image: np.ndarray) -> tuple:
    """One frame through the models and the three fusions (on a pool thread)."""
    (p,) = models.predict([image])
    fused, segments = fuse(p.semantic, p.masks, p.scores, p.categories, models.is_thing, params)
    divisor = params.label_divisor
    return (
        fused.cpu().numpy(), segments,
        naive_fusion(p.semantic, p.masks.dense(), p.scores, p.categories, models.is_thing, params.mask_threshold, label_divisor=divisor),
        semantic_only(p.semantic, models.is_thing, label_divisor=divisor),
    )


def ground_truth_lut(categories: tuple[Category, ...]) -> np.ndarray:
    """The synthetic ground truth's category ids -> the configured ones; UsageError if one is missing."""
    try:
        return gt_remap(CATEGORIES, categories)
    except ValueError as exc:
        raise UsageError(f"eval: {exc}") from None


def gt_remap(gt_categories: Iterable[Category], categories: Iterable[Category]) -> np.ndarray:
    """Ground-truth category id -> the configured category id of the same name."""
    by_name = {c.name: c.id for c in categories}
    gt_categories = list(gt_categories)
    missing = [c.name for c in gt_categories if c.name not in by_name]
    if missing:
        raise ValueError(f"the configured classes lack {', '.join(missing)}, which the ground truth uses")
    lut = np.zeros(max(c.id for c in gt_categories) + 1, np.int64)
    for c in gt_categories:
        lut[c.id] = by_name[c.name]
    return lut


def relabel(panoptic: np.ndarray, lut: np.ndarray, label_divisor: int) -> np.ndarray:
    return lut[panoptic // label_divisor] * label_divisor + panoptic % label_divisor
