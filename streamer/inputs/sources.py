"""Source URIs -> frame readers: camera, video file, image folder or glob, RTSP/HTTP stream, synthetic.

A reader yields (image, pts_ms) pairs and says whether it is live. Opening checks what can be
checked up front so bad input fails with one line before any model is loaded.
"""
from __future__ import annotations

import glob
import logging
import math
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np

from streamer.errors import InputNotFound, StreamerError, UsageError
from streamer.inputs.images import IMAGE_SUFFIXES, ImageFilesReader, visible_images
from streamer.uris import redact_uri

log = logging.getLogger(__name__)

VIDEO_HINTS = {".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm", ".ts", ".mts"}  # for a hint only: FFmpeg reads more
STREAM_SCHEMES = {"rtsp", "rtsps", "http", "https"}
DEFAULT_FPS = 25.0


class Reader(Protocol):
    description: str  # safe to log (credentials removed)
    live: bool
    fps: float

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


@dataclass(frozen=True)
class LiveOptions:
    """How network streams are opened (defaults and meanings: `source:` in streamer.config)."""

    open_timeout_s: float
    read_timeout_s: float
    rtsp_transport: str  # tcp | udp


_FFMPEG_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_ffmpeg_env_lock = threading.Lock()  # OpenCV reads that variable (process-wide) when a capture opens


def open_stream(uri: str, options: LiveOptions) -> cv2.VideoCapture:
    """An FFmpeg-backend capture with explicit open/read timeouts and this stream's RTSP transport."""
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(options.open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(options.read_timeout_s * 1000),
    ]
    with _ffmpeg_env_lock:
        previous = os.environ.get(_FFMPEG_OPTIONS)
        if urlsplit(uri).scheme.lower() in ("rtsp", "rtsps"):
            os.environ[_FFMPEG_OPTIONS] = f"rtsp_transport;{options.rtsp_transport}"
        try:
            return cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)
        finally:
            if previous is None:
                os.environ.pop(_FFMPEG_OPTIONS, None)
            else:
                os.environ[_FFMPEG_OPTIONS] = previous


@dataclass(frozen=True)
class SourceKind:
    kind: str  # camera | file | images | stream | synthetic
    target: str | int


def classify(uri: str) -> SourceKind:
    """What kind of source a URI names. Raises UsageError for an unknown scheme."""
    if uri.isdigit():
        return SourceKind("camera", int(uri))
    if re.fullmatch(r"/dev/video\d+", uri):
        return SourceKind("camera", uri)
    if uri.startswith("synthetic:"):
        return SourceKind("synthetic", uri)
    scheme = urlsplit(uri).scheme.lower()
    if "://" in uri:
        if scheme in STREAM_SCHEMES:
            return SourceKind("stream", uri)
        if scheme == "file":  # file:///home/me/clip%20%5B1080p%5D.mp4 (RFC 8089), as file managers copy it
            parts = urlsplit(uri)
            if parts.netloc not in ("", "localhost"):
                raise UsageError(f"{uri}: a file:// URL of another host ({parts.netloc}); mount it and give the path")
            return classify(unquote(parts.path))
        raise UsageError(
            f"{redact_uri(uri)}: unknown source scheme '{scheme}'; use a camera index, /dev/videoN, a file, "
            "a folder or glob of images, rtsp(s)://, http(s):// or synthetic:street"
        )
    if Path(uri).is_dir():
        return SourceKind("images", uri)
    if Path(uri).exists():  # whatever characters the name holds: "clip [1080p].mp4" is a file
        return SourceKind("file", uri)
    if any(ch in uri for ch in "*?["):
        return SourceKind("images", uri)
    return SourceKind("file", uri)


def open_source(uri: str, fps: float | None = None, live: LiveOptions | None = None, *, force_live: bool | None = None,
                skip_bad: bool = True, shown: str | None = None) -> Reader:
    """Open a source for reading; `live` says how to open a network stream (required for one).
    An http(s) URL serving a finite file (FFmpeg knows its length) reads as a file, every frame, to
    its end; other streams are live; `force_live` overrides that guess. `skip_bad`: an undecodable
    image of a folder is skipped (else it ends the run).
    Raises InputNotFound (66), UsageError (2) or StreamerError (1)."""
    source = classify(uri)
    description = shown or redact_uri(uri)  # `shown`: the uri as written (config.Source.shown)
    if source.kind == "camera":
        require_device(uri)
        backend = cv2.CAP_V4L2 if isinstance(source.target, str) else cv2.CAP_ANY
        capture = cv2.VideoCapture(source.target, backend)
        if not capture.isOpened():
            raise InputNotFound(f"camera {uri}: cannot be opened; check that it is connected and not in use")
        return CaptureReader(capture, f"camera {uri}", live=True, fps_override=fps)
    if source.kind == "stream":
        if live is None:
            raise ValueError(f"{description}: a network stream needs LiveOptions")
        capture = open_stream(uri, live)
        if not capture.isOpened():
            from streamer.inputs.diagnosis import open_failure

            raise open_failure(uri, description, live.open_timeout_s, live.read_timeout_s, live.rtsp_transport)
        finite = may_be_finite(uri) and capture.get(cv2.CAP_PROP_FRAME_COUNT) > 0
        return CaptureReader(capture, description, live=not finite if force_live is None else force_live, fps_override=fps)
    if source.kind == "images":
        return _open_images(str(source.target), fps, skip_bad)
    if source.kind == "synthetic":
        from streamer.inputs.synthetic import SyntheticReader

        try:
            return SyntheticReader(uri, fps)
        except ValueError as exc:
            raise UsageError(f"{uri}: {exc}") from None
    return _open_file(Path(str(source.target)), fps)


def _open_file(path: Path, fps: float | None) -> Reader:
    if not path.exists():
        raise InputNotFound(f"{path}: no such file; check the path given as source")
    if not path.is_file():
        raise InputNotFound(f"{path}: not a regular file")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageFilesReader([path], str(path), fps or DEFAULT_FPS)
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise StreamerError(f"{path}: not a readable video (FFmpeg cannot open it)")
    reader = CaptureReader(capture, str(path), live=False, fps_override=fps)
    if not reader.peek():
        reader.close()
        raise StreamerError(f"{path}: not a readable video (no frame could be decoded)")
    return reader


def _open_images(target: str, fps: float | None, skip_bad: bool) -> Reader:
    candidates = Path(target).iterdir() if Path(target).is_dir() else (Path(p) for p in glob.glob(target))
    paths = visible_images(candidates)
    if not paths:
        videos = Path(target).is_dir() and any(p.suffix.lower() in VIDEO_HINTS for p in Path(target).iterdir())
        raise InputNotFound(f"{target}: no image files found ({', '.join(sorted(IMAGE_SUFFIXES))})"
                            + ("; it holds videos: give one of them as the source" if videos else ""))
    return ImageFilesReader(paths, target, fps or DEFAULT_FPS, skip_bad)


def require_device(uri: str) -> None:
    """For a camera source: its device node exists (/dev/videoN as given, or for an index N on
    Linux /dev/videoN, where OpenCV's V4L2 backend looks), else InputNotFound. Other kinds pass."""
    source = classify(uri)
    if source.kind != "camera":
        return
    if isinstance(source.target, str):
        device = Path(source.target)
    elif sys.platform.startswith("linux"):
        device = Path(f"/dev/video{source.target}")
    else:
        return
    if not device.exists():
        raise InputNotFound(f"camera {uri}: no such device ({device})")


def is_live(uri: str) -> bool:
    """Cameras and network streams are live: they can stall, drop and come back. (An http(s) URL
    may turn out to serve a finite file: open_source tells.)"""
    return classify(uri).kind in ("camera", "stream")


def local_file(uri: str) -> Path | None:
    """The file a file source reads (a video or one image), None for other kinds."""
    source = classify(uri)
    return Path(str(source.target)) if source.kind == "file" else None


def may_be_finite(uri: str) -> bool:
    """An http(s) URL: a camera's stream or a file on a web server, known once opened."""
    return classify(uri).kind == "stream" and urlsplit(uri).scheme.lower() in ("http", "https")
