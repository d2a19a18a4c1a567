"""Helpers for tests against a real RTSP server (GStreamer's, run by the system Python).

    from rtsp import RtspServer, needs_rtsp, read_frames

    @needs_rtsp
    def test_something(tmp_path):
        video = make_video(tmp_path / "in.mp4", frames=50, fps=25)
        with RtspServer(video) as server:          # started; killed on exit whatever happens
            result = read_frames(server.url, 10)   # OpenCV in a subprocess, over TCP
            server.kill()                          # or .stop(), .freeze()/.thaw(), .restart()

The server (tests/rtsp_server.py) loops the file forever; each client starts at its first frame.
It needs /usr/bin/python3 with PyGObject and GStreamer's RTSP server (Debian: python3-gi,
python3-gst-1.0, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-rtsp, gstreamer1.0-plugins-base, -good,
-bad/-ugly as available); ``needs_rtsp`` skips a test, with the reason, where they are missing.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

HERE = Path(__file__).resolve().parent
SERVER_SCRIPT = HERE / "rtsp_server.py"
SYSTEM_PYTHON = os.environ.get("RTSP_SERVER_PYTHON", "/usr/bin/python3")
NEEDED_ELEMENTS = ("filesrc", "qtdemux", "h264parse", "appsink", "appsrc", "rtph264pay")

_PROBE = f"""
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
missing = [name for name in {NEEDED_ELEMENTS!r} if Gst.ElementFactory.find(name) is None]
print("missing GStreamer elements: " + ", ".join(missing) if missing else "ok")
"""


@functools.lru_cache(maxsize=None)
def rtsp_available() -> tuple[bool, str]:
    """Whether the test RTSP server can run here, and if not, why (the answer is cached)."""
    if not SERVER_SCRIPT.is_file():
        return False, f"{SERVER_SCRIPT} is missing"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False, f"no {SYSTEM_PYTHON} to run the RTSP server"
    try:
        probe = subprocess.run([SYSTEM_PYTHON, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, f"{SYSTEM_PYTHON} failed: {error}"
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return False, (f"{SYSTEM_PYTHON} cannot load GStreamer's RTSP server ({last}); install "
                       "python3-gi python3-gst-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp "
                       "gstreamer1.0-plugins-base gstreamer1.0-plugins-good")
    if probe.stdout.strip() != "ok":
        return False, probe.stdout.strip()
    return True, f"GStreamer RTSP server via {SYSTEM_PYTHON}"


needs_rtsp = pytest.mark.skipif(not rtsp_available()[0], reason=f"no RTSP test server: {rtsp_available()[1]}")


class RtspServerError(RuntimeError):
    pass


class RtspServer:
    """tests/rtsp_server.py in a subprocess, serving ``video_path`` at rtsp://host:port/path.

    port=None lets the system pick a free port at the first start; restart() keeps it.
    """

    def __init__(self, video_path, port: int | None = None, path: str = "/stream", user: str | None = None,
                 password: str | None = None, host: str = "127.0.0.1", ready_timeout: float = 20.0):
        if (user is None) != (password is None):
            raise ValueError("user and password go together")
        self.video_path = Path(video_path)
        self.port, self.path, self.host = port, path if path.startswith("/") else "/" + path, host
        self.user, self.password = user, password
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen | None = None
        self.frozen = False
        self.start_seconds: float | None = None  # how long the last start() took until READY
        self._dir = Path(tempfile.mkdtemp(prefix="rtsp-server-"))
        self._stdout_path, self._stderr_path = self._dir / "stdout", self._dir / "stderr"
        self._stdout_path.touch()
        self._stderr_path.touch()

    # --- addresses -------------------------------------------------------------------------
    def url_for(self, user: str | None = None, password: str | None = None) -> str:
        """The stream's URL with the given credentials (none: no credentials in the URL)."""
        if self.port is None:
            raise RtspServerError("the server has no port yet: start() it first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        auth = f"{quote(user, safe='')}:{quote(password or '', safe='')}@" if user is not None else ""
        return f"rtsp://{auth}{host}:{self.port}{self.path}"

    @property
    def url(self) -> str:
        """The stream's URL, with the server's credentials in it when it has some."""
        return self.url_for(self.user, self.password)

    @property
    def plain_url(self) -> str:
        """The stream's URL without credentials."""
        return self.url_for()

    # --- life cycle --------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, retry_for: float = 5.0) -> "RtspServer":
        """Start the server and wait for READY. A port still held elsewhere is retried for ``retry_for`` s."""
        if self.running:
            raise RtspServerError("already running")
        if not self.video_path.is_file():
            raise RtspServerError(f"no video at {self.video_path}")
        began = time.monotonic()
        deadline = began + retry_for
        while True:
            ready, detail = self._spawn()
            if ready:
                self.start_seconds = time.monotonic() - began
                return self
            if "cannot listen" in detail and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            raise RtspServerError(f"RTSP server did not start ({detail})\n--- server stderr ---\n{self.log()}")

    def _spawn(self) -> tuple[bool, str]:
        command = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--file", str(self.video_path), "--host", self.host,
                   "--port", str(self.port or 0), "--path", self.path, "--watch-stdin"]
        if self.user is not None:
            command += ["--user", self.user, "--password", self.password]
        stdout_offset = self._stdout_path.stat().st_size
        stderr_offset = self._stderr_path.stat().st_size
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self._stdout_path, "ab") as stdout, open(self._stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=stdout, stderr=stderr, env=env,
                                            start_new_session=True)
        self.frozen = False
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            with open(self._stdout_path, "rb") as stdout:
                stdout.seek(stdout_offset)
                for line in stdout.read().decode(errors="replace").splitlines():
                    if line.startswith("READY "):
                        port = int(line.split()[1].rsplit(":", 1)[1].split("/", 1)[0])
                        if self.port not in (None, port):
                            self.kill()
                            return False, f"listens on port {port}, not {self.port}"
                        self.port = port
                        return True, ""
            code = self.process.poll()
            if code is not None:
                self._close_stdin()
                with open(self._stderr_path, "rb") as stderr:
                    stderr.seek(stderr_offset)
                    return False, f"exit code {code}: {stderr.read().decode(errors='replace').strip()[-500:]}"
            time.sleep(0.02)
        self.kill()
        return False, f"no READY within {self.ready_timeout} s"

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a word to its clients (sockets closed by the kernel)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.frozen = False
        self._close_stdin()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code, None if it was not running."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.thaw()
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close_stdin()
        return self.process.returncode

    def freeze(self) -> None:
        """SIGSTOP: connections stay open but nothing more is sent (a hung camera)."""
        if not self.running:
            raise RtspServerError("not running")
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT after freeze()."""
        if self.frozen and self.running:
            os.kill(self.process.pid, signal.SIGCONT)
        self.frozen = False

    def restart(self, retry_for: float = 5.0) -> "RtspServer":
        """Kill the server if it runs, then start it again on the same port."""
        self.kill()
        return self.start(retry_for=retry_for)

    def log(self) -> str:
        """Everything the server wrote on stderr, over all its starts."""
        return self._stderr_path.read_text(errors="replace")

    def _close_stdin(self) -> None:
        if self.process is not None and self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except OSError:
                pass

    def close(self) -> None:
        """Thaw, kill and remove the temporary files. Safe to call more than once."""
        try:
            self.thaw()
        except ProcessLookupError:
            pass
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "RtspServer":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *_exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "frozen" if self.frozen else "running" if self.running else "stopped"
        return f"<RtspServer {self.plain_url if self.port else self.path} {state} pid={self.pid}>"


# --- an OpenCV client in a subprocess ------------------------------------------------------------
# OPENCV_FFMPEG_CAPTURE_OPTIONS is read process-wide, so each client gets its own process. It prints
# one JSON object a line: open, frame (one per frame), then fail or done; "t" is seconds since just
# before VideoCapture() was called, "at" is time.monotonic() (the same clock as the test's, on Linux),
# "took"/"blocked" how long that read() took.
_CLIENT = r"""
import json, sys, time
import cv2
url, frames, open_ms, read_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def say(**event):
    print(json.dumps(event), flush=True)
t0 = time.monotonic()
params = []
if open_ms > 0: params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, open_ms]
if read_ms > 0: params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_ms]
cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
opened = cap.isOpened()
say(event="open", ok=opened, t=time.monotonic() - t0, at=time.monotonic())
if not opened:
    sys.exit(0)
count = 0
while frames <= 0 or count < frames:
    started = time.monotonic()
    ok, image = cap.read()
    now = time.monotonic()
    if not ok or image is None:
        say(event="fail", n=count, t=now - t0, at=now, blocked=now - started)
        break
    count += 1
    say(event="frame", n=count, t=now - t0, at=now, took=now - started,
        ms=cap.get(cv2.CAP_PROP_POS_MSEC), shape=list(image.shape))
else:
    say(event="done", n=count, t=time.monotonic() - t0)
cap.release()
"""


class OpenCvClient:
    """cv2.VideoCapture(url, CAP_FFMPEG) reading in a subprocess of this Python (the venv's).

    frames=0 reads until a read fails. transport "tcp" or "udp" goes in OPENCV_FFMPEG_CAPTURE_OPTIONS
    (None leaves FFmpeg's default). Timeouts in milliseconds; 0 leaves OpenCV's default (30 s).
    """

    def __init__(self, url: str, frames: int = 0, transport: str | None = "tcp", open_timeout_ms: int = 5000,
                 read_timeout_ms: int = 5000, python: str = sys.executable):
        env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_CAPTURE_OPTIONS"}
        if transport:
            env["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = f"rtsp_transport;{transport}"
        env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", OPENCV_LOG_LEVEL=env.get("OPENCV_LOG_LEVEL", "ERROR"))
        self.events: list[dict] = []
        self._changed = threading.Condition()
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [python, "-c", _CLIENT, url, str(frames), str(open_timeout_ms), str(read_timeout_ms)],
            stdout=subprocess.PIPE, stderr=self._stderr, env=env, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self.events.append({"event": "exit"})
            self._changed.notify_all()

    def _wait(self, predicate, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.events), timeout)

    def wait_frames(self, count: int, timeout: float = 15.0) -> int:
        """Wait until ``count`` frames were read or the client ended; the number read."""
        self._wait(lambda events: self.frames >= count or any(e["event"] == "exit" for e in events), timeout)
        return self.frames

    def result(self, timeout: float = 30.0) -> dict:
        """Wait for the client to end (killed after ``timeout``) and sum up what happened."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(5)
        return self.summary()

    @property
    def frames(self) -> int:
        return sum(1 for event in list(self.events) if event["event"] == "frame")

    def summary(self) -> dict:
        events = list(self.events)
        opened = next((e for e in events if e["event"] == "open"), None)
        frames = [e for e in events if e["event"] == "frame"]
        end = next((e for e in events if e["event"] in ("fail", "done")), None)
        return {
            "opened": bool(opened and opened["ok"]),
            "open_s": opened["t"] if opened else None,
            "frames": len(frames),
            "shape": tuple(frames[0]["shape"]) if frames else None,
            "first_frame_s": frames[0]["t"] if frames else None,
            "last_frame_s": frames[-1]["t"] if frames else None,
            "failed": bool(end and end["event"] == "fail"),
            "blocked_s": end.get("blocked") if end else None,  # how long the failing read() took
            "end_s": end["t"] if end else None,
            "returncode": self.process.returncode,
        }

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(5)
        self._stderr.close()

    def __enter__(self) -> "OpenCvClient":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def read_frames(url: str, frames: int, timeout: float = 30.0, **options) -> dict:
    """Open ``url`` with OpenCV in a subprocess, read up to ``frames`` frames; OpenCvClient.summary()."""
    with OpenCvClient(url, frames=frames, **options) as client:
        return client.result(timeout)
