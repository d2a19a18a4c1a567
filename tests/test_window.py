"""The live window, for real: Xvfb, a screenshot of the window, and a key press that stops the run."""
from __future__ import annotations

import shutil
import subprocess
import time

import cv2
import numpy as np
import pytest
from helpers import cli_env, decode_video, make_video, moving_pattern, popen_cli, wait_until

TOOLS = ("Xvfb", "xdotool", "import")
pytestmark = [pytest.mark.system, pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in TOOLS),
    reason=f"needs {', '.join(TOOLS)} (Debian packages xvfb, xdotool, imagemagick; .ci/run installs them)",
)]


@pytest.fixture
def xvfb():
    """A private X server; yields its DISPLAY value."""
    read_fd, write_fd = __import__("os").pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "800x600x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    __import__("os").close(write_fd)
    with open(read_fd) as pipe:
        display = ":" + pipe.readline().strip()
    yield display
    server.terminate()
    server.wait(10)


def x(display: str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, env={**cli_env(), "DISPLAY": display}, capture_output=True, text=True, timeout=30)


def test_window_shows_the_overlaid_frame_and_q_stops(tmp_path, fast_config, xvfb):
    size = (192, 144)
    source = make_video(tmp_path / "in.mp4", frames=300, size=size)
    output = tmp_path / "out.mp4"
    process = popen_cli(
        "run", "-c", str(fast_config), "--source", str(source), "--output", str(output), "--display",
        # Two stuff classes in loud colours and no instances: every pixel is visibly overlaid.
        "--set", "models.semantic.classes=[{name: red, color: [255, 0, 0]}, {name: green, color: [0, 255, 0]}]",
        "--set", "models.instance.class_map={}", "--set", "fusion.stuff_area_min=0",
        env={**cli_env(), "DISPLAY": xvfb},
    )
    try:
        def xdotool(*command: str) -> str:
            """What xdotool says, as long as the run goes on."""
            assert process.poll() is None, process.stderr.read()
            return x(xvfb, "xdotool", *command).stdout

        window = wait_until(lambda: xdotool("search", "--name", "streamer").split("\n")[0],
                            timeout=120, every=0.5, what="a window")
        wait_until(lambda: f"Geometry: {size[0]}x{size[1]}" in xdotool("getwindowgeometry", window),
                   timeout=60, every=0.5, what="the window taking the frame's size")
        time.sleep(1.0)  # a few frames later
        shot_path = tmp_path / "shot.png"
        assert x(xvfb, "import", "-window", "root", str(shot_path)).returncode == 0
        x(xvfb, "xdotool", "windowactivate", "--sync", window)
        x(xvfb, "xdotool", "key", "--window", window, "q")
        assert process.wait(timeout=60) == 0, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
    assert "window closed: stopping" in process.stderr.read()

    screenshot = cv2.imread(str(shot_path))
    shown = decode_video(output)
    assert 0 < len(shown) < 300  # q stopped the run early
    # The screenshot holds one of the overlaid output frames, pixel for pixel (up to codec noise),
    # and not the raw input frame at that spot.
    best = max(shown, key=lambda frame: cv2.matchTemplate(screenshot, frame, cv2.TM_CCOEFF_NORMED).max())
    result = cv2.matchTemplate(screenshot, best, cv2.TM_CCOEFF_NORMED)
    _, score, _, (left, top) = cv2.minMaxLoc(result)
    assert score > 0.9
    crop = screenshot[top : top + size[1], left : left + size[0]].astype(float)
    overlaid = np.abs(crop - best).mean()
    raw = min(np.abs(crop - moving_pattern(i, *size)).mean() for i in range(300))
    assert overlaid < 20 and raw > 3 * overlaid, (overlaid, raw)
