"""A local copy of the publishers' download sites, served by a real HTTP server on 127.0.0.1.

It answers as the two sites do for what `streamer models fetch` asks: torchvision's checkpoints
as files under /models/ (download.pytorch.org's layout), and Hugging Face hub models at
/ORG/NAME/resolve/REVISION/FILE with the hub's headers (X-Repo-Commit; ETag = the file's sha256,
as the hub gives for LFS files; Content-Length), both with byte ranges. Faults on demand: drop a
connection half way, refuse every request after half a file was sent, serve bytes that differ from
the advertised hash; and a hostile or broken mirror's: headers of its own choosing (a path in
X-Repo-Commit or ETag), a Content-Length it does not keep, a stall after half a file, a redirect, a
slow line. Requests are recorded (method, path, Range and Authorization headers, Host, whether sent
via a proxy).
"""
from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Faults:
    drop_once: set[str] = field(default_factory=set)  # path suffixes: the first GET sends half, then closes
    outage_after_half: set[str] = field(default_factory=set)  # ... and every later request gets 503 until cleared
    corrupt: set[str] = field(default_factory=set)  # served bytes differ from the advertised sha256
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # path suffix -> headers sent instead of the true ones
    announce: dict[str, int] = field(default_factory=dict)  # path suffix -> the Content-Length claimed (the body is the file)
    stall: set[str] = field(default_factory=set)  # path suffixes: the first GET sends half, then nothing for `stall_s`
    stall_s: float = 60.0
    redirect: dict[str, str] = field(default_factory=dict)  # path suffix -> a Location answered with 302 (once per path)
    bytes_per_s: float | None = None  # a slow line: every body is sent at this rate
    endless: set[str] = field(default_factory=set)  # path suffixes: no Content-Length, and bytes until the client hangs up


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    proxied: bool
    authorization: str | None = None
    host: str | None = None


class Mirror:
    """`files`: URL path -> local file, e.g. {"/models/x.pth": Path, "/org/name/resolve/main/config.json": Path}."""

    def __init__(self, files: dict[str, Path]):
        self.files = files
        self.faults = Faults()
        self.requests: list[Request] = []
        self._hashes: dict[Path, str] = {}
        self._dropped: set[str] = set()
        self._redirected: set[str] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # a client that hung up (as refusals do) is no news
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Mirror:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def sha256(self, path: Path) -> str:
        if path not in self._hashes:
            self._hashes[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        return self._hashes[path]

    def gets(self, suffix: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith(suffix)]

    def _lookup(self, path: str) -> Path | None:
        if path in self.files:
            return self.files[path]
        hub = re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path)  # any revision resolves to the one commit
        if hub:
            return self.files.get(f"/{hub.group(1)}/resolve/main/{hub.group(2)}")
        return None

    def _handler(self):
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                proxied = self.path.startswith("http://")
                path = urlsplit(self.path).path
                mirror.requests.append(Request(self.command, path, self.headers.get("Range"), proxied,
                                               self.headers.get("Authorization"), self.headers.get("Host")))
                location = next((to for s, to in mirror.faults.redirect.items() if path.endswith(s)), None)
                if location and path not in mirror._redirected:
                    mirror._redirected.add(path)
                    return self._empty(302, {"Location": location})
                if any(path.endswith(s) for s in mirror.faults.endless):
                    return self._endless()
                local = mirror._lookup(path)
                if any(path.endswith(s) for s in mirror.faults.outage_after_half) and path in mirror._dropped:
                    return self._empty(503)
                if local is None:
                    return self._empty(404, {"X-Error-Code": "EntryNotFound"})
                data = local.read_bytes()
                digest = mirror.sha256(local)
                if any(path.endswith(s) for s in mirror.faults.corrupt):
                    middle = len(data) // 2
                    data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
                start = 0
                ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if ranged:
                    start = int(ranged.group(1))
                    if start >= len(data):
                        return self._empty(416, {"Content-Range": f"bytes */{len(data)}"})
                self.send_response(206 if ranged else 200)
                announced = next((n for s, n in mirror.faults.announce.items() if path.endswith(s)), None)
                self.send_header("Content-Length", str(announced if announced is not None else len(data) - start))
                if ranged:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Accept-Ranges", "bytes")
                headers = {"ETag": f'"{digest}"', "X-Repo-Commit": COMMIT}
                for suffix, forged in mirror.faults.headers.items():
                    if path.endswith(suffix):
                        headers.update(forged)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if not body:
                    return
                payload = data[start:]
                stall = any(path.endswith(s) for s in mirror.faults.stall) and path not in mirror._dropped and start == 0
                if stall:
                    mirror._dropped.add(path)
                if stall or self._cut_here(path, start):
                    self._send(payload[: len(data) // 2 - start])
                    if stall:
                        time.sleep(mirror.faults.stall_s)
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(2)
                    return
                self._send(payload)

            def _endless(self) -> None:
                self.send_response(200)
                self.send_header("Connection", "close")
                self.send_header("ETag", '"' + "0" * 64 + '"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    while True:
                        self.wfile.write(bytes(1 << 16))

            def _send(self, payload: bytes) -> None:
                rate = mirror.faults.bytes_per_s
                step = 1 << 20 if rate is None else max(1, int(rate / 20))
                for at in range(0, len(payload), step):
                    self.wfile.write(payload[at:at + step])
                    if rate is not None:
                        time.sleep(step / rate)
                self.wfile.flush()

            def _cut_here(self, path: str, start: int) -> bool:
                """A fault asked for this GET to stop half way (once per path)."""
                faults = mirror.faults
                wanted = any(path.endswith(s) for s in faults.drop_once | faults.outage_after_half)
                if not wanted or path in mirror._dropped or start > 0:
                    return False
                mirror._dropped.add(path)
                return True

            def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler
