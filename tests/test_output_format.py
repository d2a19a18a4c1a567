"""The recording plays everywhere and frames keep their real shape: H.264 4:2:0 for any size (an odd
one padded to even), and a source that changes size starts a new segment, or is letterboxed into a
single-file recording, never stretched, while the models and the export see every frame at its true
size."""
from __future__ import annotations

import json
import subprocess

import av
import cv2
import pytest
from helpers import decode_video, moving_pattern, run_in_process


def image_folder(folder, sizes: list[tuple[int, int]]):
    folder.mkdir()
    for index, (width, height) in enumerate(sizes):
        cv2.imwrite(str(folder / f"{index:03d}.png"), moving_pattern(index, width, height))
    return folder


def run(fast_config, source, tmp_path, *args):
    output = tmp_path / "out.mp4"
    result = run_in_process("run", "-c", str(fast_config), "--source", str(source), "--output", str(output), *args)
    assert result.returncode == 0, result.stderr
    return output, result


@pytest.mark.system
def test_an_odd_sized_source_is_recorded_in_4_2_0_with_an_even_size(fast_config, tmp_path):
    webm = tmp_path / "odd.webm"  # VP9 at 383x215, as a browser or a screen recorder writes it
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=383x215:rate=10", "-frames:v", "3",
                    "-c:v", "libvpx-vp9", "-deadline", "realtime", str(webm)], check=True)
    output, result = run(fast_config, webm, tmp_path)
    with av.open(str(output)) as container:
        codec = container.streams.video[0].codec_context
        assert (codec.pix_fmt, codec.profile, codec.width, codec.height) == ("yuv420p", "High", 384, 216)
    assert "frames are 383x215; recorded as 384x216 with a black edge" in result.stderr
    luma = cv2.cvtColor(decode_video(output)[0], cv2.COLOR_BGR2GRAY)  # 4:2:0 shares colour over 2x2: judge brightness
    assert luma[:, -1].mean() < 0.3 * luma[:, -2].mean() and luma[-1, :].mean() < 0.3 * luma[-2, :].mean(), \
        "the added column and row are black"


def test_a_source_that_changes_size_is_letterboxed_never_stretched(fast_config, tmp_path):
    folder = image_folder(tmp_path / "mixed", [(160, 120), (160, 120), (90, 120), (160, 120)])
    export = tmp_path / "export"
    output, result = run(fast_config, folder, tmp_path, "--export-dir", str(export))
    frames = decode_video(output)
    assert len(frames) == 4 and all(f.shape == (120, 160, 3) for f in frames)
    portrait = frames[2]
    assert portrait[:, :30].max() < 24 and portrait[:, -30:].max() < 24, "black bars beside the narrower frame"
    assert portrait[:, 40:120].mean() > 40, "the frame itself in the middle, at its own aspect"
    assert "the source changed size to 90x120; recorded letterboxed into 160x120" in result.stderr
    images = json.loads((export / "panoptic.json").read_text())["images"]
    assert [(i["width"], i["height"]) for i in images] == [(160, 120), (160, 120), (90, 120), (160, 120)]
    assert cv2.imread(str(export / "panoptic" / "000002.png")).shape[:2] == (120, 90), "the export keeps the true size"


def test_a_segmented_recording_starts_a_new_segment_when_the_size_changes(fast_config, tmp_path):
    folder = image_folder(tmp_path / "mixed", [(160, 120), (160, 120), (90, 120), (160, 120)])
    segments = tmp_path / "segments"
    result = run_in_process("run", "-c", str(fast_config), "--source", str(folder), "--output", str(segments),
                            "--set", "output.segment_seconds=60")
    assert result.returncode == 0, result.stderr
    recorded = sorted((frames[0].shape[1], frames[0].shape[0], len(frames))
                      for frames in map(decode_video, segments.glob("*.mp4")))
    assert recorded == [(90, 120, 1), (160, 120, 1), (160, 120, 2)], "each size in segments of its own, none letterboxed"
    assert "the source changed size from 160x120 to 90x120; a new segment begins" in result.stderr
