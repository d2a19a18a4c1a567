"""The sink thread: render each result once and hand it to every output, in frame order.

An output is anything with the `Output` protocol: the video of recording.py, the COCO panoptic
export of export.py, the window of display.py.
"""
from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from streamer import control as ctl
from streamer.frames import Panoptic

log = logging.getLogger(__name__)


class Output(Protocol):
    """What the sink thread feeds: `write` per result in frame order; `close` once at the end (by
    `sink_loop`'s `finish` when its source ends, else by whoever made it)."""

    stage: str  # the name its time per frame is recorded under (the streamer_stage_seconds label)
    needs_picture: bool  # whether `write` reads `rendered`: the overlay is drawn only when some output does

    def write(self, result: Panoptic, rendered: np.ndarray | None) -> None:
        """`rendered`: the overlay, H x W x 3 uint8 BGR (None when no output of the source needs
        a picture); `result` the frame and its segmentation."""

    def close(self) -> None:
        """Finish and release; called once, also after a failure."""


def sink_loop(
    results: queue.Queue, outputs: list[Output], render: Callable[[Panoptic], np.ndarray] | None, control: ctl.Control,
    stats: ctl.Stats, observe: Callable[[Panoptic, dict[str, float]], None] | None = None,
    finish: Callable[[], None] | None = None,
) -> None:
    """Render each result once (when `render` is given) and hand it to every output, then to `observe`
    with the seconds of every stage (the worker's, then render and each output's under its `stage` name).
    `finish` (the outputs' closing) is called when the source ends, always: a camera that gave up
    has its recording finished while the other sources go on."""
    try:
        while True:
            result = ctl.get(results, control)
            if result is None or result is ctl.END:
                break
            timings = dict(result.timings)  # the worker's are read only; this thread's go in a copy
            rendered = None
            if render is not None:
                started = time.perf_counter()
                rendered = render(result)
                timings["render"] = time.perf_counter() - started
            for output in outputs:
                started = time.perf_counter()
                output.write(result, rendered)
                timings[output.stage] = time.perf_counter() - started
            stats.processed += 1
            stats.counts = result.counts or stats.counts
            if result.capped:
                stats.capped += 1
                if stats.capped == 1:
                    log.warning("%s: frame %d has as many detections as models.instance.detections_per_image allows; there may "
                                "have been more (streamer_detections_capped_frames_total counts such frames)",
                                result.frame.source_id, result.frame.index)
            if observe:
                observe(result, timings)
            stats.latencies.append(time.monotonic() - result.frame.captured_mono)
            stats.model_times.append(timings.get("inference", 0.0) + timings.get("fusion", 0.0))
    except Exception as exc:  # noqa: BLE001
        control.fail("sink", exc)
    finally:
        if finish:
            finish()
        control.done()


def close_outputs(outputs: list[Output], control: ctl.Control) -> None:
    """Close every output in turn; a failure to close one fails the run and the others are still closed."""
    for output in outputs:
        try:
            output.close()
        except Exception as exc:  # noqa: BLE001
            control.fail("sink", exc)
