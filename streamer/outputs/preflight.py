"""Start-up checks of the outputs a run will write, before any model loads or frame is read.

Each output is checked for what the user named: a file where a file is meant (not an existing
folder), a suffix the writer honours, a folder that exists or can be made and can be written (a
read-only mount, missing permissions). `require_room` checks the free space, once leftovers are
recovered and retention has made room. Every refusal is one CannotCreate line (exit 73,
EX_CANTCREAT) naming the path and what to do.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

from streamer.errors import CannotCreate

VIDEO_SUFFIXES = {".mp4", ".m4v"}  # the recorder writes H.264 in fragmented MP4


def video_target(path: Path, segmented: bool, source: Path | None, overwrite: bool) -> None:
    """The recording's target: one MP4 file, or (segments) a name template `cam.mp4` or a folder;
    never `source`, the file being read (by any name: a link, a relative path); an existing file
    only with `overwrite` (segments never replace one: each gets a new name)."""
    if source is not None and path.exists() and source.exists() and path.samefile(source):
        raise CannotCreate(f"{path}: is the source video itself, and recording would replace it; choose another name")
    if not segmented and path.is_file() and not overwrite:
        raise CannotCreate(f"{path}: already exists; --overwrite (output.overwrite: true) replaces it, or choose another name")
    if segmented and not path.suffix:
        folder_target(path, "video segments")
        return
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise CannotCreate(f"{path}: streamer records H.264 in MP4; name the video .mp4"
                           + ("" if path.suffix else ", or give a folder for segments of a live source"))
    if path.is_dir():
        raise CannotCreate(f"{path}: is a folder; name the video file inside it, e.g. {path / 'out.mp4'}")
    folder_target(path.parent, "video")


def folder_target(folder: Path, what: str) -> None:
    """A folder the run writes into: made if missing, then written to once."""
    if folder.exists() and not folder.is_dir():
        raise CannotCreate(f"{folder}: is a file, but the {what} needs a folder there; choose another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".streamer-write-check-"):
            pass
        mode = folder.stat().st_mode
    except OSError as exc:
        raise CannotCreate(f"{folder}: cannot write the {what} there ({reason(exc)}); {advice(exc)}") from None
    if link := planted_link(folder):
        raise CannotCreate(f"{link}: is a link made by another user (uid {link.lstat().st_uid}) in a folder every user may "
                           f"write, so it could send the {what} elsewhere; choose another path")
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise CannotCreate(f"{folder}: every user may write there (mode {stat.S_IMODE(mode):o}, no sticky bit), so anyone could "
                           f"plant links that send the {what} elsewhere; chmod o-w it, or choose another folder")


def planted_link(folder: Path) -> Path | None:
    """A link on the way to `folder` that another user made in a world-writable folder such as /tmp
    (the kernel's fs.protected_symlinks rule, checked here since the kernel may not)."""
    path = Path(folder.absolute().anchor)
    for part in folder.absolute().parts[1:]:
        parent, path = path, path / part
        if path.is_symlink():
            owner, where = path.lstat().st_uid, parent.stat()
            if where.st_mode & stat.S_IWOTH and owner not in (os.geteuid(), where.st_uid):
                return path
    return None


def free_mb(folder: Path) -> float:
    return shutil.disk_usage(folder).free / 1e6


def require_room(folder: Path, what: str, min_free_mb: float, note: str = "") -> None:
    """Refuse (CannotCreate) when `folder` has less than `min_free_mb` MB free; `note` says what was tried."""
    free = free_mb(folder)
    if free < min_free_mb:
        raise CannotCreate(f"{folder}: only {free:.1f} MB free{note}, less than output.min_free_mb ({min_free_mb:g} MB) "
                           f"for the {what}; free some space or choose another disk")


def reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def advice(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "it is a read-only file system: choose a writable folder"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "give the user running streamer write permission, or choose another folder"
    if exc.errno == errno.ENOSPC:
        return "the disk is full: free some space or choose another disk"
    return "choose another folder"
