"""End to end through the real CLI: a real H.264 file in, a real H.264 MP4 out."""
from __future__ import annotations

import signal
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import Daemon, decode_video, make_video, moving_pattern, probe, run_cli, run_in_process, run_summary, the_error

# Two stuff classes and no instances: every pixel belongs to a segment, whatever the random model says.
TWO_STUFF_CLASSES = ["--set", "models.semantic.classes=[{name: red, color: [255, 0, 0]}, {name: green, color: [0, 255, 0]}]",
                     "--set", "models.instance.class_map={}", "--set", "render.alpha=0.5", "--set", "fusion.stuff_area_min=0"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory, module_config):
    """convert(size, fps) -> (source, output, result): a 14-frame video of that size and rate through
    `streamer run` with TWO_STUFF_CLASSES, made once per module: the size/rate test and the overlay
    test check different things of the same run."""
    runs = {}

    def convert(size, fps):
        if (size, fps) not in runs:
            folder = tmp_path_factory.mktemp("converted")
            source = make_video(folder / "in.mp4", frames=14, size=size, fps=fps)
            output = folder / "sub" / "out.mp4"
            result = run_in_process("run", "-c", str(module_config), "--source", str(source), "--output", str(output),
                                    *TWO_STUFF_CLASSES)
            runs[size, fps] = source, output, result
        return runs[size, fps]

    return convert


@pytest.mark.parametrize("size,fps", [((160, 120), 10), ((192, 108), Fraction(25, 2))])
def test_output_matches_input_frames_size_and_rate(converted, size, fps):
    source, output, result = converted(size, fps)
    assert result.returncode == 0, result.stderr
    expected, actual = probe(source), probe(output)
    assert actual["codec"] == "h264"
    assert (actual["frames"], actual["width"], actual["height"]) == (expected["frames"], expected["width"], expected["height"])
    assert actual["rate"] == expected["rate"]
    assert actual["times"] == pytest.approx(expected["times"], abs=1e-3)  # timestamps come from the frames
    assert not list(output.parent.glob("*.partial"))


def test_overlay_is_drawn_on_the_frames(converted):
    """The output frames are the input with the segmentation blended in, not a copy and not noise."""
    _, output, result = converted((160, 120), 10)
    assert result.returncode == 0, result.stderr
    first = decode_video(output)[0]
    original = moving_pattern(0, 160, 120).astype(float)
    difference = abs(first.astype(float) - original).mean()
    assert 10 < difference < 120  # blended: clearly changed, yet the picture is still there
    correlation = cv2.matchTemplate(first, moving_pattern(0, 160, 120), cv2.TM_CCOEFF_NORMED).max()
    assert correlation > 0.5


def image_folder(path: Path, count: int) -> Path:
    """PATH/000.png, 001.png, ...: `count` frames of the moving pattern, 96x64."""
    path.mkdir()
    for index in range(count):
        cv2.imwrite(str(path / f"{index:03d}.png"), moving_pattern(index, 96, 64))
    return path


def test_image_folder_source(tmp_path, fast_config):
    folder = image_folder(tmp_path / "images", 4)
    output = tmp_path / "out.mp4"
    result = run_in_process("run", "-c", str(fast_config), "--source", str(folder), "--output", str(output), "--set", "source.fps=5")
    assert result.returncode == 0, result.stderr
    info = probe(output)
    assert (info["frames"], info["width"], info["height"], info["rate"]) == (4, 96, 64, 5)


@pytest.mark.system
def test_a_failing_stage_stops_the_run_with_one_error_and_keeps_the_video(tmp_path, fast_config):
    folder = image_folder(tmp_path / "images", 3)
    (folder / "003.png").write_bytes(b"not a png")
    output = tmp_path / "out.mp4"
    result = run_cli("run", "-c", str(fast_config), "--source", str(folder), "--output", str(output),
                     "--set", "source.on_bad_frame=stop")  # the default skips a bad image
    assert "003.png" in the_error(result, 1)
    assert probe(output)["frames"] == 3


@pytest.mark.system
def test_sigterm_mid_run_finishes_a_playable_video(tmp_path, fast_config):
    source = make_video(tmp_path / "in.mp4", frames=200)
    output = tmp_path / "out.mp4"
    daemon = Daemon("-c", str(fast_config), "--source", str(source), "--output", str(output))
    try:
        daemon.wait_processed(3, timeout=180)
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.finish(timeout=120) == 0, daemon.text()
    finally:
        daemon.process.kill() if daemon.process.poll() is None else None
    processed = run_summary(daemon.text())["processed"]
    info = probe(output)
    assert 3 <= info["frames"] == processed < 200
    assert not list(tmp_path.glob("*.partial"))


def test_drawing_on_the_models_device_makes_the_same_video(tmp_path):
    """render.on_model_device (the GPU path, here on the CPU) draws exactly what the host draws."""
    frames = {}
    for on_device in ("true", "false"):
        output = tmp_path / f"{on_device}.mp4"
        result = run_in_process("run", "--source", "synthetic:street?frames=4&size=192x112", "--output", str(output),
                                "--set", "runtime.device=cpu", "--set", f"render.on_model_device={on_device}")
        assert result.returncode == 0, result.stderr
        assert ("overlay drawn on cpu" in result.stderr) == (on_device == "true")
        frames[on_device] = decode_video(output)
    assert len(frames["true"]) == len(frames["false"]) == 4
    assert all(np.array_equal(a, b) for a, b in zip(frames["true"], frames["false"]))
