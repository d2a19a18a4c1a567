"""A source's kind is what it is, not how it is spelled: existing paths with glob characters, folders
as a user sees them (hidden companions, natural order, an undecodable image skipped), and an MP4 on
a real local web server read as a file, every frame, to the end."""
from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest
from helpers import make_video, probe, run_in_process, run_summary
from mirror import Mirror

from streamer.config import Source
from streamer.errors import StreamerError, UsageError
from streamer.inputs.sources import open_source


def frames_of(reader) -> list[tuple[np.ndarray, float]]:
    frames = []
    while (item := reader.read()) is not None:
        frames.append(item)
    reader.close()
    return frames


def write_frame(path, value: int) -> None:
    cv2.imwrite(str(path), np.full((24, 32, 3), value, np.uint8))


def test_an_existing_file_with_glob_characters_is_that_file(fast_config, tmp_path):
    clip = make_video(tmp_path / "clip [1080p] *final?.mp4", frames=4)
    result = run_in_process("run", "-c", str(fast_config), "--source", str(clip), "--output", str(tmp_path / "out.mp4"))
    assert result.returncode == 0, result.stderr
    assert run_summary(result.stderr)["processed"] == 4


def test_a_folder_reads_as_a_user_sees_it(tmp_path):
    folder = tmp_path / "frames [day 1]"
    folder.mkdir()
    for number, value in ((1, 10), (2, 20), (10, 100)):
        write_frame(folder / f"frame{number}.png", value)
    (folder / "._frame1.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble companion")  # macOS on a foreign disk
    (folder / ".DS_Store").write_bytes(b"Bud1")
    (folder / ".frame5.png.tmp.png").write_bytes(b"half a sync")  # a sync tool's temporary
    (folder / "thumbs.png").mkdir()  # a folder that looks like an image
    frames = frames_of(open_source(str(folder), fps=10))
    assert [int(image[0, 0, 0]) for image, _ in frames] == [10, 20, 100], "frame2 before frame10, companions left out"
    assert [pts for _, pts in frames] == [0.0, 100.0, 200.0]


def test_an_undecodable_image_is_skipped_and_counted_or_stops_the_run(tmp_path):
    for number, value in ((1, 10), (3, 30)):
        write_frame(tmp_path / f"{number}.png", value)
    (tmp_path / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated by a crash")
    reader = open_source(str(tmp_path), fps=10)
    frames = frames_of(reader)
    assert [int(image[0, 0, 0]) for image, _ in frames] == [10, 30]
    assert [pts for _, pts in frames] == [0.0, 200.0], "the bad image keeps its time slot"
    assert reader.skipped == 1
    with pytest.raises(StreamerError, match=r"2\.png: cannot decode this image"):
        frames_of(open_source(str(tmp_path), fps=10, skip_bad=False))


@pytest.mark.system
def test_an_mp4_on_a_web_server_is_read_as_a_file_to_its_end(fast_config, tmp_path):
    clip = make_video(tmp_path / "clip.mp4", frames=9, fps=10)
    output = tmp_path / "out.mp4"
    with Mirror({"/videos/clip.mp4": clip}) as server:
        result = run_in_process("run", "-c", str(fast_config), "--source", f"{server.url}/videos/clip.mp4",
                                "--output", str(output))
    assert result.returncode == 0, result.stderr
    summary = run_summary(result.stderr)
    assert (summary["read"], summary["processed"], summary["dropped"]) == (9, 9, 0), "every frame, once"
    assert probe(output)["frames"] == 9
    assert "(file, buffer block)" in result.stderr


def test_source_fps_overrides_a_wrong_header_in_the_video_and_the_export(fast_config, tmp_path):
    """A file whose header and timestamps claim 100 fps, run at source.fps=25: frame N is at N/25 s."""
    clip = make_video(tmp_path / "fast.mp4", frames=19, fps=100)
    output, export = tmp_path / "out.mp4", tmp_path / "export"
    result = run_in_process("run", "-c", str(fast_config), "--source", str(clip), "--output", str(output),
                            "--export-dir", str(export), "--set", "source.fps=25")
    assert result.returncode == 0, result.stderr
    times = probe(output)["times"]
    assert len(times) == 19
    assert times[-1] - times[0] == pytest.approx(18 / 25, abs=0.005)
    stamps = [image["pts_ms"] for image in json.loads((export / "panoptic.json").read_text())["images"]]
    assert stamps == pytest.approx([index * 40.0 for index in range(19)])


@pytest.mark.system
def test_a_truncated_file_says_how_many_frames_it_held_of_those_announced(fast_config, tmp_path, caplog):
    """An MP4 with its index up front (faststart), cut off while being copied: the index announces 30 frames."""
    whole = tmp_path / "whole.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-frames:v", "30",
                    "-c:v", "libx264", "-movflags", "+faststart", str(whole)], check=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:5000])
    result = run_in_process("run", "-c", str(fast_config), "--source", str(cut), "--output", str(tmp_path / "out.mp4"))
    assert result.returncode == 0, result.stderr
    read = run_summary(result.stderr)["read"]
    assert 0 < read < 29
    assert f"{cut}: ended after {read} of the 30 frames its container announces (the file is truncated or damaged)" in result.stderr
    caplog.clear()
    frames_of(open_source(str(cut)))
    assert "announces" in caplog.text
    caplog.clear()
    assert len(frames_of(open_source(str(whole)))) == 30
    assert "announces" not in caplog.text  # a whole file reads to its end in silence


def test_a_file_url_is_its_file_whatever_it_escapes(tmp_path, monkeypatch):
    clip = make_video(tmp_path / "clip [1080p] été #2.mp4", frames=3)
    assert "%20" in clip.as_uri()  # file:///.../clip%20%5B1080p%5D%20%C3%A9t%C3%A9%20%232.mp4, as file managers copy it
    assert len(frames_of(open_source(clip.as_uri()))) == 3
    assert len(frames_of(open_source(clip.as_uri().replace("file://", "file://localhost")))) == 3
    with pytest.raises(UsageError, match="a file:// URL of another host"):
        open_source("file://nas/share/clip.mp4")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert len(frames_of(open_source(Source(uri=f"~/{clip.name}").uri))) == 3  # ~ in a config file is the home folder


def test_links_are_followed_to_what_they_name(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    for number, value in ((1, 10), (2, 20)):
        write_frame(real / f"{number}.PNG", value)  # suffixes in capitals, as cameras write them
    linked = tmp_path / "today"
    linked.symlink_to(real, target_is_directory=True)
    (real / "3.png").symlink_to(real / "1.PNG")  # a linked image is an image
    (real / "4.png").symlink_to(tmp_path / "gone.png")  # a dangling link is no image
    frames = frames_of(open_source(str(linked), fps=10))
    assert [int(image[0, 0, 0]) for image, _ in frames] == [10, 20, 10]
