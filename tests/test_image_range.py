"""Images with more than 8 bits per channel reach the models at their real range: a 16-bit PNG with
12 significant bits (its sBIT chunk), 16-bit PNG and TIFF, grey, with alpha, 32-bit float TIFF. Each
is written to disk with OpenCV and read back through the folder source."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamer.inputs.images import png_significant_bits, to_bgr8
from streamer.inputs.sources import open_source

# the 8-bit picture every file below holds, in its own encoding
rng = np.random.default_rng(5)
PICTURE = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)


def with_sbit(path: Path, bits: int) -> None:
    """Insert an sBIT chunk (significant bits of the three colour samples) after the PNG's header."""
    data = path.read_bytes()
    body = b"sBIT" + bytes([bits] * 3)
    chunk = struct.pack(">I", 3) + body + struct.pack(">I", zlib.crc32(body))
    path.write_bytes(data[:33] + chunk + data[33:])  # signature (8) + IHDR (25)


def encodings(folder: Path) -> dict[str, Path]:
    wide = PICTURE.astype(np.uint16) * 257  # 0..255 -> 0..65535
    files = {
        "8-bit": (folder / "a.png", PICTURE),
        "16-bit png": (folder / "b.png", wide),
        "16-bit tiff": (folder / "c.tif", wide),
        "12 of 16 bits": (folder / "d.png", np.rint(PICTURE.astype(np.float64) * 4095 / 255).astype(np.uint16)),
        "float tiff": (folder / "e.tif", PICTURE.astype(np.float32) / 255),
        "8-bit with alpha": (folder / "f.png", np.dstack([PICTURE, np.full(PICTURE.shape[:2], 128, np.uint8)])),
        "16-bit with alpha": (folder / "g.png", np.dstack([wide, np.full(PICTURE.shape[:2], 65535, np.uint16)])),
    }
    for path, image in files.values():
        assert cv2.imwrite(str(path), image)
    with_sbit(files["12 of 16 bits"][0], 12)
    return {name: path for name, (path, _) in files.items()}


def test_every_depth_reads_as_the_same_8_bit_picture(tmp_path):
    names = encodings(tmp_path)
    frames = []
    reader = open_source(str(tmp_path), fps=10)
    while (item := reader.read()) is not None:
        frames.append(item[0])
    assert reader.skipped == 0, "a float TIFF is an image, not a bad frame"
    assert len(frames) == len(names)
    for name, image in zip(names, frames):
        assert image.dtype == np.uint8 and image.shape == PICTURE.shape, name
        assert np.abs(image.astype(int) - PICTURE).max() <= 1, name  # not darkened 16x, not clipped to white


def test_grey_16_bit_becomes_three_equal_channels():
    grey = np.array([[0, 257 * 100, 65535]], np.uint16)
    assert to_bgr8(grey).tolist() == [[[0, 0, 0], [100, 100, 100], [255, 255, 255]]]


def test_float_beyond_one_and_nan_are_clipped():
    image = np.array([[[-0.5, np.nan, 2.0]]], np.float32)
    assert to_bgr8(image).tolist() == [[[0, 0, 255]]]


@pytest.mark.parametrize("bits", [10, 12, 14])
def test_significant_bits_set_the_white_point(tmp_path, bits):
    top = (1 << bits) - 1
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), np.full((2, 2, 3), top, np.uint16))
    assert png_significant_bits(path) is None
    with_sbit(path, bits)
    assert png_significant_bits(path) == bits
    assert to_bgr8(np.full((1, 1, 3), top, np.uint16), bits).tolist() == [[[255, 255, 255]]]
    assert to_bgr8(np.full((1, 1, 3), top // 2, np.uint16), bits).tolist() == [[[127, 127, 127]]]


def test_a_photo_keeps_the_orientation_its_exif_gives(tmp_path):
    from PIL import Image

    y, x = np.mgrid[0:24, 0:32]
    picture = np.stack([x * 8, y * 10, np.full_like(x, 128)], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it
    photo = Image.fromarray(picture[..., ::-1].copy())  # 32 wide, 24 high
    exif = photo.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display, as phones write it
    photo.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image, _ = open_source(str(tmp_path / "phone.jpg")).read()
    assert image.shape == (32, 24, 3)
    assert np.abs(image.astype(int) - np.rot90(picture, k=-1)).mean() < 4
