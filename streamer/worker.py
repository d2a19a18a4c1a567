"""Inference thread: frames -> both models -> fusion -> Panoptic results, in frame order."""
from __future__ import annotations

import queue
import time

from . import control as ctl
from .frames import Frame, Panoptic
from .fusion import FusionParams, fuse
from .models import PanopticModels


def infer(models: PanopticModels, params: FusionParams, frame: Frame) -> Panoptic:
    """One frame through the models and the fusion rule."""
    started = time.perf_counter()
    (prediction,) = models.predict([frame.image])
    inferred = time.perf_counter()
    panoptic, segments = fuse(
        prediction.semantic, prediction.masks, prediction.scores, prediction.categories, models.is_thing, params
    )
    panoptic_map = panoptic.cpu().numpy()
    fused = time.perf_counter()
    return Panoptic(
        frame=frame,
        panoptic_map=panoptic_map,
        segments=tuple(segments),
        timings={"inference": inferred - started, "fusion": fused - inferred},
    )


def worker_loop(
    models: PanopticModels,
    params: FusionParams,
    frames: queue.Queue,
    results: queue.Queue,
    control: ctl.Control,
) -> None:
    """Process frames until END (which it passes on) or an abort."""
    try:
        while True:
            frame = ctl.get(frames, control)
            if frame is None or frame is ctl.END:
                break
            waited = time.monotonic() - frame.captured_mono
            result = infer(models, params, frame)
            result.timings["queue_wait"] = waited
            if not ctl.put(results, result, control):
                break
    except Exception as exc:  # noqa: BLE001
        control.fail("worker", exc)
    finally:
        ctl.put(results, ctl.END, control)
