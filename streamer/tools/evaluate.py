"""`streamer eval`: run the models over a synthetic scene and score three fusions against its ground truth.

The same model outputs feed the project's fusion, the naive overwrite loop and semantic-only, so the
difference in PQ is the fusion rule's alone.
"""
from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamer.config import Config
from streamer.errors import UsageError
from streamer.tools.pq import METHODS, PQAccumulator, PQResult, format_pq_table, gt_remap, naive_fusion, relabel, semantic_only
from streamer.outputs.export import PanopticExport
from streamer.frames import Frame, Panoptic
from streamer.inference.fusion import FusionParams, fuse
from streamer.inference.models import PanopticModels, resolve_device
from streamer.service.build import fusion_params
from streamer.inputs.sources import classify, open_source
from streamer.inputs.synthetic import CATEGORIES
from streamer.inference.worker import load_models

log = logging.getLogger(__name__)


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
    categories = config.categories()
    try:
        lut = gt_remap(CATEGORIES, categories)
    except ValueError as exc:
        raise UsageError(f"eval: {exc}") from None
    device = resolve_device(config.runtime.device)
    pool, models = load_models(config, device)
    try:
        params = fusion_params(config)
        return _score(reader, lambda image: pool.submit(_outputs, models, params, image), pool.size,
                      categories, lut, uri, str(device), params.label_divisor, export_dir)
    finally:
        pool.close()


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


def _score(reader, submit, parallel: int, categories, lut, uri: str, device: str, divisor: int, export_dir: str | None) -> EvalReport:
    """Every frame of `reader` scored in frame order, `parallel` of them in the models at once."""
    scores = {method: PQAccumulator(categories, divisor) for method in METHODS}
    export = PanopticExport(export_dir, categories) if export_dir else None
    started = time.monotonic()
    in_flight: collections.deque = collections.deque()
    index = 0
    try:
        while True:
            while len(in_flight) < parallel and (scene := reader.read_frame()) is not None:
                in_flight.append((scene, submit(scene.image)))
            if not in_flight:
                break
            scene, outputs = in_flight.popleft()
            fused, segments, naive, semantic = outputs.result()
            truth = relabel(scene.panoptic, lut, divisor)
            for method, prediction in zip(METHODS, (fused, naive, semantic)):
                scores[method].add(prediction, truth)
            if export is not None:
                frame = Frame("synthetic", index, scene.image, index * 1000.0 / reader.fps, time.time(), time.monotonic())
                export.write(Panoptic(frame, fused, tuple(segments)), scene.image)
            index += 1
            if index % 50 == 0:
                log.info("eval: %d/%d frames", index, reader.frame_count)
    finally:
        if export is not None:
            export.close()
    return EvalReport(uri, device, time.monotonic() - started, {m: a.result() for m, a in scores.items()})
