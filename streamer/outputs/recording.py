"""Crash-safe recording: H.264 in fragmented MP4, cut into segments named by their start time.

Every file is written as `NAME.partial` and renamed once closed. Fragments reach the disk at least
every FRAGMENT_S, so a SIGKILL or a power cut loses only the last moments. A write that fails (a full
disk, an I/O error) ends the run with WriteFailed and leaves the `.partial` as it is.

At start-up, leftover `.partial` files are recovered: the frames that still decode are copied into a
finished file, which is read back (every frame must decode) and fsynced before the leftover is
removed; if any step fails the leftover stays untouched for the next start. A leftover with nothing
readable is moved aside as `.unreadable`, never deleted. Retention removes the oldest finished
segments by age, by total size, and to keep output.min_free_mb free.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import av
import av.logging
import cv2
import numpy as np

from streamer.errors import CannotCreate, WriteFailed
from streamer.frames import Panoptic
from streamer.outputs import preflight

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = Fraction(1, 90000)  # fine enough that 29.97 fps timestamps stay exact
KEYFRAME_S = 2.0  # a keyframe at least this often
FRAGMENT_S = 0.5  # a fragment (and a flush to the OS) at least this often
FRAGMENTED_MP4 = {
    # A header up front, then fragments: the file is playable up to its last complete fragment at
    # any moment, and it plays in browsers. delay_moov writes the header with the first fragment, once
    # the B-frame delay is known, so the first frame still shows at time 0. flush_packets hands every
    # fragment to the OS at once.
    "movflags": "frag_keyframe+empty_moov+delay_moov+default_base_moof",
    "frag_duration": str(int(FRAGMENT_S * 1e6)),
    "flush_packets": "1",
}
PARTIAL = ".partial"
UNREADABLE = ".unreadable"
RECOVERING = ".recovering"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"  # segment names: UTC start time, sortable


class DiskFile(io.FileIO):
    """The file FFmpeg writes an MP4 through. FFmpeg can drop a write error while it finishes a file
    (the last fragment, the index) and takes a short write for a whole one; here every byte is
    written or an OSError is raised, and the first error is kept for `check`."""

    error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += super().write(view[done:])
        except OSError as exc:
            self.error = self.error or exc
            raise
        return done

    def check(self) -> None:
        if self.error is not None:
            raise self.error


def open_mp4(path: Path, replace: bool = False) -> tuple[DiskFile, av.container.OutputContainer]:
    """A fragmented MP4 written to `path` through a DiskFile; an existing file is never overwritten
    (FileExistsError) unless `replace`."""
    file = DiskFile(path, "w" if replace else "x")
    try:
        return file, av.open(file, mode="w", format="mp4", options=FRAGMENTED_MP4)
    except BaseException:
        file.close()
        raise


def close_mp4(file: DiskFile, container: av.container.OutputContainer) -> None:
    """Finish the MP4 (its last fragment) and close the file; OSError when any byte did not reach it."""
    try:
        container.close()
    finally:
        file.close()
    file.check()


class VideoOutput:
    """One H.264 fragmented MP4, written as `NAME.partial` beside the target and renamed once closed.

    Opened on the first frame (its size is the video's size); timestamps are the frames' own PTS
    from the first frame on, forced strictly increasing.
    """

    stage = "encode"

    def __init__(self, path: str | Path, fps: float, encoder_options: dict[str, str] | None = None):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.fps = fps
        # A short lookahead keeps few frames inside the encoder, where a kill would lose them.
        self.options = encoder_options or {"preset": "veryfast", "crf": "23", "x264-params": "rc-lookahead=5:sync-lookahead=0"}
        self.frames = 0
        self.first_pts_ms: float | None = None
        self._file: DiskFile | None = None
        self._container = None
        self._stream = None
        self._failed = False
        self._last_pts = -1
        self.size: tuple[int, int] | None = None  # the frames' size (width, height), from the first one
        self._resized_from: tuple[int, int] | None = None
        make_folder(self.path.parent)

    def _open(self, width: int, height: int) -> None:
        self._file, self._container = open_mp4(self.partial)
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
        stream.options = self.options
        self._stream = stream

    def write(self, result: Panoptic, rendered: np.ndarray) -> None:
        try:
            self._write(result, rendered)
        except OSError as exc:
            raise self._failure(exc, "while recording") from None

    def _write(self, result: Panoptic, rendered: np.ndarray) -> None:
        if self._container is None:
            self._open(rendered.shape[1], rendered.shape[0])
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


@dataclass(frozen=True)
class Retention:
    """Which finished segments to remove (defaults and meanings: `output:` in streamer.config)."""

    keep_hours: float | None  # older than this
    max_bytes: int | None  # the oldest, beyond this total

    @property
    def active(self) -> bool:
        return self.keep_hours is not None or self.max_bytes is not None


class SegmentedRecording:
    """Video cut into files of `segment_s` seconds of stream time, named `{stem}-{UTC start}.mp4` beside
    `template` (or `{UTC start}.mp4` inside it when it has no suffix)."""

    stage = "encode"

    def __init__(self, template: str | Path, fps: float, segment_s: float, retention: Retention, min_free_mb: float = 0.0):
        self.naming = SegmentNaming(Path(template))
        self.fps = fps
        self.segment_s = segment_s
        self.retention = retention
        self.min_free_mb = min_free_mb
        self.current: VideoOutput | None = None
        make_folder(self.naming.folder)
        enforce_retention(self.naming.finished(), retention)  # room first: recovery writes copies
        if retention.active:
            make_room(self.naming.folder, self.naming.finished(), min_free_mb)
        recover_partials(self.naming.partials())
        self._require_room()

    def _require_room(self) -> None:
        """Room for the next segment: retention (where configured) removes the oldest segments to make it."""
        note = ""
        if self.retention.active:
            removed = make_room(self.naming.folder, self.naming.finished(), self.min_free_mb)
            note = f" after retention removed {removed} segment(s)" if removed else " and retention has no finished segment left to remove"
        preflight.require_room(self.naming.folder, "video segments", self.min_free_mb, note)

    def write(self, result: Panoptic, rendered: np.ndarray) -> None:
        current, size = self.current, (rendered.shape[1], rendered.shape[0])
        if current is not None and current.size != size:  # a camera reconfigured: its own segment, not letterboxed
            log.info("%s: the source changed size from %dx%d to %dx%d; a new segment begins", self.naming.folder, *current.size, *size)
            self._close_current()
        elif current is not None and result.frame.pts_ms - current.first_pts_ms >= self.segment_s * 1000:
            self._close_current()
        if self.current is None:
            self._require_room()
            self.current = VideoOutput(self.naming.path_for(result.frame.captured_at), self.fps)
        self.current.write(result, rendered)

    def _close_current(self) -> None:
        current, self.current = self.current, None
        current.close()
        enforce_retention(self.naming.finished(), self.retention)

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


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL)


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CannotCreate(f"{folder}: cannot create the output folder: {exc.strerror}") from None


def finish(written: Path, final: Path) -> None:
    """Make `written` durable, then give it its final name (and make the rename durable too)."""
    _fsync(written)
    os.replace(written, final)
    _fsync(final.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover_partials(partials: list[Path]) -> None:
    """Recover each leftover `.partial` (recover_partial); one that cannot be is logged and kept."""
    for partial in partials:
        if failure := recover_partial(partial):
            log.error("%s, and the next start tries again", failure)


def recover_partial(partial: Path, target_taken: Path | None = None) -> str | None:
    """Recover a leftover `.partial` video: the frames that decode are copied into the finished name
    (or `{stem}.recovered{suffix}` when that name is taken, by `target_taken` or a file). The leftover
    is removed only once its copy is verified and durable; on any error it stays untouched, and the
    returned line says why (None: recovered, or moved aside as holding nothing readable)."""
    final = partial.with_name(partial.name[: -len(PARTIAL)])
    if final == target_taken or final.exists():
        final = free_name(final.with_name(f"{final.stem}.recovered{final.suffix}"))
    try:
        frames = remux_readable(partial, final)
        if not frames:
            aside = free_name(partial.with_name(partial.name[: -len(PARTIAL)] + UNREADABLE))
            os.replace(partial, aside)
            log.warning("%s holds no readable video: moved aside as %s", partial, aside.name)
            return None
        partial.unlink()
    except (OSError, RecoveryFailed) as exc:
        why = f"{preflight.reason(exc)} writing {exc.filename}" if isinstance(exc, OSError) and exc.filename else str(exc)
        return f"{partial}, left by a run that did not finish, could not be recovered ({why}); it is kept untouched"
    log.warning("recovered %s: %d frames from %s, left by a run that did not finish", final, frames, partial.name)
    return None


class RecoveryFailed(Exception):
    """A recovered copy that does not read back as written."""


def remux_readable(source: Path, target: Path) -> int:
    """Copy the packets of `source` up to the first that does not decode into `target` (no
    re-encoding), read the copy back, and make it durable. Returns the frames kept; 0 leaves no file
    behind. Raises OSError (with the filename) when the copy cannot be written, RecoveryFailed when it
    does not read back; `source` is never changed."""
    scratch = target.with_name(target.name + RECOVERING)
    kept = 0
    av.logging.set_libav_level(av.logging.PANIC)  # a cut-off file makes FFmpeg complain at length
    try:
        reader = open_readable(source)
        if reader is None:
            return 0
        with reader:
            stream = reader.streams.video[0]
            file, writer = open_mp4(scratch, replace=True)  # a scratch copy cut off by a kill
            try:
                copy = writer.add_stream_from_template(stream)
                for packet in decodable_packets(reader, stream):
                    packet.stream = copy
                    writer.mux(packet)
                    kept += 1
            finally:
                close_mp4(file, writer)
        if kept:
            if (decoded := count_frames(scratch)) != kept:
                raise RecoveryFailed(f"its copy {scratch.name} reads back {decoded} of the {kept} frames written")
            finish(scratch, target)
        return kept
    except OSError as exc:
        exc.filename = exc.filename or str(scratch)
        raise
    finally:
        av.logging.set_libav_level(av.logging.WARNING)
        with contextlib.suppress(OSError):
            scratch.unlink(missing_ok=True)


def open_readable(path: Path) -> av.container.InputContainer | None:
    """`path` opened for reading, None when FFmpeg finds no video in it; OSError when it cannot be read."""
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        if isinstance(exc, OSError):
            raise
        return None
    if not container.streams.video:
        container.close()
        return None
    return container


def decodable_packets(reader: av.container.InputContainer, stream) -> Iterator[av.Packet]:
    """The stream's packets up to the first damaged one (a file cut off mid-write ends in one).
    A read error of the disk (OSError) is raised, not taken for damage."""
    try:
        for packet in reader.demux(stream):
            if packet.size == 0:
                continue
            if packet.is_corrupt:
                return
            packet.decode()  # raises on a damaged packet; the frames themselves are not needed
            yield packet
    except av.FFmpegError as exc:
        if isinstance(exc, OSError):
            raise
        return


def count_frames(path: Path) -> int:
    """The frames of `path` that decode, up to the first error."""
    frames = 0
    try:
        with av.open(str(path)) as container:
            for _ in container.decode(video=0):
                frames += 1
    except av.FFmpegError:
        pass
    return frames


def open_video(path: str | Path, fps: float, segment_s: float, retention: Retention, min_free_mb: float = 0.0):
    """The video output for a run: segments when segment_s > 0, else one file. Either way a
    `.partial` left by an earlier run that did not finish is recovered first, then the free space
    is checked (CannotCreate)."""
    if segment_s > 0:
        return SegmentedRecording(path, fps, segment_s, retention, min_free_mb)
    path = Path(path)
    leftover = partial_path(path)
    if leftover.exists() and (failure := recover_partial(leftover, target_taken=path)):
        raise CannotCreate(f"{failure}: make room or move it away, then start again")
    preflight.require_room(path.parent, "video", min_free_mb)
    return VideoOutput(path, fps)


def free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.stem}.{n}{path.suffix}"), n + 1
    return candidate


def make_room(folder: Path, finished: list[Path], min_free_mb: float) -> int:
    """Remove the oldest finished segments while `folder` has less than `min_free_mb` MB free (as an
    NVR keeps recording by dropping its oldest footage); returns how many were removed."""
    removed = 0
    for path in finished:
        if preflight.free_mb(folder) >= min_free_mb:
            break
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
            log.info("retention: removed %s (to keep output.min_free_mb = %g MB free)", path.name, min_free_mb)
    return removed


def enforce_retention(finished: list[Path], retention: Retention) -> None:
    """Remove the oldest finished segments older than keep_hours, then while the rest exceed max_bytes."""
    if not retention.active:
        return
    sizes = {}
    for path in finished:
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        sizes[path] = (stat.st_size, stat.st_mtime)
    remaining = sum(size for size, _ in sizes.values())
    now = time.time()
    for path, (size, mtime) in sizes.items():  # oldest first: names sort by start time
        too_old = retention.keep_hours is not None and now - mtime > retention.keep_hours * 3600
        too_big = retention.max_bytes is not None and remaining > retention.max_bytes
        if not (too_old or too_big):
            break
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        remaining -= size
        log.info("retention: removed %s (%s)", path.name, "older than keep_hours" if too_old else "over max_bytes")
