"""`streamer eval`: run the models over a synthetic scene and score three fusions against its ground truth.

The same model outputs feed the project's fusion, the naive overwrite loop and semantic-only, so the
difference in PQ is the fusion rule's alone.
"""
from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamer.config import Config
from streamer.errors import UsageError
from streamer.frames import LABEL_DIVISOR, Category, Frame, Panoptic
from streamer.inference.fusion import FusionParams, fuse
from streamer.inference.models import PanopticModels, resolve_device
from streamer.inference.worker import InferencePool, load_models
from streamer.inputs.sources import classify, open_source
from streamer.inputs.synthetic import CATEGORIES, SceneFrame
from streamer.outputs.export import PanopticExport
from streamer.service.build import fusion_params
from streamer.tools.baselines import naive_fusion, semantic_only
from streamer.tools.pq import PQAccumulator, PQResult, format_pq_table

log = logging.getLogger(__name__)

METHODS = ("fused", "naive", "semantic_only")


@dataclass(frozen=True)
class EvalReport:
    source: str
    device: str
    seconds: float
    results: dict[str, PQResult]  # method -> PQ

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "device": self.device,
            "seconds": round(self.seconds, 1),
            **{method: result.to_dict() for method, result in self.results.items()},
        }

    def text(self) -> str:
        parts = [f"PQ on {self.source} ({self.device}, {self.seconds:.0f} s)"]
        for method, result in self.results.items():
            parts += ["", f"[{method}]", format_pq_table(result)]
        parts += ["", "summary (PQ all / things / stuff, %):"]
        for method, result in self.results.items():
            groups = (result.all, result.things, result.stuff)
            parts.append(f"  {method:<14}" + " / ".join("-" if g.pq is None else f"{100 * g.pq:.1f}" for g in groups))
        return "\n".join(parts)


def evaluate_synthetic(config: Config, uri: str, export_dir: str | None = None) -> EvalReport:
    """Score the configured models on `uri`, a synthetic scene (it carries ground truth)."""
    if classify(uri).kind != "synthetic":
        raise UsageError(f"eval: {uri}: needs a synthetic:street?... source, which carries ground truth")
    reader = open_source(uri)
    if reader.frame_count is None:
        raise UsageError(f"eval: {uri}: give a frame count, e.g. &frames=300")
    ground_truth_lut(config.categories())  # a class missing: fail before the models load
    device = resolve_device(config.runtime.device)
    export = PanopticExport(export_dir, config.categories(), overwrite=config.output.overwrite) if export_dir else None
    pool, models = load_models(config, device)
    started = time.monotonic()
    try:
        scenes = iter(reader.read_frame, None)
        results = score(scenes, pool, models, fusion_params(config), config.categories(), export, reader.fps)
    finally:
        pool.close()
    return EvalReport(uri, str(device), time.monotonic() - started, results)


def score(
    scenes: Iterable[SceneFrame], pool: InferencePool, models: PanopticModels, params: FusionParams,
    categories: tuple[Category, ...], export: PanopticExport | None = None, fps: float = 1.0,
) -> dict[str, PQResult]:
    """PQ of the three fusions (METHODS) over synthetic frames with their ground truth, scored in
    order, `pool.size` frames in the models at once; the fused predictions also go to `export`
    (frame i at i / fps seconds). Raises UsageError when the classes lack one the ground truth has."""
    lut = ground_truth_lut(categories)
    divisor = params.label_divisor
    scores = {method: PQAccumulator(categories, divisor) for method in METHODS}
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
            fused, segments, naive, semantic = outputs.result()
            truth = relabel(scene.panoptic, lut, divisor)
            for method, prediction in zip(METHODS, (fused, naive, semantic)):
                scores[method].add(prediction, truth)
            if export is not None:
                frame = Frame("synthetic", index, scene.image, index * 1000.0 / fps, time.time(), time.monotonic())
                export.write(Panoptic(frame, fused, tuple(segments)), scene.image)
            index += 1
            if index % 50 == 0:
                log.info("eval: %d frames scored", index)
    finally:
        if export is not None:
            export.close()
    return {method: accumulator.result() for method, accumulator in scores.items()}


def _outputs(models: PanopticModels, params: FusionParams, image: np.ndarray) -> tuple:
    """One frame through the models and the three fusions (on a pool thread)."""
    (p,) = models.predict([image])
    fused, segments = fuse(p.semantic, p.masks, p.scores, p.categories, models.is_thing, params)
    divisor = params.label_divisor
    return (
        fused.cpu().numpy(), segments,
        naive_fusion(p.semantic, p.masks, p.scores, p.categories, models.is_thing, label_divisor=divisor),
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


def relabel(panoptic: np.ndarray, lut: np.ndarray, label_divisor: int = LABEL_DIVISOR) -> np.ndarray:
    return lut[panoptic // label_divisor] * label_divisor + panoptic % label_divisor
