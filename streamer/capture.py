"""Capture thread: read a source into a bounded queue under its buffer policy."""
from __future__ import annotations

import logging
import queue
import time

from . import control as ctl
from .frames import Frame
from .sources import Reader

log = logging.getLogger(__name__)


def effective_policy(policy: str, live: bool) -> str:
    """`auto` never drops from files and keeps live sources fresh."""
    if policy != "auto":
        return policy
    return "drop_oldest" if live else "block"


def offer(frames: queue.Queue, frame: Frame, policy: str, control: ctl.Control, stats: ctl.Stats) -> bool:
    """Queue a frame under the policy; False only when the pipeline aborts.

    block: wait for room. drop_oldest: make room by dropping the oldest queued frame.
    latest: drop everything queued, keep only this frame.
    """
    if policy == "block":
        return ctl.put(frames, frame, control)
    while True:
        if policy == "latest":
            _drop_all(frames, stats, "latest")
        try:
            frames.put_nowait(frame)
            return True
        except queue.Full:
            _drop_one(frames, stats, "queue_full")


def _drop_one(frames: queue.Queue, stats: ctl.Stats, cause: str) -> None:
    try:
        frames.get_nowait()
        stats.dropped[cause] += 1
    except queue.Empty:
        pass


def _drop_all(frames: queue.Queue, stats: ctl.Stats, cause: str) -> None:
    while not frames.empty():
        _drop_one(frames, stats, cause)


def capture_loop(
    reader: Reader,
    source_id: str,
    frames: queue.Queue,
    policy: str,
    control: ctl.Control,
    stats: ctl.Stats,
    max_frames: int | None = None,
) -> None:
    """Read until the source ends, max_frames, a stop or an abort; always ends with END."""
    try:
        while not control.stop.is_set() and not control.abort.is_set():
            if max_frames is not None and stats.read >= max_frames:
                break
            item = reader.read()
            if item is None:
                log.info("%s: end of stream after %d frames", reader.description, stats.read)
                break
            image, pts_ms = item
            frame = Frame(source_id, stats.read, image, pts_ms, time.time(), time.monotonic())
            stats.read += 1
            if not offer(frames, frame, policy, control, stats):
                break
    except Exception as exc:  # noqa: BLE001 - the run fails, but the frames already read are finished
        control.fail("capture", exc, abort=False)
    finally:
        reader.close()
        ctl.put(frames, ctl.END, control)
