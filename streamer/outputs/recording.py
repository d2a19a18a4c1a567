"""Crash-safe recording: H.264 in fragmented MP4, cut into segments named by their start time.

Every file is written as `NAME.partial` and renamed once closed. Fragments reach the disk at least
every files.FRAGMENT_S, so a SIGKILL or a power cut loses only the last moments. A write that fails
(a full disk, an I/O error) ends the run with WriteFailed and leaves the `.partial` as it is. At
start-up, leftovers are recovered first (recovery.py); retention (retention.py) keeps the folder in
bounds.
"""
from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from fractions import Fraction
from glob import escape as glob_escape
from pathlib import Path

import av
import av.container
import av.logging
import av.video.stream
import cv2
import numpy as np

from streamer.errors import CannotCreate, WriteFailed
from streamer.frames import Panoptic
from streamer.outputs import preflight
from streamer.outputs.files import PARTIAL, DiskFile, close_mp4, finish, make_folder, open_mp4, partial_path
from streamer.outputs.recovery import RECOVERING, recover_partial, recover_partials, remove_scratch
from streamer.outputs.retention import TAG, Catalog, Moment, Record, Retention, enforce_retention, make_room

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90000)  # fine enough that 29.97 fps timestamps stay exact
KEYFRAME_S = 2.0  # a keyframe at least this often
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"  # segment names: UTC start time, sortable


class VideoOutput:
    """One H.264 fragmented MP4, written as `NAME.partial` beside the target and renamed once closed.

    Opened on the first frame (its size is the video's size); timestamps are the frames' own PTS
    from the first frame on, forced strictly increasing.
    """

    stage = "encode"
    needs_picture = True

    def __init__(self, path: str | Path, fps: float, encoder_options: dict[str, str] | None = None,
                 metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.metadata = metadata or {}  # MP4 tags, written in the header
        self.partial = partial_path(self.path)
        self.fps = fps
        # A short lookahead keeps few frames inside the encoder, where a kill would lose them.
        self.options = encoder_options or {"preset": "veryfast", "crf": "23", "x264-params": "rc-lookahead=5:sync-lookahead=0"}
        self.frames = 0
        self.first_pts_ms: float | None = None
        self._file: DiskFile | None = None
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._failed = False
        self._last_pts = -1
        self.size: tuple[int, int] | None = None  # the frames' size (width, height), from the first one
        self._resized_from: tuple[int, int] | None = None
        make_folder(self.path.parent)

    def _open(self, width: int, height: int) -> None:
        self._file, self._container = open_mp4(self.partial)
        self._container.metadata.update(self.metadata)
        stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
        # 4:2:0, the only H.264 every browser and phone plays, needs even sizes: an odd one gets a black edge
        self.size = (width, height)
        stream.width, stream.height = width + width % 2, height + height % 2
        if (stream.width, stream.height) != self.size:
            log.info("%s: frames are %dx%d; recorded as %dx%d with a black edge on the right or bottom (H.264 4:2:0 "
                     "needs even sizes)", self.path, width, height, stream.width, stream.height)
        stream.pix_fmt = "yuv420p"
        stream.time_base = VIDEO_TIME_BASE
        stream.codec_context.time_base = VIDEO_TIME_BASE
        stream.codec_context.gop_size = max(1, int(self.fps * KEYFRAME_S))
        stream.options = self.options  # type: ignore[assignment]  # av types it dict[str, object]; str values are what it takes
        self._stream = stream

    def write(self, result: Panoptic, rendered: np.ndarray | None) -> None:
        assert rendered is not None  # needs_picture: the sink draws the overlay for it
        try:
            self._write(result, rendered)
        except OSError as exc:
            raise self._failure(exc, "while recording") from None

    def _write(self, result: Panoptic, rendered: np.ndarray) -> None:
        if self._container is None:
            self._open(rendered.shape[1], rendered.shape[0])
        assert self._container is not None and self._stream is not None and self.size is not None  # _open made them
        if (rendered.shape[1], rendered.shape[0]) != self.size:
            if (rendered.shape[1], rendered.shape[0]) != self._resized_from:
                self._resized_from = (rendered.shape[1], rendered.shape[0])
                log.warning("%s: the source changed size to %dx%d; recorded letterboxed into %dx%d", self.path,
                            rendered.shape[1], rendered.shape[0], *self.size)
            rendered = letterbox(rendered, self.size)
        rendered = pad_to(rendered, (self._stream.width, self._stream.height))
        if self.first_pts_ms is None:
            self.first_pts_ms = result.frame.pts_ms
        pts = max(round((result.frame.pts_ms - self.first_pts_ms) * 90), self._last_pts + 1)
        self._last_pts = pts
        frame = av.VideoFrame.from_ndarray(rendered, format="bgr24")
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._failed:
            self._discard()
            return
        if self._container is None:
            log.warning("%s: no frame was processed, so no video was written", self.path)
            return
        assert self._stream is not None and self._file is not None  # _open made them with the container
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            file, container, self._container = self._file, self._container, None
            close_mp4(file, container)
            finish(self.partial, self.path)
        except OSError as exc:
            raise self._failure(exc, "while finishing the video") from None
        log.info("wrote %s (%d frames)", self.path, self.frames)

    def _failure(self, exc: OSError, when: str) -> WriteFailed:
        """The error to end the run with; the `.partial` is left exactly as the failure left it."""
        self._failed = True
        return WriteFailed(f"{self.path}: {preflight.reason(exc)} {when}; what reached the disk is kept in "
                           f"{self.partial.name}, and the next start recovers it ({preflight.advice(exc)})")

    def _discard(self) -> None:
        """After a failed write: release the container and file without writing anything more."""
        for release in (self._file, self._container):  # the file first: nothing more reaches the disk
            if release is not None:
                try:
                    release.close()
                except Exception:  # noqa: BLE001 - the failure was reported once already
                    pass
        self._container = self._file = None


def letterbox(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` scaled to fit inside `size` (width, height) with its aspect kept, centred on black."""
    width, height = size
    scale = min(width / image.shape[1], height / image.shape[0])
    fitted = cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                        interpolation=cv2.INTER_AREA)
    canvas = np.zeros((height, width, 3), np.uint8)
    top, left = (height - fitted.shape[0]) // 2, (width - fitted.shape[1]) // 2
    canvas[top:top + fitted.shape[0], left:left + fitted.shape[1]] = fitted
    return canvas


def pad_to(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` with black columns on the right and rows at the bottom up to `size` (width, height)."""
    width, height = size
    if (image.shape[1], image.shape[0]) == (width, height):
        return image
    return cv2.copyMakeBorder(image, 0, height - image.shape[0], 0, width - image.shape[1], cv2.BORDER_CONSTANT, value=0)


class SegmentedRecording:
    """Video cut into files of `segment_s` seconds of stream time, named `{stem}-{UTC start}.mp4` beside
    `template` (or `{UTC start}.mp4` inside it when it has no suffix)."""

    stage = "encode"
    needs_picture = True

    def __init__(self, template: str | Path, fps: float, segment_s: float, retention: Retention, min_free_mb: float):
        self.naming = SegmentNaming(Path(template))
        self.fps = fps
        self.segment_s = segment_s
        self.retention = retention
        self.min_free_mb = min_free_mb
        self.current: VideoOutput | None = None
        self.catalog = Catalog()
        make_folder(self.naming.folder)
        self._apply_retention()  # room first: recovery writes copies
        remove_scratch(self.naming.folder.glob(f"{glob_escape(self.naming.prefix)}*{RECOVERING}"))
        recover_partials(self.naming.partials())
        self.sequence = self.catalog.next_sequence(self.naming.finished() + self.naming.partials())
        self._require_room()

    def _apply_retention(self) -> None:
        if self.retention.active:
            enforce_retention(self.catalog.segments(self.naming.finished()), self.retention)
            make_room(self.naming.folder, self.catalog.segments(self.naming.finished()), self.min_free_mb)

    def _require_room(self) -> None:
        """Room for the next segment: retention (where configured) removes the oldest segments to make it."""
        note = ""
        if self.retention.active:
            removed = make_room(self.naming.folder, self.catalog.segments(self.naming.finished()), self.min_free_mb)
            note = f" after retention removed {removed} segment(s)" if removed else " and retention has nothing more it may remove"
        preflight.require_room(self.naming.folder, "video segments", self.min_free_mb, note)

    def write(self, result: Panoptic, rendered: np.ndarray | None) -> None:
        assert rendered is not None  # needs_picture: the sink draws the overlay for it
        current, size = self.current, (rendered.shape[1], rendered.shape[0])
        if current is not None:
            assert current.size is not None and current.first_pts_ms is not None  # it wrote its first frame when made
            if current.size != size:  # a camera reconfigured: its own segment, not letterboxed
                log.info("%s: the source changed size from %dx%d to %dx%d; a new segment begins", self.naming.folder, *current.size, *size)
                self._close_current()
            elif result.frame.pts_ms - current.first_pts_ms >= self.segment_s * 1000:
                self._close_current()
        if self.current is None:
            self._require_room()
            record = Record(self.sequence, Moment.now())
            self.sequence += 1
            self.current = VideoOutput(self.naming.path_for(result.frame.captured_at), self.fps, metadata={TAG: record.tag()})
        self.current.write(result, rendered)

    def _close_current(self) -> None:
        current, self.current = self.current, None
        assert current is not None  # called only with a segment open
        current.close()
        if self.retention.active:
            enforce_retention(self.catalog.segments(self.naming.finished()), self.retention)

    def close(self) -> None:
        if self.current is not None:
            self._close_current()


class SegmentNaming:
    """Where segments of one recording live, and how their names are told apart from other files."""

    def __init__(self, template: Path):
        if template.suffix:
            self.folder, self.prefix, self.suffix = template.parent, f"{template.stem}-", template.suffix
        else:
            self.folder, self.prefix, self.suffix = template, "", ".mp4"
        self._pattern = re.compile(re.escape(self.prefix) + r"\d{8}T\d{6}Z(-\d+)?" + re.escape(self.suffix) + "$")

    def path_for(self, wall_time: float) -> Path:
        stamp = datetime.fromtimestamp(wall_time, timezone.utc).strftime(STAMP_FORMAT)
        path, n = self.folder / f"{self.prefix}{stamp}{self.suffix}", 1
        while path.exists() or partial_path(path).exists():  # two segments begun within one second
            path, n = self.folder / f"{self.prefix}{stamp}-{n}{self.suffix}", n + 1
        return path

    def finished(self) -> list[Path]:
        """Finished segments, oldest first."""
        return sorted((p for p in self.folder.iterdir() if self._pattern.match(p.name) and p.is_file()), key=lambda p: p.stem)

    def partials(self) -> list[Path]:
        return sorted(
            p for p in self.folder.iterdir() if p.name.endswith(PARTIAL) and self._pattern.match(p.name[: -len(PARTIAL)])
        )


def open_video(path: str | Path, fps: float, segment_s: float, retention: Retention, min_free_mb: float):
    """The video output for a run: segments when segment_s > 0, else one file. Either way a
    `.partial` left by an earlier run that did not finish is recovered first, then the free space
    is checked (CannotCreate)."""
    if segment_s > 0:
        return SegmentedRecording(path, fps, segment_s, retention, min_free_mb)
    path = Path(path)
    remove_scratch(path.parent.glob(f"{glob_escape(path.stem)}*{glob_escape(path.suffix)}{RECOVERING}"))
    leftover = partial_path(path)
    if leftover.exists() and (failure := recover_partial(leftover, target_taken=path)):
        raise CannotCreate(f"{failure}: make room or move it away, then start again")
    preflight.require_room(path.parent, "video", min_free_mb)
    return VideoOutput(path, fps)


