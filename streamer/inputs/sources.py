"""Parsed sources (inputs.spec) -> frame readers: camera, video file, image folder or glob,
RTSP/HTTP stream, synthetic; one opener per kind (OPENERS).

A reader yields (image, pts_ms) pairs and says whether it is live. Opening checks what can be
checked up front so bad input fails with one line before any model is loaded.
"""
from __future__ import annotations

import glob
import logging
import math
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from streamer.errors import InputNotFound, StreamerError
from streamer.inputs.images import IMAGE_SUFFIXES, ImageFilesReader, visible_images
from streamer.inputs.spec import Kind, LiveOptions, SourceSpec, parse_source
from streamer.logs import shown_name

log = logging.getLogger(__name__)

VIDEO_HINTS = {".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm", ".ts", ".mts"}  # for a hint only: FFmpeg reads more
DEFAULT_FPS = 25.0


class Reader(Protocol):
    description: str  # safe to log (credentials removed)
    live: bool
    fps: float
    frame_count: int | None  # frames the source will give, None when unknown (live, or not said)

    def read(self) -> tuple[np.ndarray, float] | None:
        """Next (BGR image, pts in ms), or None when the source has ended. A live source's pts is
        NaN when the stream gives none."""

    def close(self) -> None: ...


class CaptureReader:
    """A cv2.VideoCapture over the FFmpeg (or V4L2) backend."""

    def __init__(self, capture: cv2.VideoCapture, description: str, live: bool, fps_override: float | None):
        self._capture = capture
        self.description = description
        self.live = live
        self._fixed_rate = fps_override is not None  # source.fps set: frame N is at N / fps, whatever the container says
        reported = capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps_override or (reported if reported and math.isfinite(reported) and 0 < reported < 1000 else DEFAULT_FPS)
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if not live and count and math.isfinite(count) and count > 0 else None
        self._last_pts = -math.inf
        self._count = 0
        self._said_short = False
        self._peeked: tuple[np.ndarray, float] | None = None

    def peek(self) -> bool:
        """Decode the first frame now, so an undecodable input fails at open time; False if none."""
        self._peeked = self.read()
        return self._peeked is not None

    def read(self) -> tuple[np.ndarray, float] | None:
        if self._peeked is not None:
            frame, self._peeked = self._peeked, None
            return frame
        ok, image = self._capture.read()
        if not ok or image is None:
            self._warn_if_short()
            return None
        pts = self._capture.get(cv2.CAP_PROP_POS_MSEC)
        if self._fixed_rate or not math.isfinite(pts) or pts < 0 or (pts <= self._last_pts and self._count):
            # no usable timestamp: a file's is derived from the rate; a live source's frame is
            # stamped by its arrival (inputs.clock, which also tells real PTS from invented ones)
            pts = math.nan if self.live and not self._fixed_rate else self._count * 1000.0 / self.fps
        if math.isfinite(pts):
            self._last_pts = pts
        self._count += 1
        return image, pts

    def _warn_if_short(self) -> None:
        """At the end of a file: say so when it held fewer frames than its container announced (a
        file cut off while being written or copied). One frame short is within how containers count."""
        if self.frame_count is not None and self._count < self.frame_count - 1 and not self._said_short:
            self._said_short = True
            log.warning("%s: ended after %d of the %d frames its container announces (the file is truncated or damaged)",
                        self.description, self._count, self.frame_count)

    def close(self) -> None:
        self._capture.release()


_FFMPEG_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_ffmpeg_env_lock = threading.Lock()  # OpenCV reads that variable (process-wide) when a capture opens


def open_stream(spec: SourceSpec, options: LiveOptions) -> cv2.VideoCapture:
    """An FFmpeg-backend capture with explicit open/read timeouts and this stream's RTSP transport."""
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(options.open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(options.read_timeout_s * 1000),
    ]
    with _ffmpeg_env_lock:
        previous = os.environ.get(_FFMPEG_OPTIONS)
        if spec.rtsp:
            os.environ[_FFMPEG_OPTIONS] = f"rtsp_transport;{options.rtsp_transport}"
        try:
            return cv2.VideoCapture(str(spec.location), cv2.CAP_FFMPEG, params)
        finally:
            if previous is None:
                os.environ.pop(_FFMPEG_OPTIONS, None)
            else:
                os.environ[_FFMPEG_OPTIONS] = previous


@dataclass(frozen=True)
class Opening:
    """How to open a source: `fps` overrides the source's rate; `live` says how to open a network
    stream (required for one); `force_live` overrides the guess that an http(s) URL of a finite file
    is not live; `skip_bad`: an undecodable image of a folder is skipped (else it ends the run)."""

    fps: float | None = None
    live: LiveOptions | None = None
    force_live: bool | None = None
    skip_bad: bool = True


def open_source(source: SourceSpec | str, fps: float | None = None, live: LiveOptions | None = None, *,
                force_live: bool | None = None, skip_bad: bool = True) -> Reader:
    """Open a source (a parsed spec, or a URI parsed here) for reading through its kind's opener.
    Raises InputNotFound (66), UsageError (2) or StreamerError (1)."""
    spec = parse_source(source) if isinstance(source, str) else source
    return OPENERS[spec.kind](spec, Opening(fps, live, force_live, skip_bad))


def _open_camera(spec: SourceSpec, opening: Opening) -> Reader:
    require_device(spec)
    backend = cv2.CAP_V4L2 if isinstance(spec.location, str) else cv2.CAP_ANY
    capture = cv2.VideoCapture(spec.location, backend)
    if not capture.isOpened():
        raise InputNotFound(f"camera {spec.location}: cannot be opened; check that it is connected and not in use")
    return CaptureReader(capture, f"camera {spec.location}", live=True, fps_override=opening.fps)


def _open_stream(spec: SourceSpec, opening: Opening) -> Reader:
    """An http(s) URL serving a finite file (FFmpeg knows its length) reads as a file, every frame,
    to its end; other streams are live."""
    if opening.live is None:
        raise ValueError(f"{spec.shown}: a network stream needs LiveOptions")
    capture = open_stream(spec, opening.live)
    if not capture.isOpened():
        from streamer.inputs.diagnosis import open_failure

        raise open_failure(spec, opening.live)
    finite = spec.may_be_finite and capture.get(cv2.CAP_PROP_FRAME_COUNT) > 0
    live = not finite if opening.force_live is None else opening.force_live
    return CaptureReader(capture, spec.shown, live=live, fps_override=opening.fps)


def _open_synthetic(spec: SourceSpec, opening: Opening) -> Reader:
    from streamer.inputs.synthetic import SyntheticReader

    return SyntheticReader(spec.options, spec.shown, opening.fps)


def _open_file(spec: SourceSpec, opening: Opening) -> Reader:
    path = Path(str(spec.location))
    shown = shown_name(path)
    if not path.exists():
        raise InputNotFound(f"{shown}: no such file; check the path given as source")
    if not path.is_file():
        raise InputNotFound(f"{shown}: not a regular file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFilesReader([path], shown, opening.fps or DEFAULT_FPS)
    capture = capture_file(path)
    if not capture.isOpened():
        raise StreamerError(f"{shown}: not a readable video (FFmpeg cannot open it)")
    reader = CaptureReader(capture, shown, live=False, fps_override=opening.fps)
    if not reader.peek():
        reader.close()
        raise StreamerError(f"{shown}: not a readable video (no frame could be decoded)")
    return reader


def opencv_can_take(text: str) -> bool:
    """OpenCV takes a name or URL as UTF-8 text and crashes the process (SIGSEGV) on one that is not:
    a name whose bytes are not UTF-8 (Python holds them as surrogate escapes) must not reach it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def capture_file(path: Path) -> cv2.VideoCapture:
    """An FFmpeg capture of the video file `path`, whatever its name: one OpenCV cannot take
    (opencv_can_take) is opened here and handed over as /proc/self/fd/N, a name it can; FFmpeg opens
    its own descriptor of the same file, so ours is closed once it has. OSError when it cannot be
    read or where no such name exists (not Linux)."""
    if opencv_can_take(str(path)):
        return cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise StreamerError(f"{shown_name(path)}: cannot be read ({exc.strerror})") from None
    try:
        proxy = f"/proc/self/fd/{descriptor}"
        if not os.path.exists(proxy):
            raise StreamerError(f"{shown_name(path)}: OpenCV cannot open a name that is not UTF-8 on this system; rename the file")
        return cv2.VideoCapture(proxy, cv2.CAP_FFMPEG)
    finally:
        os.close(descriptor)


def _open_images(spec: SourceSpec, opening: Opening) -> Reader:
    target = str(spec.location)
    candidates = Path(target).iterdir() if Path(target).is_dir() else (Path(p) for p in glob.glob(target))
    paths = visible_images(candidates)
    if not paths:
        videos = Path(target).is_dir() and any(p.suffix.lower() in VIDEO_HINTS for p in Path(target).iterdir())
        raise InputNotFound(f"{shown_name(target)}: no image files found ({', '.join(sorted(IMAGE_SUFFIXES))})"
                            + ("; it holds videos: give one of them as the source" if videos else ""))
    return ImageFilesReader(paths, shown_name(target), opening.fps or DEFAULT_FPS, opening.skip_bad)


OPENERS: dict[Kind, Callable[[SourceSpec, Opening], Reader]] = {
    "camera": _open_camera,
    "stream": _open_stream,
    "synthetic": _open_synthetic,
    "file": _open_file,
    "images": _open_images,
}


def require_device(spec: SourceSpec) -> None:
    """For a camera source on Linux: its device node exists, else InputNotFound. Other kinds pass."""
    device = spec.device
    if device is None or (isinstance(spec.location, int) and not sys.platform.startswith("linux")):
        return
    if not device.exists():
        raise InputNotFound(f"camera {spec.location}: no such device ({device})")
