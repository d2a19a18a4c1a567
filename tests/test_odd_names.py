"""File names as old Samba shares and cameras' FTP uploads write them: bytes that are not UTF-8,
newlines and escape sequences. OpenCV crashes (SIGSEGV) on a name that is not UTF-8, so every such
name is read through a path it can take or by its bytes; each is logged on one line, quoted as a
shell would, and nothing forges a line. Real files with such names, real `streamer run` processes."""
from __future__ import annotations

import io
import json
import logging
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import DEMO_MODELS, make_video, run_cli

from streamer.errors import UsageError
from streamer.inputs.sources import open_source
from streamer.inputs.spec import parse_source
from streamer.logs import NamesShown, one_line, shown_name

SMALL = [*DEMO_MODELS, "--set", "models.semantic.input_size=[160,96]", "--set", "models.instance.min_size=96",
         "--set", "models.instance.max_size=160", "--set", "runtime.device=cpu", "--set", "runtime.torch_threads=1"]
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ [\w.]+: ")


def odd(folder: Path, name: bytes) -> Path:
    """The path of `name` (raw bytes) in `folder`, as Python holds it (surrogate escapes)."""
    return Path(os.fsdecode(os.fsencode(folder) + b"/" + name))


def write_png(path: Path, value: int) -> None:
    ok, png = cv2.imencode(".png", np.full((96, 160, 3), value, np.uint8))
    assert ok
    path.write_bytes(png.tobytes())


@pytest.mark.parametrize("raw, shown", [
    (b"plain name.mp4", "plain name.mp4"),
    ("café.mp4".encode(), "café.mp4"),  # UTF-8 is shown as it is
    (b"caf\xe9.png", r"$'caf\xe9.png'"),  # Latin-1: the byte, as bash writes it
    (b"a\nb.mp4", r"$'a\nb.mp4'"),
    (b"it's\x1b[2J.mp4", r"$'it\'s\x1b[2J.mp4'"),
    (b"back\\slash\r.mp4", r"$'back\\slash\r.mp4'"),
    ("line\u2028sep\u202e.mp4".encode(), r"$'line\u2028sep\u202e.mp4'"),
])
def test_a_name_is_shown_as_it_is_or_quoted_as_bash_writes_it(raw, shown):
    assert shown_name(os.fsdecode(raw)) == shown == shown_name(raw)
    assert "\n" not in one_line(os.fsdecode(raw)) and "\x1b" not in one_line(os.fsdecode(raw))


def test_paths_in_log_calls_are_shown_on_one_line_in_every_format():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(NamesShown())
    logger = logging.getLogger("test_odd_names")
    logger.addHandler(handler)
    try:
        logger.warning("%s: cannot decode this image", Path(os.fsdecode(b"/x/a\nfake ERROR \xff.png")))
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "$'/x/a\\nfake ERROR \\xff.png': cannot decode this image\n"


def test_readers_open_names_opencv_cannot_take(tmp_path):
    video = make_video(odd(tmp_path, b"\xff cam.mp4"), frames=5)
    reader = open_source(str(video))
    frames = 0
    while reader.read() is not None:
        frames += 1
    reader.close()
    assert frames == 5 and reader.description == shown_name(video)
    folder = odd(tmp_path, b"d\xe9j\xe0")
    folder.mkdir()
    for index, name in enumerate((b"1.png", b"2 caf\xe9.png", b"3\n.png")):
        write_png(odd(folder, name), 40 * index)
    images = open_source(str(folder))
    assert [int(images.read()[0][0, 0, 0]) for _ in range(3)] == [0, 40, 80] and images.read() is None
    with pytest.raises(UsageError, match="holds bytes that are not UTF-8"):
        parse_source(os.fsdecode(b"rtsp://cam/caf\xe9"))  # OpenCV would crash on it


@pytest.mark.system
def test_run_reads_an_image_folder_with_names_that_are_not_utf8(tmp_path):
    folder = tmp_path / "upload"
    folder.mkdir()
    for index, name in enumerate((b"0001.png", b"caf\xe9 0002.png", b"0003\n.png", b"\xff0004.png")):
        write_png(odd(folder, name), 30 * index)
    odd(folder, b"0005 \xe9.png").write_bytes(b"not an image")
    export = tmp_path / "export"
    result = run_cli("run", "--source", str(folder), "--export-dir", str(export), *SMALL)
    assert result.returncode == 0, result.stderr
    assert len(json.loads((export / "panoptic.json").read_text())["annotations"]) == 4
    [skipped] = [line for line in result.stderr.splitlines() if "cannot decode" in line]
    assert skipped.endswith(r"upload/0005 \xe9.png': cannot decode this image, skipped (1 so far)"), skipped
    assert all(LINE.match(line) for line in result.stderr.splitlines()), result.stderr


@pytest.mark.system
def test_run_reads_and_writes_files_whose_names_are_not_utf8(tmp_path):
    video = make_video(odd(tmp_path, b"cam\xe9\n1.mp4"), frames=6)
    output, export = odd(tmp_path, b"out\xff.mp4"), odd(tmp_path, b"export\xe9")
    result = run_cli("run", "--source", str(video), "--output", str(output), "--export-dir", str(export), *SMALL)
    assert result.returncode == 0, result.stderr
    assert output.is_file() and len(json.loads((export / "panoptic.json").read_text())["annotations"]) == 6
    assert r"wrote $'" in result.stderr and r"out\xff.mp4' (6 frames)" in result.stderr, result.stderr
    assert all(LINE.match(line) for line in result.stderr.splitlines()), result.stderr

    missing = run_cli("run", "--source", os.fsdecode(os.fsencode(tmp_path) + b"/gone\n\xe9.mp4"), *SMALL)
    assert missing.returncode == 66 and len(missing.stderr.splitlines()) == 1, missing.stderr
    assert missing.stderr.rstrip().endswith(r"gone\n\xe9.mp4': no such file; check the path given as source"), missing.stderr
