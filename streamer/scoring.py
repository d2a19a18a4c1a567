"""`streamer eval`: run the models over a synthetic scene and score three fusions against its ground truth.

The same model outputs feed the project's fusion, the naive overwrite loop and semantic-only, so the
difference in PQ is the fusion rule's alone.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from .config import Config
from .errors import UsageError
from .evaluate import METHODS, PQAccumulator, PQResult, format_pq_table, gt_remap, naive_fusion, relabel, semantic_only
from .export import PanopticExport
from .frames import Frame, Panoptic
from .fusion import fuse
from .models import PanopticModels, resolve_device
from .pipeline import fusion_params
from .sources import classify, open_source
from .synthetic import CATEGORIES

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
    models = PanopticModels(config.models, categories, device, config.runtime.half)
    params = fusion_params(config)
    divisor = params.label_divisor
    scores = {method: PQAccumulator(categories, divisor) for method in METHODS}
    export = PanopticExport(export_dir, categories) if export_dir else None
    started = time.monotonic()
    try:
        index = 0
        while (scene := reader.read_frame()) is not None:
            (p,) = models.predict([scene.image])
            truth = relabel(scene.panoptic, lut, divisor)
            fused, segments = fuse(p.semantic, p.masks, p.scores, p.categories, models.is_thing, params)
            fused = fused.cpu().numpy()
            scores["fused"].add(fused, truth)
            scores["naive"].add(naive_fusion(p.semantic, p.masks, p.scores, p.categories, models.is_thing, label_divisor=divisor), truth)
            scores["semantic_only"].add(semantic_only(p.semantic, models.is_thing, label_divisor=divisor), truth)
            if export is not None:
                frame = Frame("synthetic", index, scene.image, index * 1000.0 / reader.fps, time.time(), time.monotonic())
                export.write(Panoptic(frame, fused, tuple(segments)), scene.image)
            index += 1
            if index % 50 == 0:
                log.info("eval: %d/%d frames", index, reader.frame_count)
    finally:
        if export is not None:
            export.close()
    return EvalReport(uri, str(device), time.monotonic() - started, {m: a.result() for m, a in scores.items()})
