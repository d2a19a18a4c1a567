"""COCO panoptic export: one PNG per frame plus JSON, safe against a crash at any moment.

Layout of an export folder:
  panoptic/NNNNNN.png   segment id per pixel as R + 256*G + 256*256*B (0 = void)
  images/NNNNNN.jpg     the frame itself, with output.export_images (a ready dataset)
  segments.jsonl        one line per finished frame (its segments_info), appended and flushed
  categories.json       the category table, written first
  panoptic.json         images + annotations + categories, written when the run finishes
                        (or rebuilt from segments.jsonl by `streamer export-json DIR`)
`images[].file_name` is NNNNNN.jpg for frame NNNNNN of the source: the file in images/ when the
frames are exported, the conventional name otherwise. With tracking, every thing's segments_info
has its `track_id` (and `speed_kmh` while it has a plausible speed; `zones`, {zone: seconds}, once
its track has been in one of the source's zones), an annotation lists the
frame's line crossings and zone entries as `events`, and panoptic.json adds `counts`: distinct tracks per category and the events' totals.
Each PNG (and JPEG) is written under a temporary name and renamed, and its line in segments.jsonl
is written after it, so every line names complete files.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from streamer.boxes import to_coco
from streamer.errors import CannotCreate, InputNotFound, StreamerError, WriteFailed
from streamer.frames import Category, Event, Panoptic, Segment, Speed
from streamer.outputs import preflight

log = logging.getLogger(__name__)

PNG_DIR = "panoptic"
IMAGE_DIR = "images"
JPEG_QUALITY = 95
LINES = "segments.jsonl"
CATEGORIES = "categories.json"
COCO_JSON = "panoptic.json"


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """H x W segment ids -> H x W x 3 uint8 RGB with id = R + 256*G + 256*256*B."""
    ids = ids.astype(np.uint32)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


def segment_info(segment: Segment, speed: Speed | None = None, zones: dict[str, float] | None = None) -> dict[str, Any]:
    """A segment's COCO `segments_info` entry, with `score`, `track_id`, `speed_kmh` (a plausible
    speed only: absent when unknown or implausible) and `zones` ({zone: seconds inside so far, stream
    time}, for the zones its track has been in) where it has them."""
    info: dict[str, Any] = {
        "id": segment.id,
        "category_id": segment.category_id,
        "area": segment.area,
        "bbox": to_coco(segment.box),
        "iscrowd": 0,
    }
    if segment.score is not None:
        info["score"] = round(segment.score, 4)
    if segment.track_id is not None:
        info["track_id"] = segment.track_id
    if speed is not None and speed.plausible:
        info["speed_kmh"] = round(speed.kmh, 1)
    if zones:
        info["zones"] = {zone: round(seconds, 3) for zone, seconds in zones.items()}
    return info


def event_info(event: Event) -> dict[str, Any]:
    """A line crossing {"line", "direction", "track_id", "category"} or zone entry {"zone", "track_id", "category"}."""
    info: dict[str, Any] = {event.kind: event.name}
    if event.direction is not None:
        info["direction"] = event.direction
    return {**info, "track_id": event.track_id, "category": event.category}


def export_counts(annotations: list[dict[str, Any]], categories: list[dict[str, Any]]) -> dict[str, Any]:
    """The totals of an export's annotations: {"objects_total": {category: distinct track ids},
    "lines": {line: {category: {"in": n, "out": n}}}, "zones": {zone: {category: n}}}."""
    names = {c["id"]: c["name"] for c in categories}
    tracks: dict[str, set[int]] = {}
    lines: dict[str, dict[str, dict[str, int]]] = {}
    zones: dict[str, dict[str, int]] = {}
    for annotation in annotations:
        for info in annotation["segments_info"]:
            if "track_id" in info:
                tracks.setdefault(names.get(info["category_id"], str(info["category_id"])), set()).add(info["track_id"])
        for event in annotation.get("events", ()):
            if "line" in event:
                per_way = lines.setdefault(event["line"], {}).setdefault(event["category"], {"in": 0, "out": 0})
                per_way[event["direction"]] += 1
            else:
                per_zone = zones.setdefault(event["zone"], {})
                per_zone[event["category"]] = per_zone.get(event["category"], 0) + 1
    return {"objects_total": {name: len(ids) for name, ids in sorted(tracks.items())}, "lines": lines, "zones": zones}


def category_info(category: Category) -> dict[str, Any]:
    return {
        "id": category.id,
        "name": category.name,
        "isthing": int(category.isthing),
        "color": list(category.color),
        "supercategory": "thing" if category.isthing else "stuff",
    }


def image_name(png_name: str) -> str:
    """The frame's file name (`images[].file_name`, and the JPEG in images/) for its panoptic PNG."""
    return Path(png_name).stem + ".jpg"


def _complete_png(path: Path) -> bool:
    """The file exists and ends with PNG's IEND chunk (a cut-off write does not)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(-12, os.SEEK_END)
            return handle.read(12)[4:8] == b"IEND"
    except OSError:
        return False


def open_new(path: Path, mode: str, append: bool = False) -> IO[Any]:
    """`path` opened for writing without following a link: created (O_EXCL) or, with `append`,
    appended to when it is a plain file already."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if append else os.O_EXCL)
    fd = os.open(path, flags, 0o644)
    return os.fdopen(fd, mode) if "b" in mode else os.fdopen(fd, mode, encoding="utf-8")


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a hidden temporary file beside `path`, fsync, rename: `path` is always whole. On an
    OSError (with `path` as its filename) the temporary file is removed and `path` is as it was."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.unlink(missing_ok=True)  # one a crash left, or a link someone planted: never written through
        with open_new(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        exc.filename = str(path)
        raise


class PanopticExport:
    """A sink output writing every result in COCO panoptic format.

    Nothing is written before the first frame, so a run that fails at start-up leaves no export
    behind that would block its retry.
    """

    stage = "export"
    needs_picture = False  # the panoptic map and the frame itself, never the overlay

    def __init__(self, folder: str | Path, categories: tuple[Category, ...], images: bool, overwrite: bool):
        """`overwrite`: a folder that holds an export already has that export's files removed when
        the first frame is written (so a run that fails at start-up leaves it whole); without it
        such a folder is refused (CannotCreate)."""
        self.folder = Path(folder)
        self.categories = categories
        self.images = images
        self.frames = 0
        self._lines: IO[str] | None = None
        self._previous = self._previous_files()
        if self._previous and not overwrite:
            raise CannotCreate(f"{self.folder}: already holds an export; --overwrite (output.overwrite: true) replaces it, "
                               "or choose an empty folder")
        self._refuse_links()

    def _previous_files(self) -> list[Path]:
        """The files of an earlier export in the folder (only those: anything else there stays)."""
        named = [self.folder / name for name in (LINES, COCO_JSON, CATEGORIES) if (self.folder / name).is_file()]
        return named + sorted((self.folder / PNG_DIR).glob("*.png")) + sorted((self.folder / IMAGE_DIR).glob("*.jpg"))

    def _subfolders(self) -> list[Path]:
        return [self.folder / PNG_DIR] + ([self.folder / IMAGE_DIR] if self.images else [])

    def _refuse_links(self) -> None:
        """A sub-folder that is a link would send the export elsewhere (files are opened O_NOFOLLOW)."""
        for sub in self._subfolders():
            if sub.is_symlink():
                raise CannotCreate(f"{sub}: is a link, which would send the export elsewhere; remove it, or choose an empty folder")

    def _open(self) -> None:
        try:
            for sub in self._subfolders():
                sub.mkdir(parents=True, exist_ok=True)
            self._refuse_links()  # again: one could have been planted since start-up
            for path in self._previous:
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise CannotCreate(f"{self.folder}: cannot create the export folder: {exc.strerror}") from None
        if self._previous:
            log.info("%s: replaced the export that was there (%d files)", self.folder, len(self._previous))
        write_atomic(self.folder / CATEGORIES, json.dumps([category_info(c) for c in self.categories], indent=1).encode())
        self._lines = open_new(self.folder / LINES, "a", append=True)

    def write(self, result: Panoptic, rendered: np.ndarray | None) -> None:
        try:
            self._write(result)
        except OSError as exc:
            raise self._failure(exc) from None

    def _failure(self, exc: OSError) -> WriteFailed:
        return WriteFailed(f"{exc.filename or self.folder}: {preflight.reason(exc)} while exporting; the {self.frames} frames "
                           f"exported before are kept: free some space, then `streamer export-json {self.folder}` "
                           "writes their panoptic.json")

    def _write(self, result: Panoptic) -> None:
        if self._lines is None:
            self._open()
        assert self._lines is not None  # _open opened it
        frame = result.frame
        name = f"{frame.index:06d}.png"
        ok, png = cv2.imencode(".png", id_to_rgb(result.panoptic_map)[..., ::-1])
        if not ok:
            raise StreamerError(f"frame {frame.index}: cannot encode the panoptic PNG")
        write_atomic(self.folder / PNG_DIR / name, png.tobytes())
        if self.images:
            ok, jpeg = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise StreamerError(f"frame {frame.index}: cannot encode the frame as JPEG")
            write_atomic(self.folder / IMAGE_DIR / image_name(name), jpeg.tobytes())
        height, width = result.panoptic_map.shape
        line = {
            "image_id": frame.index,
            "file_name": name,
            "width": width,
            "height": height,
            "source_id": frame.source_id,
            "pts_ms": round(frame.pts_ms, 3),
            "segments_info": [segment_info(s, result.speeds.get(s.track_id) if s.track_id is not None else None,
                                           result.zone_times.of(s.track_id) if result.zone_times and s.track_id is not None else None)
                              for s in result.segments],
        }
        if result.events:
            line["events"] = [event_info(e) for e in result.events]
        self._lines.write(json.dumps(line) + "\n")
        self._lines.flush()
        self.frames += 1

    def close(self) -> None:
        if self._lines is None:
            log.warning("%s: no frame was processed, so nothing was exported", self.folder)
            return
        try:
            self._lines.close()
            build_coco_json(self.folder)
        except OSError as exc:
            raise self._failure(exc) from None
        log.info("exported %d frames to %s", self.frames, self.folder)


def build_coco_json(folder: str | Path) -> int:
    """Write panoptic.json from segments.jsonl and categories.json; returns the frame count.

    A last line cut short by a crash is skipped, as is a line whose PNG is missing.
    """
    folder = Path(folder)
    if not (folder / LINES).is_file() or not (folder / CATEGORIES).is_file():
        raise InputNotFound(f"{folder}: no export here ({LINES} and {CATEGORIES} are needed)")
    categories = json.loads((folder / CATEGORIES).read_text(encoding="utf-8"))
    images, annotations = [], []
    for number, text in enumerate((folder / LINES).read_text(encoding="utf-8").splitlines(), start=1):
        try:
            line = json.loads(text)
            png = folder / PNG_DIR / line["file_name"]
            image = {"id": line["image_id"], "file_name": image_name(line["file_name"]), "width": line["width"], "height": line["height"],
                     "pts_ms": line["pts_ms"]}  # the frame's time in the source (COCO allows extra fields)
            annotation = {"image_id": line["image_id"], "file_name": line["file_name"], "segments_info": line["segments_info"]}
            if line.get("events"):
                annotation["events"] = line["events"]
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s line %d: incomplete or damaged (cut off by a crash?), skipped", folder / LINES, number)
            continue
        if not _complete_png(png):
            log.warning("%s: missing or incomplete, frame %s skipped", png, line["image_id"])
            continue
        images.append(image)
        annotations.append(annotation)
    for leftover in [*(folder / PNG_DIR).glob(".*.tmp"), *(folder / IMAGE_DIR).glob(".*.tmp")]:  # writes cut off by a crash
        leftover.unlink()
    coco = {"info": {"description": "streamer panoptic export"}, "images": images, "annotations": annotations, "categories": categories}
    if any("track_id" in info for annotation in annotations for info in annotation["segments_info"]):
        coco["counts"] = export_counts(annotations, categories)
    write_atomic(folder / COCO_JSON, json.dumps(coco).encode())
    return len(images)
