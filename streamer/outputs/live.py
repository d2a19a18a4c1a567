"""The live view's output: each source's newest annotated frame, scaled and encoded once, for any
number of browser viewers, none of whom can slow the pipeline.

The sink thread's `LiveFeed.write` only swaps a reference into a one-frame slot (and skips frames
above `live_fps`); the feed's own thread scales the newest frame to `live_width` and encodes it as a
JPEG, once, whoever watches. Viewers read a `Broadcast`: each waits for a frame newer than the one
it has and gets the newest, so a slow or stalled viewer misses frames for itself only.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from streamer.frames import Panoptic

JPEG_QUALITY = 80


@dataclass(frozen=True)
class LiveFrame:
    """One encoded frame of the live view."""

    jpeg: bytes
    width: int
    height: int
    index: int  # the frame's position in its source
    captured_at: float  # wall clock (time.time()) when the source delivered it


class ViewersFull(Exception):
    """A source has server.max_viewers viewers already."""


class Broadcast:
    """The newest item of a stream for any number of readers, each at its own pace."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._seq = 0
        self._item: object | None = None
        self._closed = False

    def publish(self, item: object) -> None:
        with self._changed:
            self._seq += 1
            self._item = item
            self._changed.notify_all()

    def latest(self) -> tuple[int, object | None]:
        """(sequence number, item); (0, None) before the first."""
        with self._changed:
            return self._seq, self._item

    def newer(self, seen: int, timeout_s: float) -> tuple[int, object] | None:
        """The newest item once its sequence number passes `seen`; None after `timeout_s` or once closed."""
        with self._changed:
            self._changed.wait_for(lambda: self._seq > seen or self._closed, timeout_s)
            return None if self._closed or self._seq <= seen else (self._seq, self._item)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


def live_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    """(width, height) of the live view of a width x height frame: at most `max_width` wide, the
    aspect kept, both even (what H.264 encoders want)."""
    scale = min(1.0, max_width / width)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


class LiveFeed:
    """One source's live view; an Output of the sink (stage "live")."""

    stage = "live"

    def __init__(self, source_id: str, max_width: int, max_fps: float, max_viewers: int):
        self.source_id = source_id
        self.max_width = max_width
        self.min_interval_s = 1.0 / max_fps
        self.frames = Broadcast()  # LiveFrame items
        self._viewers = threading.BoundedSemaphore(max_viewers)
        self._slot: tuple[Panoptic, np.ndarray] | None = None
        self._filled = threading.Condition()
        self._last_taken = -float("inf")
        self._closed = False
        self._thread = threading.Thread(target=self._encode_loop, name=f"live-{source_id}", daemon=True)
        self._thread.start()

    def write(self, result: Panoptic, rendered: np.ndarray) -> None:
        """Sink thread: keep the frame for the encoder unless it comes sooner than live_fps allows; never waits."""
        now = time.monotonic()
        if now - self._last_taken < self.min_interval_s:
            return
        self._last_taken = now
        with self._filled:
            self._slot = (result, rendered)
            self._filled.notify()

    @contextlib.contextmanager
    def viewer(self) -> Iterator[None]:
        """Hold one of the source's viewer places while watching; ViewersFull when none is free."""
        if not self._viewers.acquire(blocking=False):
            raise ViewersFull(self.source_id)
        try:
            yield
        finally:
            self._viewers.release()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._filled:
            self._closed = True
            self._filled.notify()
        self._thread.join(timeout=5)
        self.frames.close()

    def _encode_loop(self) -> None:
        while True:
            with self._filled:
                self._filled.wait_for(lambda: self._slot is not None or self._closed)
                if self._closed:
                    return
                (result, rendered), self._slot = self._slot, None
            self.frames.publish(encode(result, rendered, self.max_width))


def encode(result: Panoptic, rendered: np.ndarray, max_width: int) -> LiveFrame:
    """The live view of one rendered frame (H x W x 3 uint8 BGR): scaled down to `max_width`, JPEG."""
    height, width = rendered.shape[:2]
    size = live_size(width, height, max_width)
    image = rendered if size == (width, height) else cv2.resize(rendered, size, interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"{result.frame.source_id}: JPEG encoding failed")
    return LiveFrame(jpeg.tobytes(), size[0], size[1], result.frame.index, result.frame.captured_at)
