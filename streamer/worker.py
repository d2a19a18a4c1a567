"""Inference thread: frames -> both models -> fusion -> Panoptic results, in frame order."""
from __future__ import annotations

import logging
import os
import queue
import time

from . import control as ctl
from .frames import Frame, Panoptic
from .fusion import FusionParams, fuse
from .models import PanopticModels

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.005  # how often an idle worker looks at the queues again


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
    routes: list[tuple[queue.Queue, queue.Queue]],
    control: ctl.Control,
) -> None:
    """Serve every source's (frames, results) queue pair in turn, one frame each per round, so a
    fast source cannot starve a slow one. Passes each source's END on; returns when all ended."""
    waiting = list(routes)
    hang_after = _test_hang_after()
    try:
        while waiting and not control.abort.is_set():
            control.beat()
            served = False
            for route in list(waiting):
                frames, results = route
                try:
                    frame = frames.get_nowait()
                except queue.Empty:
                    continue
                served = True
                if frame is ctl.END:
                    waiting.remove(route)
                    ctl.put(results, ctl.END, control)
                    continue
                waited = time.monotonic() - frame.captured_mono
                if hang_after is not None and frame.index >= hang_after:
                    _hang(control)
                result = infer(models, params, frame)
                result.timings["queue_wait"] = waited
                if not ctl.put(results, result, control):
                    return
            if not served:
                time.sleep(IDLE_POLL_S)
    except Exception as exc:  # noqa: BLE001
        control.fail("worker", exc)
    finally:
        for _, results in waiting:
            ctl.put(results, ctl.END, control)
        control.done()


def _test_hang_after() -> int | None:
    """Test hook: STREAMER_TEST_HANG_WORKER_AFTER=N makes the worker hang at frame N (watchdog tests)."""
    value = os.environ.get("STREAMER_TEST_HANG_WORKER_AFTER", "")
    return int(value) if value.isdigit() else None


def _hang(control: ctl.Control) -> None:
    log.warning("test hook: the worker hangs now")
    while not control.abort.is_set():  # no beats: looks exactly like a call that never returns
        time.sleep(0.1)
