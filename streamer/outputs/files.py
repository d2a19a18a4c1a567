"""The files a recording is made of: MP4 written through a file that reports every write error,
`.partial` names, and renames made durable.

FFmpeg can drop a write error while it finishes a file (the last fragment, the index) and takes a
short write for a whole one, so it writes through DiskFile, which raises instead. A new file is
created exclusively (O_EXCL): an existing file, or a link planted under its name, is never written
through.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import av

from streamer.errors import CannotCreate

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


def open_mp4(path: Path) -> tuple[DiskFile, av.container.OutputContainer]:
    """A fragmented MP4 written to a new file `path` through a DiskFile; an existing file, or a link
    by that name, is never written through (FileExistsError)."""
    file = DiskFile(path, "x")
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


def free_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.stem}.{n}{path.suffix}"), n + 1
    return candidate
