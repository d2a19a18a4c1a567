"""Who the HTTP server answers, over real sockets against real daemons: Host names (DNS rebinding),
what /healthz shows without a token, IPv6 hosts, trickling and idle clients beside health checks,
the ?token= redirect and its cookie, and a second daemon on the same port."""
from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import threading
import time
import urllib.parse

import pytest
from helpers import RECORDER, Daemon, free_port, run_cli, run_in_process, serving, the_error, wait_until

from streamer.service.http import HEAD_TIMEOUT_S, MAX_WAITING, BoundedHandler, BoundedHTTPServer

pytestmark = pytest.mark.system  # every test here starts a process or a server

TOKEN = "server-access-test-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SERVER = ["--set", "server.enabled=true", "--set", "runtime.status_interval_s=0.5"]
PATHS = ["/", "/live/cam0", "/live/cam0.jpg", "/live/cam0.mjpg", "/live/cam0.mp4", "/api/status", "/metrics", "/healthz", "/common.js"]


def request(port: int, raw: bytes, host: str = "127.0.0.1", family: int = socket.AF_INET) -> tuple[int, dict[str, str], bytes]:
    """Send `raw` as it is (any Host, any target) on a fresh connection; the status, headers and the
    first bytes of the body (a stream is cut off after them)."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect((host, port))
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < 4096:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def get(port: int, path: str, host: str | None = "localhost", headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    lines = [f"GET {path} HTTP/1.1"] + ([f"Host: {host}"] if host is not None else [])
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return request(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


@pytest.fixture(scope="module")
def open_daemon():
    """A token-free recorder on loopback that also answers to nvr.example (server.allowed_hosts)."""
    with serving("--set", "server.allowed_hosts=[nvr.example]", "--set", "server.max_viewers=2", token=None) as daemon:
        yield daemon


# --- DNS rebinding: without a token, only loopback names and the listed ones ---

@pytest.mark.parametrize("host", ["evil.example", f"evil.example:{9108}", "127.0.0.1.nip.io", "localhost.evil.example",
                                  "192.168.1.20", "nvr.example.evil.example", "", "127.0.0.1:1@evil.example", "[::1]x.evil.example",
                                  "localhost:80 evil.example"])
def test_a_token_free_server_refuses_other_host_names_on_every_endpoint(open_daemon, host):
    for path in PATHS:
        status, _, body = get(open_daemon.port, path, host)
        assert status == 421, (host, path, status)
        assert b"cam0" not in body and b"synthetic" not in body


def test_an_absolute_request_target_names_the_host_too(open_daemon):
    status, _, _ = request(open_daemon.port, b"GET http://evil.example/api/status HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 421
    status, _, body = request(open_daemon.port, b"GET http://localhost/api/status HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    assert status == 200 and b"cam0" in body
    assert request(open_daemon.port, b"GET /api/status HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n")[0] == 400


@pytest.mark.parametrize("host", ["localhost", "localhost:{port}", "LocalHost.:{port}", "127.0.0.1", "127.0.0.1:{port}", "127.8.9.10",
                                  "[::1]", "[::1]:{port}", "nvr.example", "NVR.example:{port}", None])
def test_loopback_names_and_the_listed_ones_are_served(open_daemon, host):
    host = host.format(port=open_daemon.port) if host else None  # None: no Host header (HTTP/1.0: no browser)
    status, _, body = get(open_daemon.port, "/api/status", host)
    assert status == 200 and json.loads(body)["sources"]["cam0"]["state"] == "streaming"
    assert get(open_daemon.port, "/live/cam0.jpg", host)[0] == 200
    assert get(open_daemon.port, "/healthz", host)[0] == 200


def test_no_page_of_another_site_may_embed_what_a_token_free_server_serves(open_daemon):
    """An <img src="http://127.0.0.1:9108/live/cam0.jpg"> on any web site would pass the Host check:
    the browser is told to load it only for this site's pages."""
    for path in ("/live/cam0.jpg", "/live/cam0.mjpg", "/api/status", "/"):
        status, headers, _ = get(open_daemon.port, path)
        assert status == 200 and headers["Cross-Origin-Resource-Policy"] == "same-site", path
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Server"] == "streamer", path


def test_allowed_hosts_are_names_or_addresses_only():
    for bad in ("http://nvr.example", "nvr.example:9108", "*.example", "[::1]", "nvr example"):
        message = the_error(run_in_process("check-config", "--set", "server.enabled=true", "--set", f"server.allowed_hosts=['{bad}']"), 78)
        assert message.startswith("command line: server.allowed_hosts"), message
    assert run_in_process("check-config", "--set", "server.allowed_hosts=[nvr.lan, 192.168.1.20, 'fe80::1']").returncode == 0


# --- what a token-free request sees: ids, states, kinds of failure; never a URL, host or path ---

def test_without_a_token_healthz_names_the_kind_of_failure_never_the_camera(tmp_path):
    port, camera_port = free_port(), free_port()
    url = f"rtsp://viewer:hunter2@127.0.0.1:{camera_port}/secret-path/stream1?channel=7"
    secrets = ["hunter2", "secret-path", f"{camera_port}", "rtsp", "channel", "stream1"]
    token_free = Daemon("--source", url, "--set", "models.semantic.weights=demo", "--set", "models.instance.weights=demo", *SERVER,
                        "--set", f"server.port={port}", "--set", "source.reconnect.first_connect_s=null",
                        "--set", "source.open_timeout_s=1", "--set", "source.reconnect.initial_delay_s=0.3",
                        "--set", "source.reconnect.max_delay_s=0.5")
    try:
        token_free.wait_for(r"status: .*cam0 connecting \(attempt [2-9]", timeout=120)
        status, _, body = get(port, "/healthz")
        report = json.loads(body)
        assert status == 503 and report["sources"]["cam0"]["error"] == "refused", report
        assert set(report["sources"]["cam0"]) == {"state", "attempt", "error", "last_frame_age_s"}
        served = {path: get(port, path)[2].decode("latin-1") for path in PATHS if not path.endswith((".mjpg", ".mp4"))}
        served["404"] = get(port, "/live/nothing.jpg")[2].decode()
        served["421"] = get(port, "/healthz", "evil.example")[2].decode()
        for path, text in served.items():
            assert not any(secret in text for secret in secrets), (path, text)
    finally:
        assert token_free.terminate() == 0, token_free.text()


def test_with_a_token_the_failures_line_goes_only_to_who_presents_it(tmp_path):
    port, camera_port = free_port(), free_port()
    url = f"rtsp://127.0.0.1:{camera_port}/secret-path"
    daemon = Daemon("--source", url, "--set", "models.semantic.weights=demo", "--set", "models.instance.weights=demo", *SERVER,
                    "--set", f"server.port={port}", "--set", f"server.token={TOKEN}", "--set", "source.reconnect.first_connect_s=null",
                    "--set", "source.open_timeout_s=1", "--set", "source.reconnect.initial_delay_s=0.3",
                        "--set", "source.reconnect.max_delay_s=0.5")
    try:
        daemon.wait_for(r"status: .*cam0 connecting \(attempt [2-9]", timeout=120)
        anyone = json.loads(get(port, "/healthz", "anything.example")[2])["sources"]["cam0"]  # a token server checks no Host
        assert anyone["error"] == "refused" and "last_error" not in anyone
        assert "secret-path" not in json.dumps(anyone)
        holder = json.loads(get(port, "/healthz", headers=AUTH)[2])["sources"]["cam0"]
        assert holder["error"] == "refused" and f"nothing listens at 127.0.0.1:{camera_port}" in holder["last_error"]
    finally:
        assert daemon.terminate() == 0, daemon.text()


# --- the ?token= redirect and its cookie ---

@pytest.fixture(scope="module")
def token_daemon():
    with serving(token=TOKEN) as daemon:
        yield daemon


@pytest.mark.parametrize("target", ["//evil.example/", "/\\evil.example/", "/\\\\evil.example", "/live/\\\\evil.example",
                                    "/live/%2F%2Fevil.example", "/live//evil.example", "/%2F%2Fevil.example", "/live/cam0/..%2F..%2F",
                                    "/live/https:%2F%2Fevil.example", "/live/cam1", "/./", "http://evil.example/", "/live/cam0", "/"])
def test_the_token_redirect_never_leaves_the_server(token_daemon, target):
    status, headers, _ = request(token_daemon.port, f"GET {target}?token={TOKEN} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    if status != 303:
        assert "Location" not in headers and status in (400, 404), (target, status)
        return
    location = headers["Location"]
    base = f"http://localhost:{token_daemon.port}{urllib.parse.urlsplit(target).path or '/'}"
    landed = urllib.parse.urlsplit(urllib.parse.urljoin(base, location.replace("\\", "/")))
    assert landed.netloc == f"localhost:{token_daemon.port}" and not location.startswith(("/", "\\")) and ":" not in location
    assert location in ("./", "cam0"), location


def test_the_cookie_holds_a_value_derived_from_the_token_never_the_token(token_daemon):
    status, headers, _ = get(token_daemon.port, f"/live/cam0?token={TOKEN}")
    assert status == 303
    cookie = headers["Set-Cookie"].split(";")[0]
    name, _, value = cookie.partition("=")
    assert name == "streamer_token" and TOKEN not in headers["Set-Cookie"] and len(value) == 64
    assert get(token_daemon.port, "/api/status", headers={"Cookie": cookie})[0] == 200
    assert get(token_daemon.port, "/api/status", headers={"Authorization": f"Bearer {value}"})[0] == 401, "the cookie is no bearer token"
    assert get(token_daemon.port, "/api/status", headers={"Cookie": f"streamer_token={TOKEN}"})[0] == 401, "nor the token a cookie"


def test_the_heatmap_follows_the_live_views_token_rules(token_daemon):
    port = token_daemon.port
    assert get(port, "/live/cam0/heatmap.png")[0] == 401
    status, headers, body = get(port, "/live/cam0/heatmap.png", headers=AUTH)
    assert status == 200 and headers["Content-Type"] == "image/png" and body.startswith(b"\x89PNG"), (status, body[:80])
    assert get(port, "/live/cam0/heatmap.png?layer=ground", headers=AUTH)[0] == 200
    assert get(port, "/live/cam0/heatmap.png?layer=bogus", headers=AUTH)[0] == 400
    assert get(port, "/live/cam1/heatmap.png", headers=AUTH)[0] == 404  # not a configured source
    assert get(port, "/live/cam0/heatmap.png?category=unicorn", headers=AUTH)[0] == 404


# --- IPv6 ---

def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_an_ipv6_host_passes_check_config_and_serves_over_ipv6():
    assert run_in_process("check-config", "--set", "server.enabled=true", "--set", "server.host='::1'").returncode == 0
    port = free_port()
    daemon = Daemon(*RECORDER, *SERVER, "--set", "server.host='::1'", "--set", f"server.port={port}")
    try:
        daemon.wait_processed(2, timeout=120)
        assert f"server on http://[::1]:{port}/" in daemon.text()
        for host in (f"[::1]:{port}", f"localhost:{port}"):
            status, _, body = request(port, f"GET /api/status HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), "::1", socket.AF_INET6)
            assert status == 200 and "cam0" in json.loads(body)["sources"]
        assert request(port, b"GET /healthz HTTP/1.1\r\nHost: evil.example\r\n\r\n", "::1", socket.AF_INET6)[0] == 421
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()  # ::1 only, as configured
    finally:
        assert daemon.terminate() == 0, daemon.text()


# --- trickling and idle clients, viewers: health and metrics stay reachable ---

class Trickler:
    """`count` connections that each send one byte of a request head every `every` seconds, for as
    long as the test likes: each one the server closes is opened again `every` seconds later.
    `lifetimes`: how long each closed one had lived."""

    def __init__(self, port: int, count: int, every: float = 1.0):
        self.port, self.every = port, every
        self.lifetimes: list[float] = []
        self.stop = threading.Event()
        self.slots: list[list] = [[None, 0.0, 0, 0.0] for _ in range(count)]  # socket, opened, bytes sent, reopen at
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 10_000
        while not self.stop.wait(0.05):
            now = time.monotonic()
            for slot in self.slots:
                sock, opened, sent, reopen_at = slot
                if sock is None:
                    if now >= reopen_at:
                        with contextlib.suppress(OSError):
                            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                            sock.setblocking(False)
                            slot[:] = [sock, time.monotonic(), 0, 0.0]
                    continue
                try:
                    closed = sock.recv(1, socket.MSG_PEEK) == b""
                except BlockingIOError:
                    closed = False
                except OSError:
                    closed = True
                if closed:
                    self.lifetimes.append(now - opened)
                    sock.close()
                    slot[:] = [None, 0.0, 0, now + self.every]
                elif now - opened >= sent * self.every:  # one byte every `every` seconds
                    with contextlib.suppress(OSError):
                        sock.send(head[sent:sent + 1])
                    slot[2] = sent + 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for sock, *_ in self.slots:
            if sock is not None:
                sock.close()


def test_trickling_and_idle_clients_and_full_viewers_never_keep_health_and_metrics_away(open_daemon):
    port = open_daemon.port
    viewers = []
    for _ in range(2):  # server.max_viewers: every live place taken
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/live/cam0.mjpg")
        viewers.append((connection, connection.getresponse()))
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(MAX_WAITING)]
    trickler = Trickler(port, MAX_WAITING + 8, every=1.0)
    try:
        assert all(response.status == 200 for _, response in viewers)
        answers, deadline = [], time.monotonic() + 3 * HEAD_TIMEOUT_S
        while time.monotonic() < deadline:
            for path in ("/healthz", "/metrics"):
                started = time.monotonic()
                status = get(port, path)[0]
                answers.append((path, status, time.monotonic() - started))
            time.sleep(0.3)
        assert all(status == 200 for _, status, _ in answers), [a for a in answers if a[1] != 200]
        assert max(seconds for _, _, seconds in answers) < 3.0, max(answers, key=lambda a: a[2])
        # every trickler, one byte a second well inside the read timeout, was cut off by the head's one deadline
        assert len(trickler.lifetimes) >= MAX_WAITING, len(trickler.lifetimes)
        assert max(trickler.lifetimes) < HEAD_TIMEOUT_S + 2.0, max(trickler.lifetimes)
        assert all(response.status == 200 for _, response in viewers) and viewers[0][1].read(1000)
    finally:
        trickler.close()
        for sock in idle:
            sock.close()
        for connection, _ in viewers:
            connection.close()


def test_probes_have_places_of_their_own_when_the_others_are_all_taken():
    """A real BoundedHTTPServer whose one general place is held by a slow request: /healthz and
    /metrics still answer at once, another general request gets 503 at once."""
    release = threading.Event()

    class Slow(BoundedHandler):
        probe_paths = frozenset({"/healthz", "/metrics"})

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/slow":
                release.wait(20)
            body = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = BoundedHTTPServer(("127.0.0.1", 0), Slow, max_connections=1)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        held = socket.create_connection(("127.0.0.1", port))
        held.sendall(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        time.sleep(0.5)
        assert get(port, "/other")[0] == 503
        for path in ("/healthz", "/metrics"):
            assert get(port, path)[0] == 200
        release.set()
        assert held.recv(100).startswith(b"HTTP/1.0 200")
        held.close()
        wait_until(lambda: get(port, "/other")[0] == 200, timeout=5, what="the general place free again")
    finally:
        release.set()
        server.shutdown()
        server.server_close()


# --- a second daemon on the same port ---

def test_a_second_daemon_on_the_same_port_says_so_and_exits_78(open_daemon):
    result = run_cli("run", *RECORDER, "--max-frames", "2", *SERVER, "--set", f"server.port={open_daemon.port}")
    message = the_error(result, 78)
    assert re.search(rf"server: 127\.0\.0\.1:{open_daemon.port} is in use by another program .* own server\.port", message), message
    assert get(open_daemon.port, "/healthz")[0] == 200, "the first one goes on"
