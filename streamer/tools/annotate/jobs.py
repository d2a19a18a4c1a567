"""What `streamer annotate` works on: every video its inputs name, each with the folder its export
gets under --out.

Inputs are files (taken as given), folders (searched recursively for videos by suffix, hidden files
and folders skipped) and globs (`**` reaches into subfolders). A video's folder is its path
relative to the input that found it, under the name of that input: `annotate cams/ a.mp4` gives
`cams/north/x.mp4/` and `a.mp4/`. The same file named twice is taken once; two files that would
share a folder are a usage error, never an overwrite.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from streamer.errors import InputNotFound, UsageError

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg", ".wmv",
                            ".flv", ".3gp"})


@dataclass(frozen=True)
class Job:
    """One video to annotate."""

    path: Path  # the video, as found
    name: PurePosixPath  # relative: its export goes to OUT/name/


def find_videos(inputs: Sequence[str]) -> list[Job]:
    """Every video of `inputs`, each once, in the order given (a folder's sorted by path).
    Raises InputNotFound for an input that names nothing, UsageError for two videos that would
    share a folder."""
    jobs: dict[Path, Job] = {}
    owners: dict[PurePosixPath, Path] = {}
    for text in inputs:
        for job in _expand(text):
            key = job.path.resolve()
            if key in jobs:
                continue
            if job.name in owners:
                raise UsageError(f"{owners[job.name]} and {job.path} would both be annotated into {job.name}/: "
                                 "give their folders instead")
            jobs[key], owners[job.name] = job, job.path
    return list(jobs.values())


def _expand(text: str) -> list[Job]:
    path = Path(text)
    if path.is_dir():
        if found := _folder(path):
            return found
        raise InputNotFound(f"{text}: no videos in it ({', '.join(sorted(VIDEO_SUFFIXES))}; hidden files skipped)")
    if path.is_file():
        return [Job(path, PurePosixPath(path.name))]
    if any(mark in text for mark in "*?["):
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
        found = [job for match in matches if not _hidden(match.parts) for job in _expand_found(match)]
        if found:
            return found
        raise InputNotFound(f"{text}: no video matches")
    raise InputNotFound(f"{text}: no such file or folder")


def _expand_found(path: Path) -> list[Job]:
    if path.is_dir():
        return _folder(path)
    return [Job(path, PurePosixPath(path.name))] if path.suffix.lower() in VIDEO_SUFFIXES else []


def _folder(folder: Path) -> list[Job]:
    top = PurePosixPath(folder.resolve().name)
    found = []
    for root, folders, files in os.walk(folder, followlinks=False):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        relative = PurePosixPath(Path(root).relative_to(folder).as_posix())
        found += [Job(Path(root) / f, top / relative / f) for f in sorted(files)
                  if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_SUFFIXES]
    return found


def _hidden(parts: Sequence[str]) -> bool:
    return any(part.startswith(".") and part not in (".", "..") for part in parts)
