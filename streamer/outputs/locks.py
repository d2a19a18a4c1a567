"""One output, one writer: a run holds an OS file lock on each output it writes.

The lock is flock(2) on a hidden file beside the output (`.NAME.lock`; inside a folder output,
`.streamer.lock`) holding the owner's PID. The kernel releases it when the process ends, however it
ends, so a crash never leaves a stale lock. A second run on the same output is refused before it
touches anything there, leftovers included (CannotCreate, exit 73, naming the owner's PID).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from streamer.errors import CannotCreate

FOLDER_LOCK = ".streamer.lock"


def lock_path(target: Path) -> Path:
    """Where the lock of an output lives: `dir/.out.mp4.lock` for a file, `dir/.streamer.lock` for a folder."""
    return target / FOLDER_LOCK if not target.suffix or target.is_dir() else target.with_name(f".{target.name}.lock")


_held: dict[Path, int] = {}  # lock file -> outputs of this process holding it (segments and export may share a folder)


@contextlib.contextmanager
def holding(target: Path, what: str) -> Iterator[None]:
    """Hold the lock of `target` (an output file or folder, whose folder exists) while the block runs."""
    path = lock_path(target).absolute()
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise CannotCreate(f"{path}: cannot create the lock of the {what} ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise CannotCreate(f"{target}: the {what} is being written by another streamer (PID {owner}); stop it, "
                               "or choose another output") from None
        with contextlib.suppress(OSError):  # the PID is for the message only: a full disk must not stop the lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[path] = 1
        try:
            yield
        finally:
            del _held[path]
    finally:
        os.close(fd)  # releases the lock; the file stays, harmless, for the next run
