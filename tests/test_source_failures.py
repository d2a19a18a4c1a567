"""Sources that cannot work say so at once: an absent camera exits 66; a network source that fails
is named by kind (host not found, refused, timed out, unauthorised, not found, bad stream) with no
library noise on stderr, and shows its state and attempts in the status line and /healthz. The
first-connect rule both ways: a source that never delivered a frame gives up after
source.reconnect.first_connect_s; one that has streamed, or runs under systemd, or is told null,
keeps retrying. Real servers throughout: GStreamer's RTSP server, HTTP servers, bare sockets."""
from __future__ import annotations

import contextlib
import json
import queue
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import DEMO_MODELS, LIVE, Daemon, free_port, http_get, make_video, run_cli, the_error
from rtsp import RtspServer, needs_rtsp

from streamer import control as ctl
from streamer.config import BufferPolicy, Reconnect
from streamer.errors import DataError, InputNotFound, NotPermitted, Unavailable
from streamer.inputs.capture import Capture, Connection, Liveness
from streamer.inputs.sources import LiveOptions, open_source

OUR_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) streamer[\w.]*: ")
OPTIONS = LiveOptions(open_timeout_s=2.0, read_timeout_s=2.0, rtsp_transport="tcp")


def only_our_lines(stderr: str) -> None:
    foreign = [line for line in stderr.splitlines() if not OUR_LINE.match(line)]
    assert not foreign, "lines not from streamer's logger:\n" + "\n".join(foreign)


@contextlib.contextmanager
def http_server(status: int, body: bytes = b"", content_type: str = "text/plain"):
    """An HTTP server on 127.0.0.1 answering every GET with `status` and `body`; yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="camera"')
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def silent_listener():
    """A TCP port that accepts connections (the kernel's backlog) and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def failure(uri: str) -> Exception:
    with pytest.raises((InputNotFound, Unavailable, NotPermitted, DataError)) as caught:
        open_source(uri, None, OPTIONS, force_live=True)
    return caught.value


@pytest.mark.system  # HTTP servers on loopback and a DNS look-up
def test_each_failure_kind_of_an_http_source_is_named():
    error = failure(f"http://127.0.0.1:{free_port()}/video.mjpg")
    assert isinstance(error, Unavailable) and "connection refused: nothing listens at 127.0.0.1:" in str(error)

    error = failure("http://no-such-camera.invalid/video.mjpg")
    assert isinstance(error, InputNotFound) and "host 'no-such-camera.invalid' not found (DNS)" in str(error)

    with http_server(404) as base:
        error = failure(f"{base}/video.mjpg")
    assert isinstance(error, InputNotFound) and "not found (404)" in str(error)

    with http_server(401) as base:
        error = failure(f"http://admin:secret@{base[7:]}/video.mjpg")
    assert isinstance(error, NotPermitted) and "unauthorised (401)" in str(error)
    assert "secret" not in str(error)

    with http_server(200, b"\x00\x17 this is not video at all " * 400, "application/octet-stream") as base:
        error = failure(f"{base}/video.mjpg")
    assert isinstance(error, DataError) and "bad stream" in str(error)

    with silent_listener() as port:
        started = time.monotonic()
        error = failure(f"http://127.0.0.1:{port}/video.mjpg")
    assert isinstance(error, Unavailable) and "timed out: no answer from 127.0.0.1" in str(error)
    assert time.monotonic() - started < 4 * OPTIONS.open_timeout_s + 2, "bounded by the open timeout"


@pytest.mark.system
@needs_rtsp
def test_each_failure_kind_of_an_rtsp_source_is_named(tmp_path):
    video = make_video(tmp_path / "in.mp4", frames=10)
    with RtspServer(video, user="viewer", password="right") as server:
        error = failure(server.url_for("viewer", "s3cret-pw"))
        assert isinstance(error, NotPermitted) and "unauthorised (401)" in str(error) and "s3cret" not in str(error)
        error = failure(server.url_for("viewer", "right").replace("/stream", "/nothing-here"))
        assert isinstance(error, InputNotFound) and "not found (404)" in str(error)
        open_source(server.url_for("viewer", "right"), None, OPTIONS, force_live=True).close()  # the right one opens
    error = failure(f"rtsp://127.0.0.1:{free_port()}/stream")
    assert isinstance(error, Unavailable) and "connection refused" in str(error)
    with silent_listener() as port:
        error = failure(f"rtsp://127.0.0.1:{port}/stream")
    assert isinstance(error, Unavailable) and "timed out" in str(error)


@pytest.mark.system
def test_an_absent_camera_device_exits_66_at_once(tmp_path):
    started = time.monotonic()
    result = run_cli("run", "--source", "/dev/video9", *DEMO_MODELS, cwd=tmp_path)
    assert the_error(result, 66) == "camera /dev/video9: no such device (/dev/video9)"
    assert time.monotonic() - started < 60  # the issue asks 10 s; this bound only catches a retry loop
    only_our_lines(result.stderr)


@pytest.mark.system
def test_a_url_that_never_answers_gives_up_naming_the_failure_and_showing_its_state(tmp_path):
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/x"
    daemon = Daemon("--source", url, *LIVE, "--set", "source.reconnect.first_connect_s=4",
                    "--set", "server.enabled=true", "--set", f"server.port={free_port()}")
    health = None
    try:
        daemon.wait_for(r"status: .*cam0 connecting \(attempt \d+\)", timeout=120)
        metrics_port = int(re.search(r"server on http://127.0.0.1:(\d+)/", daemon.text()).group(1))
        status, body = http_get(metrics_port, "/healthz")
        health = (status, json.loads(body))
        code = daemon.finish(timeout=60)
    finally:
        daemon.terminate() if daemon.process.poll() is None else None
    text = daemon.text()
    assert code == 69, text
    only_our_lines(text)
    assert f"cam0: {url}: connection refused: nothing listens at 127.0.0.1:{port}" in text
    assert re.search(r"no frame within 4 s \(\d+ attempts\), giving up \(source.reconnect.first_connect_s: null retries forever\)", text)
    status, report = health
    assert status == 503
    source = report["sources"]["cam0"]
    assert source["state"] == "connecting" and source["attempt"] >= 1 and source["error"] == "refused"
    assert "last_error" not in source, "without a token: the kind of failure, never its line (it names the host and port)"


def refused_capture(window: float | None, control: ctl.Control) -> Capture:
    """A live source whose every connection attempt is refused, retried every 0.05 s."""
    def refuse():
        raise Unavailable("cam0: rtsp://cam/x: connection refused")

    return Capture(refuse, "cam0", "rtsp://cam/x", queue.Queue(maxsize=2), BufferPolicy.DROP_OLDEST,
                   Liveness(True, 15.0, None, 0.05, 0.05, 30.0, window), control, ctl.Stats())


def test_a_never_connected_source_gives_up_at_its_window_and_without_one_retries_until_stopped():
    bounded, control = refused_capture(0.5, ctl.Control()), ctl.Control()
    started = time.monotonic()
    bounded.run()  # returns once it gives up
    assert 0.5 <= time.monotonic() - started < 5
    assert isinstance(bounded.control.failure, Unavailable) and bounded.control.exit_code == 69
    assert "no frame within 0.5 s" in str(bounded.control.failure) and bounded.attempt >= 5

    forever = refused_capture(None, control)
    thread = threading.Thread(target=forever.run, daemon=True)
    thread.start()
    time.sleep(1.5)  # three times the window above
    assert thread.is_alive() and control.failure is None and forever.attempt >= 10
    assert forever.connection() == Connection("connecting", forever.attempt, "cam0: rtsp://cam/x: connection refused", "unavailable")
    control.stop.set()
    thread.join(5)
    assert not thread.is_alive() and control.exit_code == 0


@pytest.mark.parametrize("setting, systemd, window", [
    ("auto", False, 30.0), ("auto", True, None), (None, False, None), (None, True, None), (7, False, 7.0), (7, True, 7.0),
])
def test_first_connect_auto_is_bounded_at_a_terminal_and_forever_under_systemd(monkeypatch, setting, systemd, window):
    if systemd:  # systemd sets INVOCATION_ID for every service it runs
        monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
    else:
        monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert Reconnect(first_connect_s=setting).first_connect_window() == window


@pytest.mark.system
@needs_rtsp
def test_a_source_that_has_streamed_is_retried_past_the_first_connect_window(tmp_path):
    video = make_video(tmp_path / "in.mp4", frames=50, size=(160, 120), fps=25)
    with RtspServer(video) as server:
        daemon = Daemon("--source", server.url, *LIVE, "--set", "source.reconnect.first_connect_s=1")
        try:
            daemon.wait_processed(1, timeout=120)
            server.kill()
            lost = daemon.wait_for(r"cam0: streaming -> reconnecting", timeout=30)
            daemon.wait_for(r"retrying in .*\(attempt 3\)", timeout=60, after=lost)  # well past the 1 s window
            server.restart()
            daemon.wait_for(r"reconnecting -> streaming after an outage", timeout=60, after=lost)
        finally:
            code = daemon.terminate()
    assert code == 0, daemon.text()
    assert "giving up" not in daemon.text()
