"""What `streamer annotate` works on: every video its inputs name, each with the folder its export
gets under --out.

Inputs are files (taken as given), folders (searched recursively for videos by suffix, hidden files
and folders skipped) and globs (`**` reaches into subfolders). A video's folder is its path
relative to the input that found it, under the name of that input: `annotate cams/ a.mp4` gives
`cams/north/x.mp4/` and `a.mp4/`. The same file named twice is taken once; two files that would
share a folder are a usage error, never an overwrite. The output folder is never searched: with
--out inside an input folder, a rerun would otherwise annotate its own annotated.mp4 files.
Discovery never opens a file: a link loop, a link to nothing or a FIFO named like a video is
found like any other, and fails alone when its turn comes (work.Annotator).
"""
from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from streamer.errors import InputNotFound, UsageError
from streamer.logs import shown_name

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg", ".wmv",
                            ".flv", ".3gp"})


@dataclass(frozen=True)
class Job:
    """One video to annotate."""

    path: Path  # the video, as found
    name: PurePosixPath  # relative: its export goes to OUT/name/


def find_videos(inputs: Sequence[str], out: Path | None = None) -> list[Job]:
    """Every video of `inputs`, each once, in the order given (a folder's sorted by path), none
    found inside `out` (the output folder) unless named itself. Raises InputNotFound for an input
    that names nothing, UsageError for two videos that would share a folder."""
    jobs: dict[Path, Job] = {}
    owners: dict[PurePosixPath, Path] = {}
    skip = Path(os.path.realpath(out)) if out is not None else None
    for text in inputs:
        for job in _expand(text, skip):
            key = Path(os.path.realpath(job.path))  # a link loop too (Path.resolve raises on one): its video fails alone
            if key in jobs or (skip is not None and key.is_relative_to(skip) and str(job.path) != text):
                continue
            if job.name in owners:
                raise UsageError(f"{shown_name(owners[job.name])} and {shown_name(job.path)} would both be annotated into "
                                 f"{shown_name(job.name)}/: give their folders instead")
            jobs[key], owners[job.name] = job, job.path
    return list(jobs.values())


def _expand(text: str, skip: Path | None) -> list[Job]:
    path = Path(text)
    shown = shown_name(text)
    if path.is_dir():
        if found := _folder(path, skip):
            return found
        raise InputNotFound(f"{shown}: no videos in it ({', '.join(sorted(VIDEO_SUFFIXES))}; hidden files and the output folder skipped)")
    if path.is_file():
        return [Job(path, PurePosixPath(path.name))]
    if any(mark in text for mark in "*?["):
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
        found = [job for match in matches if not _hidden(match.parts) for job in _expand_found(match, skip)]
        if found:
            return found
        raise InputNotFound(f"{shown}: no video matches")
    raise InputNotFound(f"{shown}: no such file or folder")


def _expand_found(path: Path, skip: Path | None) -> list[Job]:
    if path.is_dir():
        return _folder(path, skip)
    return [Job(path, PurePosixPath(path.name))] if path.suffix.lower() in VIDEO_SUFFIXES else []


def _folder(folder: Path, skip: Path | None = None) -> list[Job]:
    top = PurePosixPath(folder.resolve().name)
    found = []
    for root, folders, files in os.walk(folder, followlinks=False):
        folders[:] = sorted(f for f in folders if not f.startswith(".")
                            and (skip is None or os.path.realpath(os.path.join(root, f)) != str(skip)))
        relative = PurePosixPath(Path(root).relative_to(folder).as_posix())
        found += [Job(Path(root) / f, top / relative / f) for f in sorted(files)
                  if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_SUFFIXES]
    return found


def _hidden(parts: Sequence[str]) -> bool:
    return any(part.startswith(".") and part not in (".", "..") for part in parts)
