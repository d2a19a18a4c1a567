"""Shared test helpers: small real videos and their frames, a fast configuration, running the real
CLI, a daemon whose log lines are collected, polling, ports. Test files import them
(`from helpers import ...`); the fixtures live in conftest.py."""
from __future__ import annotations

import collections
import contextlib
import fcntl
import io
import logging
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
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

# The bundled demo models: small enough to keep up with a 10-25 fps stream on the CPU (the
# random-init R50 of the fast config does about 1 fps).
DEMO_MODELS = ["--set", "models.semantic.weights=demo", "--set", "models.instance.weights=demo"]

# Live sources: quick retries and short timeouts so faults play out in seconds.
LIVE = [
    *DEMO_MODELS,
    "--set", "source.reconnect.initial_delay_s=0.3", "--set", "source.reconnect.max_delay_s=1.0",
    "--set", "source.open_timeout_s=3", "--set", "runtime.status_interval_s=0.5",
    "--set", "output.segment_seconds=0",  # one video per run, easier to check than segments
]

# `run` arguments of a recorder: a camera-paced synthetic street (RECORDER[1] is its URI,
# RECORDER[2:] the rest) and the demo models at a small input size: keeps up on 2 cores.
RECORDER_FPS = 8
RECORDER = [
    "--source", f"synthetic:street?seed=7&size=160x96&fps={RECORDER_FPS}&realtime=1",
    *DEMO_MODELS,
    "--set", "models.semantic.input_size=[160,96]", "--set", "models.instance.min_size=96",
    "--set", "models.instance.max_size=160", "--set", "runtime.device=cpu", "--set", "runtime.torch_threads=1",
]


def deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = deep_merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def write_fast_config(folder: Path) -> Path:
    """FOLDER/fast.yaml: config.yaml with FAST_OVERRIDES (small random-init models on the CPU)."""
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    path = folder / "fast.yaml"
    path.write_text(yaml.safe_dump(deep_merge(base, FAST_OVERRIDES)))
    return path


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


def readable_frames(path: Path) -> int:
    """Frames PyAV decodes before the first error (a file cut off by a kill ends in a damaged fragment)."""
    count = 0
    try:
        with av.open(str(path)) as container:
            for _ in container.decode(video=0):
                count += 1
    except av.FFmpegError:
        pass
    return count


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


def decode_video(path: Path) -> list[np.ndarray]:
    """Every frame of the video, decoded with PyAV, as BGR arrays."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x, y, width, height) of the True pixels of a 2-D mask (COCO's bbox)."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the True pixels of a 2-D mask, pixel edges (streamer.boxes)."""
    x, y, w, h = mask_bbox(mask)
    return float(x), float(y), float(x + w), float(y + h)


def boxes_frame(boxes: list[tuple[int, int, int, int, int]], size=(120, 200)) -> tuple[np.ndarray, tuple]:
    """A map with road (category 1) and things (category, x, y, w, h), numbered by rank in the frame as
    the fusion does: the first listed is instance 1 of its category."""
    from streamer.frames import LABEL_DIVISOR, Segment

    panoptic = np.full(size, 1 * LABEL_DIVISOR, np.int32)
    counts: collections.Counter = collections.Counter()
    for category, x, y, w, h in boxes:
        counts[category] += 1
        panoptic[y:y + h, x:x + w] = category * LABEL_DIVISOR + counts[category]
    segments = []
    for value in np.unique(panoptic):
        mask = panoptic == value
        category, instance = divmod(int(value), LABEL_DIVISOR)
        segments.append(Segment(int(value), category, instance > 0, 0.9 if instance else None, int(mask.sum()), mask_box(mask)))
    return panoptic, tuple(segments)


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


def run_in_process(*args: str) -> subprocess.CompletedProcess:
    """`streamer ARGS` through streamer.cli.main in this process, answered like run_cli. It spares the
    ~10 s a fresh process spends importing torch, for tests of what a run produces; the command
    line itself (exit codes, signals, logs of a fresh process) is tested through run_cli."""
    from streamer.cli import main

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(list(args))
    finally:
        root.handlers[:], root.level = handlers, level  # main() points the root logger at our stderr
    return subprocess.CompletedProcess(["streamer", *args], code, stdout.getvalue(), stderr.getvalue())


def popen_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "streamer", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or cli_env(), cwd=cwd,
    )


# The daemon's periodic status line ("status: 9.8 fps, 123 processed, ...") and its last line.
STATUS_PROCESSED = re.compile(r"status: .* (\d+) processed")
DONE = re.compile(r"done: (?P<read>\d+) frames read, (?P<processed>\d+) processed, (?P<dropped>\d+) dropped, "
                  r"(?P<reconnects>\d+) reconnects")


def processed_in(line: str) -> int:
    """The processed count of a status line; 0 for any other line."""
    match = STATUS_PROCESSED.search(line)
    return int(match.group(1)) if match else 0


def run_summary(stderr: str) -> dict[str, int]:
    """The counts of the run's "done:" line: read, processed, dropped, reconnects."""
    match = DONE.search(stderr)
    assert match, f"no 'done:' line in\n{stderr}"
    return {key: int(value) for key, value in match.groupdict().items()}


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


def wait_until(check: Callable[[], object], timeout: float = 60.0, every: float = 0.1,
               what: str | Callable[[], str] = "the condition") -> object:
    """Call `check` until it returns something truthy and return that; AssertionError naming `what`
    (a string, or a function that says it at the time) once `timeout` seconds have passed.
    `check` may itself raise to give up early."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what() if callable(what) else what}")
        time.sleep(every)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (RtspServer() without a port avoids even that race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def busy_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A TCP port that another socket listens on for the duration of the block."""
    with socket.socket() as holder:
        holder.bind((host, 0))
        holder.listen()
        yield holder.getsockname()[1]


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

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.process = popen_cli("run", *args, env=env)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        for line in self.process.stderr:
            self.lines.append((time.monotonic(), line))

    def wait_for(self, pattern: str, timeout: float = 60.0, after: float = 0.0) -> float:
        """Time at which a line matching `pattern` arrived (after `after`)."""
        return self._wait(lambda line: re.search(pattern, line), f"no line matching {pattern!r}", timeout, after)

    def wait_processed(self, count: int = 1, timeout: float = 60.0) -> float:
        """Time at which a status line said at least `count` frames were processed."""
        return self._wait(lambda line: processed_in(line) >= count, f"no status line with {count}+ processed", timeout)

    def _wait(self, match: Callable[[str], object], what: str, timeout: float, after: float = 0.0) -> float:
        def arrived() -> float | None:
            ended = self.process.poll() is not None and not self._reader.is_alive()  # then every line is in
            for at, line in list(self.lines):
                if at >= after and match(line):
                    return at
            if ended:  # waiting longer cannot help
                raise AssertionError(f"{what}: the daemon ended (exit {self.process.poll()}):\n{self.text()}")
            return None

        return wait_until(arrived, timeout, every=0.05, what=lambda: f"{what} (exit {self.process.poll()}):\n{self.text()}")

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


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at `folder` (e.g. options "ro,size=64k" or "size=48k"); the test skips,
    saying why, where this process may not mount (not root, no mount namespace)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def random_rectangles(rng: np.random.Generator, base: np.ndarray, values: list[int], count: int) -> np.ndarray:
    """`base` with `count` random rectangles painted in values drawn from `values` (random panoptic maps)."""
    out = base.copy()
    h, w = out.shape
    for _ in range(count):
        y, x = rng.integers(0, h), rng.integers(0, w)
        out[y:y + rng.integers(1, h // 2 + 1), x:x + rng.integers(1, w // 2 + 1)] = rng.choice(values)
    return out


@contextlib.contextmanager
def serving(*args: str, token: str | None) -> Iterator[Daemon]:
    """A recorder daemon (RECORDER, then `args`) with its HTTP server on a free port (`.port`) and
    `token` (None: none), once it has processed 3 frames; it must end cleanly."""
    port = free_port()
    daemon = Daemon(*RECORDER, *args, "--set", "server.enabled=true", "--set", f"server.port={port}",
                    *(["--set", f"server.token={token}"] if token else []), "--set", "runtime.status_interval_s=0.5")
    daemon.port = port
    try:
        daemon.wait_processed(3, timeout=120)
        yield daemon
    finally:
        assert daemon.terminate() == 0, daemon.text()


def cli_in_pty(tmp_path, size: tuple[int, int], *args: str, timeout: float = 120) -> str:
    """`streamer ARGS...` with stdin, stdout and stderr a pty of `size` (rows, columns); what it wrote there."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    env = {k: v for k, v in cli_env().items() if k not in ("COLUMNS", "LINES")}  # the pty's size only
    command = [sys.executable, "-m", "streamer", *args]
    process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=tmp_path)
    os.close(slave)
    output, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process closed its end
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(10) == 0, output.decode(errors="replace")
    finally:
        process.kill()
        os.close(master)
    return output.decode()


def screen_lines(output: str) -> list[str]:
    """The terminal's lines as they end up on screen: a carriage return goes back to the line's
    start, and what follows overwrites what was there."""
    lines = []
    for raw in output.replace("\r\n", "\n").split("\n"):
        shown = ""
        for part in raw.split("\r"):
            shown = part + shown[len(part):]
        lines.append(shown.rstrip())
    return lines
