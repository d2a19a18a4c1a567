"""Files in the weights caches, written as the outputs' are: nothing through a planted link.

`streamer models fetch` and `import` (often run with sudo) write in two places only: torch's checkpoint
folder and the Hugging Face cache's `models--ORG--NAME` folder of a preset's model. Both roots are taken
as configured (a user may have linked them to a larger disk); below a root every folder is opened
without following a link (O_NOFOLLOW, then used through its descriptor, so a link swapped in later
leads nowhere either), every new file is created exclusively (O_EXCL), a resumable file is reopened
only when it is a regular file, and clean-up removes names inside these folders, never what a link
points to. A lock on the folder a download writes in (flock: the kernel drops it when the process
ends, however it ends) makes a second `fetch` of the same files wait for the first rather than write
beside it.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from streamer.errors import CannotCreate, InputNotFound

log = logging.getLogger("streamer.models")

CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_LINK_ERRORS = (errno.ELOOP, errno.ENOTDIR)


def cannot(path: Path, exc: OSError, doing: str) -> CannotCreate:
    """The one line for a failure to write in a cache: a link where a file or folder belongs, or the OS's reason."""
    if exc.errno in _LINK_ERRORS and os.path.islink(path):
        return CannotCreate(f"{path} is a symbolic link: streamer never writes through a link inside its caches; remove it, "
                            "then run the command again")
    return CannotCreate(f"{path}: cannot {doing} ({exc.strerror or exc})")


class Folder:
    """A folder of a cache, held open by descriptor: what is made in it stays in it."""

    def __init__(self, fd: int, path: Path):
        self.fd = fd
        self.path = path

    @classmethod
    def root(cls, path: Path) -> Folder:
        """A cache's root as configured (created when missing): torch's checkpoint folder, the hub cache."""
        try:
            path.mkdir(parents=True, exist_ok=True)
            return cls(os.open(path, _DIR_FLAGS), path)
        except OSError as exc:
            raise cannot(path, exc, "create the folder") from None

    def sub(self, name: str, create: bool = True) -> Folder:
        """The folder `name` in this one, made when missing; a link or a file by that name is refused."""
        path = self.path / name
        try:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=self.fd)
            return Folder(os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=self.fd), path)
        except OSError as exc:
            raise cannot(path, exc, "create the folder") from None

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def is_file(self, name: str) -> bool:
        """A regular file by that name (a link is not)."""
        info = self.lstat(name)
        return info is not None and stat.S_ISREG(info.st_mode)

    def size(self, name: str) -> int:
        info = self.lstat(name)
        return info.st_size if info is not None and stat.S_ISREG(info.st_mode) else 0

    def sync(self, name: str | None = None) -> None:
        """Make the file `name` (or, without a name, this folder's entries) durable."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd) if name else os.dup(self.fd)
        except OSError as exc:
            raise cannot(self.path / (name or ""), exc, "open the file") from None
        try:
            os.fsync(fd)
        except OSError as exc:
            raise cannot(self.path / (name or ""), exc, "write the file") from None
        finally:
            os.close(fd)

    def free_bytes(self) -> int:
        info = os.fstatvfs(self.fd)
        return info.f_bavail * info.f_frsize

    def remove(self, name: str) -> None:
        """Remove `name` from this folder (a link: the link itself); nothing when it is not there."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def create(self, name: str) -> int:
        """A new, empty file `name` for writing, replacing a leftover by that name (a link is only unlinked)."""
        self.remove(name)
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=self.fd)
        except OSError as exc:
            raise cannot(self.path / name, exc, "create the file") from None

    def append(self, name: str) -> int:
        """`name` for appending (a resumable download): created when missing, reopened only when it is a
        regular file; a link by that name is refused, never written through."""
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=self.fd)
        except OSError as exc:
            raise cannot(self.path / name, exc, "open the file") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CannotCreate(f"{self.path / name} is not a regular file: streamer leaves it alone; remove it, then run the command again")
        return fd

    def move(self, name: str, target: Folder, new_name: str) -> None:
        """Rename `name` here to `new_name` in `target` (same file system), replacing a file or link there."""
        try:
            os.replace(name, new_name, src_dir_fd=self.fd, dst_dir_fd=target.fd)
        except OSError as exc:
            raise cannot(target.path / new_name, exc, "put the file in place") from None

    def link(self, name: str, points_to: str) -> None:
        """`name` becomes a symbolic link to `points_to` (relative, inside the cache), replacing a file or link there."""
        staged = f".{name}.{os.getpid()}.link"
        try:
            self.remove(staged)
            os.symlink(points_to, staged, dir_fd=self.fd)
            os.replace(staged, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except OSError as exc:
            self.remove(staged)
            raise cannot(self.path / name, exc, "create the link") from None

    def write_text(self, name: str, text: str, staging: Folder) -> None:
        """`name` holds `text`, written beside in `staging` and renamed into place (readers never see half)."""
        staged = f".{name}.write"
        fd = staging.create(staged)
        try:
            write_all(fd, text.encode(), staging.path / staged)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            staging.remove(staged)
            raise
        os.close(fd)
        staging.move(staged, self, name)

    @property
    def deleted(self) -> bool:
        """This folder was removed (by a process that finished with it) since it was opened."""
        return os.fstat(self.fd).st_nlink == 0

    def rmdir(self, name: str) -> None:
        """Remove the folder `name` here if it is empty (never a link, never what is in it)."""
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=self.fd)

    @contextlib.contextmanager
    def hold(self, what: str) -> Iterator[None]:
        """Lock this folder (flock on its descriptor: no lock file, and the kernel drops it when the
        process ends, however it ends) while the block runs; when another process holds it, say so
        and wait for it (it ends: its downloads have time limits)."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: another streamer is putting it in the cache; waiting for it to finish", what)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)


def write_all(fd: int, data: bytes | memoryview, path: Path) -> None:
    """Every byte of `data` to `fd`; CannotCreate (exit 73) naming `path` when the disk refuses."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        raise cannot(path, exc, "write the file") from None


def copy_into(source: Path, folder: Folder, name: str) -> str:
    """Copy `source` (a file the user gave) to a new file `name` in `folder`, made durable; returns the
    sha256 of what was written. A failure (a full disk) removes the copy and raises CannotCreate
    (exit 73): nothing half-written stays."""
    digest = hashlib.sha256()
    fd = folder.create(name)
    try:
        try:
            handle = open(source, "rb")  # noqa: SIM115 - closed below; a read error is the source's, not the cache's
        except OSError as exc:
            raise InputNotFound(f"{source}: cannot read it ({exc.strerror or exc})") from None
        with handle:
            while True:
                try:
                    block = handle.read(CHUNK)
                except OSError as exc:
                    raise InputNotFound(f"{source}: cannot read it ({exc.strerror or exc})") from None
                if not block:
                    break
                digest.update(block)
                write_all(fd, block, folder.path / name)
        try:
            os.fsync(fd)
        except OSError as exc:
            raise cannot(folder.path / name, exc, "write the file") from None
    except CannotCreate as exc:
        os.close(fd)
        folder.remove(name)
        raise CannotCreate(f"{exc}; the copy was removed, nothing half-written is left: free some space, then import again") from None
    except BaseException:
        os.close(fd)
        folder.remove(name)
        raise
    os.close(fd)
    return digest.hexdigest()
