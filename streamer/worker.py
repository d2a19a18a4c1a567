"""Inference thread: frames -> both models -> fusion -> Panoptic results, in frame order."""
from __future__ import annotations

import logging
import os
import queue
import time

import torch

from . import control as ctl
from .frames import Frame, Panoptic
from .fusion import FusionParams, fuse
from .models import PanopticModels

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.005  # how often an idle worker looks at the queues again


def infer(models: PanopticModels, params: FusionParams, frames: list[Frame]) -> list[Panoptic]:
    """Frames through the models in one batch, then each through the fusion rule."""
    started = time.perf_counter()
    predictions = models.predict([frame.image for frame in frames])
    inference = (time.perf_counter() - started) / len(frames)  # the batch's time, shared out
    results = []
    for frame, prediction in zip(frames, predictions):
        fusing = time.perf_counter()
        panoptic, segments = fuse(
            prediction.semantic, prediction.masks, prediction.scores, prediction.categories, models.is_thing, params
        )
        panoptic_map = panoptic.cpu().numpy()
        results.append(Panoptic(
            frame=frame,
            panoptic_map=panoptic_map,
            segments=tuple(segments),
            timings={"inference": inference, "fusion": time.perf_counter() - fusing},
        ))
    return results


Route = tuple[queue.Queue, queue.Queue]  # one source's (frames, results)


def gather(waiting: list[Route], max_batch: int) -> tuple[list[tuple[Route, Frame]], list[Route]]:
    """Up to `max_batch` queued frames, taking one per source in turn so a fast source cannot starve
    a slow one; also the sources whose END came up (their frames in the batch come first)."""
    batch: list[tuple[Route, Frame]] = []
    ended: list[Route] = []
    took = True
    while took and len(batch) < max_batch:
        took = False
        for route in waiting:
            if route in ended or len(batch) >= max_batch:
                continue
            try:
                item = route[0].get_nowait()
            except queue.Empty:
                continue
            took = True
            if item is ctl.END:
                ended.append(route)
            else:
                batch.append((route, item))
    return batch, ended


def worker_loop(
    models: PanopticModels,
    params: FusionParams,
    routes: list[Route],
    control: ctl.Control,
    max_batch: int = 1,
) -> None:
    """Serve every source's queue pair: batches of up to `max_batch` frames, results in frame order
    per source. Passes each source's END on; returns when all ended."""
    waiting = list(routes)
    hang_after = _test_hang_after()
    # Torch's thread settings are per calling thread; restating them here made inference on this
    # thread ~10 % faster on a 2-core CPU (see docs/benchmarks.md).
    torch.set_num_threads(torch.get_num_threads())
    try:
        while waiting and not control.abort.is_set():
            control.beat()
            batch, ended = gather(waiting, max_batch)
            if batch:
                now = time.monotonic()
                if hang_after is not None and any(frame.index >= hang_after for _, frame in batch):
                    _hang(control)
                for (route, frame), result in zip(batch, infer(models, params, [frame for _, frame in batch])):
                    result.timings["queue_wait"] = now - frame.captured_mono
                    if not ctl.put(route[1], result, control):
                        return
            for route in ended:
                waiting.remove(route)
                ctl.put(route[1], ctl.END, control)
            if not batch and not ended:
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
