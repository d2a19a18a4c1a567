"""The live view's output: each source's newest annotated frame, scaled and encoded once, for any
number of browser viewers, none of whom can slow the pipeline.

The sink thread's `LiveFeed.write` only swaps a reference into a one-frame slot (and skips frames
above `live_fps`); the feed's own thread scales the newest frame to `live_width` and encodes it as a
JPEG, once, whoever watches, and into H.264 fragments (streamer.outputs.fmp4) while anyone watches
the video. JPEG viewers read a `Broadcast`: each waits for a frame newer than the one it has and
gets the newest, so a slow or stalled viewer misses frames for itself only; video viewers read a
`FragmentLog` on from where they are, and one that falls behind jumps to the newest keyframe.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import cv2
import numpy as np

from streamer.frames import Panoptic
from streamer.outputs.fmp4 import H264Fragments

JPEG_QUALITY = 80
T = TypeVar("T")


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


class Broadcast(Generic[T]):
    """The newest item of a stream for any number of readers, each at its own pace."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._seq = 0
        self._item: T | None = None
        self._closed = False

    def publish(self, item: T) -> None:
        with self._changed:
            self._seq += 1
            self._item = item
            self._changed.notify_all()

    def latest(self) -> tuple[int, T | None]:
        """(sequence number, item); (0, None) before the first."""
        with self._changed:
            return self._seq, self._item

    def newer(self, seen: int, timeout_s: float) -> tuple[int, T] | None:
        """The newest item once its sequence number passes `seen`; None after `timeout_s` or once closed."""
        with self._changed:
            self._changed.wait_for(lambda: self._seq > seen or self._closed, timeout_s)
            item = self._item  # published once the sequence number is past 0
            return None if self._closed or self._seq <= seen or item is None else (self._seq, item)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


class FragmentLog:
    """One source's live H.264: its init segment and the fragments since the newest keyframe, for
    viewers that each read on from where they are. A viewer that falls behind the newest keyframe
    jumps to it; a restart (new encoder: first viewer, or a new frame size) ends every reader."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._epoch = 0
        self._init: tuple[bytes, str, float] | None = None  # (init segment, codec string, wall-clock time of media time 0)
        self._fragments: list[bytes] = []  # from the newest keyframe on
        self._first = 0  # sequence number of _fragments[0]
        self._closed = False

    def restart(self) -> None:
        with self._changed:
            self._epoch += 1
            self._init, self._first, self._fragments = None, self._first + len(self._fragments), []
            self._changed.notify_all()

    def add(self, stream: tuple[bytes, str, float], fragment: bytes, keyframe: bool) -> None:
        """`stream`: (init segment, codec string, origin: the wall-clock time of media time 0)."""
        with self._changed:
            self._init = stream
            if keyframe:
                self._first, self._fragments = self._first + len(self._fragments), []
            if self._fragments or keyframe:  # a stream starts at a keyframe
                self._fragments.append(fragment)
            self._changed.notify_all()

    def join(self, timeout_s: float) -> tuple[int, bytes, str, float, int] | None:
        """(epoch, init segment, codec, origin, sequence number of the newest keyframe) once there is one; None after timeout_s."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._fragments or self._closed, timeout_s) or self._closed:
                return None
            assert self._init is not None  # add() sets it with the first fragment
            return self._epoch, *self._init, self._first

    def read(self, epoch: int, seq: int, timeout_s: float) -> tuple[list[bytes], int] | None:
        """(fragments from `seq` on, the next seq to read): empty after `timeout_s` without news; from
        the newest keyframe when `seq` has been dropped; None once restarted or closed."""
        with self._changed:
            end = lambda: self._first + len(self._fragments)  # noqa: E731
            self._changed.wait_for(lambda: end() > seq or self._epoch != epoch or self._closed, timeout_s)
            if self._epoch != epoch or self._closed:
                return None
            seq = max(seq, self._first)
            return self._fragments[seq - self._first:], end()

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
    """One source's live view; an Output of the sink (stage "live"). `frames`: the JPEGs;
    `video`: the H.264, encoded only while someone watches it (`watching_video`)."""

    stage = "live"
    needs_picture = True

    def __init__(self, source_id: str, max_width: int, max_fps: float, max_viewers: int):
        self.source_id = source_id
        self.max_width = max_width
        self.min_interval_s = 1.0 / max_fps
        self.keyframe_every = max(1, round(max_fps))  # a joining viewer waits at most about a second's frames
        self.frames: Broadcast[LiveFrame] = Broadcast()
        self.video = FragmentLog()
        self._viewers = threading.BoundedSemaphore(max_viewers)
        self._video_viewers = 0
        self._encoder: H264Fragments | None = None
        self._slot: tuple[Panoptic, np.ndarray] | None = None
        self._filled = threading.Condition()
        self._last_taken = -float("inf")
        self._closed = False
        self._thread = threading.Thread(target=self._encode_loop, name=f"live-{source_id}", daemon=True)
        self._thread.start()

    def write(self, result: Panoptic, rendered: np.ndarray | None) -> None:
        """Sink thread: keep the frame for the encoder unless it comes sooner than live_fps allows; never waits."""
        assert rendered is not None  # needs_picture: the sink draws the overlay for it
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

    @contextlib.contextmanager
    def watching_video(self) -> Iterator[None]:
        """While held, the H.264 is encoded (the first viewer starts it, the last one's leaving stops it)."""
        with self._filled:
            self._video_viewers += 1
        try:
            yield
        finally:
            with self._filled:
                self._video_viewers -= 1

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._filled:
            self._closed = True
            self._filled.notify()
        self._thread.join(timeout=5)
        self.frames.close()
        self.video.close()

    def _encode_loop(self) -> None:
        try:
            while True:
                with self._filled:
                    self._filled.wait_for(lambda: self._slot is not None or self._closed)
                    if self._closed:
                        return
                    slot, self._slot = self._slot, None
                    assert slot is not None  # waited for it
                    result, rendered = slot
                    video = self._video_viewers > 0
                image = scaled(rendered, self.max_width)
                self.frames.publish(jpeg_frame(result, image))
                self._encode_video(image, result.frame.captured_at, video)
        finally:
            self._encode_video(None, 0.0, False)

    def _encode_video(self, image: np.ndarray | None, captured_at: float, wanted: bool) -> None:
        """The frame into the H.264 while anyone watches it; a new encoder (and stream) for a new size."""
        size = None if image is None else (image.shape[1], image.shape[0])
        if self._encoder is not None and (not wanted or self._encoder.size != size):
            self._encoder.close()
            self._encoder = None
            self.video.restart()
        if not wanted:
            return
        assert image is not None and size is not None  # wanted only with a frame
        if self._encoder is None:
            self._encoder = H264Fragments(*size, self.keyframe_every)
        for fragment, keyframe in self._encoder.encode(image, captured_at):
            self.video.add(self._encoder.stream, fragment, keyframe)


def scaled(rendered: np.ndarray, max_width: int) -> np.ndarray:
    """A rendered frame (H x W x 3 uint8 BGR) at most `max_width` wide (`live_size`)."""
    height, width = rendered.shape[:2]
    size = live_size(width, height, max_width)
    return rendered if size == (width, height) else cv2.resize(rendered, size, interpolation=cv2.INTER_AREA)


def jpeg_frame(result: Panoptic, image: np.ndarray) -> LiveFrame:
    """The live view's JPEG of one scaled frame."""
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"{result.frame.source_id}: JPEG encoding failed")
    return LiveFrame(jpeg.tobytes(), image.shape[1], image.shape[0], result.frame.index, result.frame.captured_at)
