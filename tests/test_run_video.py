"""End to end through the real CLI: a real H.264 file in, a real H.264 MP4 out."""
from __future__ import annotations

import re
import signal
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from helpers import make_video, moving_pattern, popen_cli, probe, run_cli


@pytest.mark.parametrize("size,fps", [((160, 120), 10), ((192, 108), Fraction(25, 2))])
def test_output_matches_input_frames_size_and_rate(tmp_path, fast_config, size, fps):
    source = make_video(tmp_path / "in.mp4", frames=14, size=size, fps=fps)
    output = tmp_path / "sub" / "out.mp4"
    result = run_cli("run", "-c", str(fast_config), "--source", str(source), "--output", str(output))
    assert result.returncode == 0, result.stderr
    expected, actual = probe(source), probe(output)
    assert actual["codec"] == "h264"
    assert (actual["frames"], actual["width"], actual["height"]) == (expected["frames"], expected["width"], expected["height"])
    assert actual["rate"] == expected["rate"]
    assert actual["times"] == pytest.approx(expected["times"], abs=1e-3)  # timestamps come from the frames
    assert not list(output.parent.glob("*.partial"))


def test_overlay_is_drawn_on_the_frames(tmp_path, fast_config):
    """The output frames are the input with the segmentation blended in, not a copy and not noise."""
    source = make_video(tmp_path / "in.mp4", frames=3)
    output = tmp_path / "out.mp4"
    # Two stuff classes and no instances: every pixel belongs to a segment, whatever the random model says.
    result = run_cli("run", "-c", str(fast_config), "--source", str(source), "--output", str(output),
                     "--set", "models.semantic.classes=[{name: red, color: [255, 0, 0]}, {name: green, color: [0, 255, 0]}]",
                     "--set", "models.instance.class_map={}", "--set", "render.alpha=0.5", "--set", "fusion.stuff_area_min=0")
    assert result.returncode == 0, result.stderr
    capture = cv2.VideoCapture(str(output))
    ok, first = capture.read()
    assert ok
    original = moving_pattern(0, 160, 120).astype(float)
    difference = abs(first.astype(float) - original).mean()
    assert 10 < difference < 120  # blended: clearly changed, yet the picture is still there
    correlation = cv2.matchTemplate(first, moving_pattern(0, 160, 120), cv2.TM_CCOEFF_NORMED).max()
    assert correlation > 0.5


def test_image_folder_source(tmp_path, fast_config):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(4):
        cv2.imwrite(str(folder / f"{index:03d}.png"), moving_pattern(index, 96, 64))
    output = tmp_path / "out.mp4"
    result = run_cli("run", "-c", str(fast_config), "--source", str(folder), "--output", str(output), "--set", "source.fps=5")
    assert result.returncode == 0, result.stderr
    info = probe(output)
    assert (info["frames"], info["width"], info["height"], info["rate"]) == (4, 96, 64, 5)


def test_a_failing_stage_stops_the_run_with_one_error_and_keeps_the_video(tmp_path, fast_config):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(3):
        cv2.imwrite(str(folder / f"{index:03d}.png"), moving_pattern(index, 96, 64))
    (folder / "003.png").write_bytes(b"not a png")
    output = tmp_path / "out.mp4"
    result = run_cli("run", "-c", str(fast_config), "--source", str(folder), "--output", str(output))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "003.png" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert probe(output)["frames"] == 3


def test_sigterm_mid_run_finishes_a_playable_video(tmp_path, fast_config):
    source = make_video(tmp_path / "in.mp4", frames=200)
    output = tmp_path / "out.mp4"
    process = popen_cli("run", "-c", str(fast_config), "--source", str(source), "--output", str(output))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not any(_processed(line) >= 3 for line in lines):
        time.sleep(0.2)
    assert any(_processed(line) >= 3 for line in lines), "".join(lines)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    reader.join(5)
    done = next(line for line in lines if "done:" in line)
    processed = int(re.search(r"(\d+) processed", done).group(1))
    info = probe(output)
    assert 3 <= info["frames"] == processed < 200
    assert not list(tmp_path.glob("*.partial"))


def _processed(line: str) -> int:
    match = re.search(r"status: .* (\d+) processed", line)
    return int(match.group(1)) if match else 0


def test_drawing_on_the_models_device_makes_the_same_video(tmp_path):
    """render.on_model_device (the GPU path, here on the CPU) draws exactly what the host draws."""
    frames = {}
    for on_device in ("true", "false"):
        output = tmp_path / f"{on_device}.mp4"
        result = run_cli("run", "--source", "synthetic:street?frames=4&size=192x112", "--output", str(output),
                         "--set", "runtime.device=cpu", "--set", f"render.on_model_device={on_device}")
        assert result.returncode == 0, result.stderr
        assert ("overlay drawn on cpu" in result.stderr) == (on_device == "true")
        with av.open(str(output)) as container:
            frames[on_device] = [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]
    assert len(frames["true"]) == 4
    assert all(np.array_equal(a, b) for a, b in zip(frames["true"], frames["false"]))
