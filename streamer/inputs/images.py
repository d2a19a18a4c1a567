"""Image files as frames: a folder read as a file manager shows it, each image at its real range.

OpenCV's IMREAD_COLOR turns a 16-bit image into 8 bits by dropping the low byte, which is right only
when all 16 bits are used, and refuses floating-point TIFFs. Here an image is read at its stored
depth (EXIF orientation applied, as IMREAD_COLOR does) and scaled by the range its file declares: a
PNG's sBIT chunk (e.g. 12 significant bits of 16, as machine-vision cameras write), the full integer
range otherwise, 0..1 for floating point (PNG specification 11.3.3.4; TIFF 6.0 SampleFormat).

The file's bytes are read here and decoded by OpenCV (cv2.imdecode), never opened by OpenCV by name:
OpenCV takes a name as UTF-8 text and crashes the process (SIGSEGV) on one that is not UTF-8, as
names from old Samba shares and cameras' FTP uploads often are (Python holds their odd bytes as
surrogate escapes). Such names are logged as logs.shown_name writes them.
"""
from __future__ import annotations

import logging
import re
import struct
from pathlib import Path

import cv2
import numpy as np

from streamer.errors import StreamerError
from streamer.logs import shown_name

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_image(path: Path) -> np.ndarray | None:
    """The image at `path` as H x W x 3 uint8 BGR at its real range (to_bgr8); None when it does
    not decode or cannot be read (gone, unreadable)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)  # any name: OpenCV never sees it (module docstring)
    except OSError:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_COLOR) if data.size else None  # EXIF orientation applied
    if image is None:
        return None
    bits = png_significant_bits(path) if image.dtype == np.uint16 and path.suffix.lower() == ".png" else None
    return to_bgr8(image, bits)


def to_bgr8(image: np.ndarray, significant_bits: int | None = None) -> np.ndarray | None:
    """H x W, H x W x 3 (BGR) or H x W x 4 (BGRA) of any depth -> H x W x 3 uint8 BGR. Integers are
    scaled so that 2**significant_bits - 1 (default: the type's maximum) becomes 255; floating
    point so that 1.0 does (beyond 0..1 is clipped, NaN is 0). Alpha is dropped. None for a type
    with no such meaning (complex, bool)."""
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.dtype.kind == "f":
        image = np.nan_to_num(image.astype(np.float32)) * 255.0
    elif image.dtype.kind in "ui":
        top = (1 << significant_bits) - 1 if significant_bits else np.iinfo(image.dtype).max
        if image.dtype != np.uint8 or top != 255:
            image = image.astype(np.float32) * (255.0 / top)
    else:
        return None
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if image.ndim == 2 or image.shape[2] == 1:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(image)


def png_significant_bits(path: Path) -> int | None:
    """The largest of a PNG's sBIT values (significant bits per sample), None without the chunk."""
    try:
        with open(path, "rb") as handle:
            if handle.read(8) != PNG_SIGNATURE:
                return None
            while header := handle.read(8):
                length, kind = struct.unpack(">I4s", header)
                if kind in (b"IDAT", b"IEND"):  # sBIT comes before the image data
                    return None
                data = handle.read(length)
                handle.seek(4, 1)  # the CRC
                if kind == b"sBIT" and data:
                    return max(data)
    except (OSError, struct.error):
        return None
    return None


class ImageFilesReader:
    """A list of image files played at a fixed rate: image i is at i / fps, so a skipped image
    leaves its slot empty. An undecodable image is skipped with a warning (counted in `skipped`),
    or ends the run with an error when `skip_bad` is False."""

    live = False

    def __init__(self, paths: list[Path], description: str, fps: float, skip_bad: bool = True):
        self._paths = paths
        self.frame_count: int | None = len(paths)
        self._next = 0
        self.description = description
        self.fps = fps
        self.skip_bad = skip_bad
        self.skipped = 0

    def read(self) -> tuple[np.ndarray, float] | None:
        while self._next < len(self._paths):
            index, path = self._next, self._paths[self._next]
            self._next += 1
            image = read_image(path)
            if image is not None:
                return image, index * 1000.0 / self.fps
            if not self.skip_bad:
                raise StreamerError(f"{shown_name(path)}: cannot decode this image; remove or replace it "
                                    "(or set source.on_bad_frame: skip)")
            self.skipped += 1
            log.warning("%s: cannot decode this image, skipped (%d so far)", path, self.skipped)
        return None

    def close(self) -> None:
        pass


def natural_key(path: Path) -> list:
    """Sort key that orders numbers by value, as file managers show them: frame2 before frame10."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", path.name)]


def visible_images(paths) -> list[Path]:
    """Image files as a user sees the folder: no hidden files (".DS_Store", macOS "._" companions,
    sync tools' temporaries), no folders, in natural order."""
    return sorted((p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
                  key=natural_key)
