"""A local copy of the publishers' download sites, served by a real HTTP server on 127.0.0.1.

It answers as the two sites do for what `streamer models fetch` asks: torchvision's checkpoints
as files under /models/ (download.pytorch.org's layout), and Hugging Face hub models at
/ORG/NAME/resolve/REVISION/FILE with the hub's headers (X-Repo-Commit; ETag = the file's sha256,
as the hub gives for LFS files; Content-Length), both with byte ranges. Faults on demand: drop a
connection half way, refuse every request after half a file was sent, serve bytes that differ from
the advertised hash. Requests are recorded (method, path, Range header, whether sent via a proxy).
"""
from __future__ import annotations

import hashlib
import re
import threading
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


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    proxied: bool


class Mirror:
    """`files`: URL path -> local file, e.g. {"/models/x.pth": Path, "/org/name/resolve/main/config.json": Path}."""

    def __init__(self, files: dict[str, Path]):
        self.files = files
        self.faults = Faults()
        self.requests: list[Request] = []
        self._hashes: dict[Path, str] = {}
        self._dropped: set[str] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
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
                mirror.requests.append(Request(self.command, path, self.headers.get("Range"), proxied))
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
                self.send_header("Content-Length", str(len(data) - start))
                if ranged:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", f'"{digest}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                if not body:
                    return
                payload = data[start:]
                cut = self._cut_here(path, start)
                if cut:
                    self.wfile.write(payload[: len(data) // 2 - start])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(payload)

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
