"""Recovery of the `.partial` files a run that did not finish left behind; nothing is ever lost.

The frames that still decode are copied (no re-encoding) into a finished file, which is read back
(every frame must decode) and fsynced before the leftover is removed; if any step fails, the
leftover stays untouched and the next start tries again. A leftover with nothing readable is moved
aside as `.unreadable`, never deleted. Copies a kill cut short are removed (remove_scratch).
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import av
import av.logging

from streamer.outputs import preflight
from streamer.outputs.files import PARTIAL, close_mp4, finish, free_name, open_mp4
from streamer.outputs.retention import TAG

log = logging.getLogger(__name__)

UNREADABLE = ".unreadable"
RECOVERING = ".recovering"


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


def remove_scratch(paths) -> None:
    """Remove copies a recovery was making when the process was killed: never finished, so never
    the only copy (their leftover `.partial` is still there, and recovered again)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            log.info("removed %s, an unfinished recovery copy (its leftover is kept and recovered again)", path.name)


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
            scratch.unlink(missing_ok=True)  # a copy cut off by a kill, or a planted link: never written through
            file, writer = open_mp4(scratch)
            try:
                copy = writer.add_stream_from_template(stream)
                if TAG in reader.metadata:  # the segment's record, which retention orders by
                    writer.metadata[TAG] = reader.metadata[TAG]
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
