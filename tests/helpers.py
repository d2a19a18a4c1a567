"""Shared test helpers: small real videos, a fast configuration, running the real CLI, a daemon
whose log lines are collected, polling. Test files import them (`from helpers import ...`); the
fixtures live in conftest.py."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Random-init models made small and quick for CPU tests (the bundled demo models are tested on
# their own); everything else as in config.yaml.
FAST_OVERRIDES = {
    "models": {
        "semantic": {"weights": "none", "encoder": "resnet18", "input_size": [128, 96]},
        "instance": {"weights": "none", "min_size": 96, "max_size": 160},
    },
    "runtime": {"device": "cpu", "torch_threads": 1, "status_interval_s": 1},
}


def deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = deep_merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def moving_pattern(index: int, width: int, height: int) -> np.ndarray:
    """A frame with a textured background and a bright square that moves: easy to tell frames apart."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x * 3 + index * 5) % 256, (y * 4) % 256, ((x + y) * 2) % 256], axis=-1).astype(np.uint8)
    size = max(8, height // 4)
    left = (index * 7) % max(1, width - size)
    image[height // 3 : height // 3 + size, left : left + size] = (40, 220, 250)
    return image


def make_video(path: Path, frames: int = 12, size: tuple[int, int] = (160, 120), fps: Fraction | int = 10,
               gop: int | None = None) -> Path:
    """An H.264 MP4 written with PyAV (BGR frames from moving_pattern); `gop`: keyframe interval."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(moving_pattern(index, width, height), format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def probe(path: Path) -> dict:
    """Decode every frame with PyAV: count, size, frame rate, and the frames' timestamps."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [frame.time for frame in container.decode(stream)]
        return {
            "frames": len(times),
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "rate": stream.average_rate,
            "codec": stream.codec_context.name,
            "times": times,
        }


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    return env


def run_cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m streamer ARGS` in a fresh process, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args],
        capture_output=True, text=True, timeout=timeout, env=env or cli_env(), cwd=cwd,
    )


def popen_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "streamer", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or cli_env(), cwd=cwd,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line or "error:" in line]


def the_error(result, code: int) -> str:
    """Assert the exit code, one ERROR line and no traceback; return the message after the logger name."""
    detail = f"exit {result.returncode}\n--- stderr ---\n{result.stderr}\n--- stdout ---\n{result.stdout[-2000:]}"
    assert result.returncode == code, detail
    assert "Traceback" not in result.stderr, detail
    lines = error_lines(result.stderr)
    assert len(lines) == 1, detail
    match = re.search(r" ERROR streamer[\w.]*: (.+)$", lines[0])
    assert match, detail  # our logger's line, not argparse's or a library's complaint
    return match.group(1)


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""  # not listening (yet)


class Daemon:
    """`streamer run` in a subprocess whose stderr lines are collected, each with the time it arrived."""

    def __init__(self, *args: str):
        self.process = popen_cli("run", *args)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        for line in self.process.stderr:
            self.lines.append((time.monotonic(), line))

    def wait_for(self, pattern: str, timeout: float = 60.0, after: float = 0.0) -> float:
        """Time at which a line matching `pattern` arrived (after `after`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                if at >= after and re.search(pattern, line):
                    return at
            if self.process.poll() is not None and not self._reader.is_alive():
                break  # the daemon ended and every line is in: waiting longer cannot help
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s (exit {self.process.poll()}):\n{self.text()}")

    def processed(self) -> int:
        counts = [int(m.group(1)) for _, line in self.lines if (m := re.search(r"status: .* (\d+) processed", line))]
        return max(counts, default=0)

    def finish(self, timeout: float = 60.0) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def terminate(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.finish()

    def text(self) -> str:
        return "".join(line for _, line in self.lines)
