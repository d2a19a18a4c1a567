"""The daemon's one HTTP server (`server:`): metrics, health, and the live view of every source.

Endpoints: `/healthz` (always open), `/metrics`, `/api/status`, `/` (every source), `/live/{source}`
(one source, large), `/live/{source}.jpg` (the newest frame), `/live/{source}.mjpg` (MJPEG),
`/live/{source}.mp4` (H.264 in fragmented MP4, for the page's Media Source Extensions player).
With a token (server.token or STREAMER_TOKEN) every endpoint but /healthz needs it: an
`Authorization: Bearer` header, a `streamer_token` cookie, or `?token=` (a page opened that way sets
the cookie and reloads without it, so the token leaves the address bar). Tokens are compared in
constant time. Source ids in URLs are looked up in the configured ones, never used as paths.

It runs on the standard library's threaded server (streamer.service.http), one thread per
connection: every viewer's thread waits on its source's Broadcast and writes at its own pace, so the
sink thread never touches a socket.
"""
from __future__ import annotations

import hmac
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from importlib import resources

from streamer.control import latency_summary
from streamer.errors import StreamerError
from streamer.outputs.live import LiveFeed, LiveFrame, ViewersFull
from streamer.service.http import IO_TIMEOUT_S, BoundedHTTPServer
from streamer.service.metrics import Metrics, WatchedSource
from streamer.service.status import RecentRate

log = logging.getLogger(__name__)

COOKIE = "streamer_token"
BOUNDARY = "streamer-frame"
LIVE_PATH = re.compile(r"^/live/([^/]+?)(\.jpg|\.mjpg|\.mp4)?$")
PAGES = {name: (resources.files("streamer.service") / "web" / name).read_bytes() for name in ("index.html", "live.html", "common.js")}
FPS_WINDOW_S = 5.0
JOIN_TIMEOUT_S = 10.0  # a video viewer waits this long for its first keyframe


class Server:
    """Serves the endpoints above from daemon threads until closed. `feeds`: source id -> its live
    view (empty: no live view, e.g. in `streamer bench`)."""

    def __init__(self, host: str, port: int, token: str | None, metrics: Metrics, feeds: dict[str, LiveFeed],
                 max_connections: int):
        self.token = token
        self.metrics = metrics
        self.sources: dict[str, WatchedSource] = {s.source_id: s for s in metrics.sources}
        self.feeds = feeds
        self._rates = {source_id: RecentRate(FPS_WINDOW_S) for source_id in self.sources}
        self._rates_lock = threading.Lock()
        try:
            self._server = BoundedHTTPServer((host, port), _handler(self), max_connections)
        except OSError as exc:
            raise StreamerError(
                f"server: cannot listen on {host}:{port}: {exc.strerror}; change server.port or stop what uses it") from None
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="server", daemon=True).start()
        shown = f"[{host}]" if ":" in host else host
        log.info("server on http://%s:%d/ (live view%s), metrics on /metrics, health on /healthz", shown, self.port,
                 ", token needed" if token else "")

    def status(self) -> dict:
        """/api/status: every source's state, rate, latency, counts and newest live frame. No URLs."""
        now = time.monotonic()
        sources = {}
        for source_id, watched in self.sources.items():
            stats, connection = watched.stats, watched.connection()
            with self._rates_lock:
                rate = self._rates[source_id]
                rate.add(now, stats.processed)
                fps = rate.rate(now)
            latency = latency_summary(stats.latencies)
            feed = self.feeds.get(source_id)
            frame = feed.frames.latest()[1] if feed else None
            sources[source_id] = {
                "state": connection.state, "attempt": connection.attempt, "processed": stats.processed,
                "dropped": sum(stats.dropped.values()), "fps": round(fps, 2),
                "latency_s": None if latency is None else {"p50": round(latency[0], 3), "p95": round(latency[1], 3)},
                "counts": None if stats.counts is None else stats.counts.to_dict(),
                "live": None if frame is None else {"width": frame.width, "height": frame.height, "index": frame.index,
                                                     "captured_at": frame.captured_at},
            }
        return {"time": time.time(), "sources": sources}

    def authorized(self, header: str | None, cookie: str | None, query: str | None) -> bool:
        """Whether a request presents the token (always, when there is none)."""
        if self.token is None:
            return True
        presented = [header.removeprefix("Bearer ").strip() if header and header.startswith("Bearer ") else None, cookie, query]
        expected = self.token.encode()
        return any(value is not None and hmac.compare_digest(value.encode(), expected) for value in presented)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Handler(BaseHTTPRequestHandler):
    """One connection's requests; `app` is the Server (a subclass per Server sets it)."""

    server_version = "streamer"
    app: Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a fragment or JPEG goes out at once

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urllib.parse.urlsplit(self.path)
        path, query = url.path, urllib.parse.parse_qs(url.query)
        if path == "/healthz":
            ok, body = self.app.metrics.health()
            return self._send(200 if ok else 503, "application/json", json.dumps(body).encode() + b"\n")
        tokens = query.get("token")
        token = tokens[0] if tokens else None
        if not self.app.authorized(self.headers.get("Authorization"), self._cookie(), token):
            return self._send(401, "text/plain; charset=utf-8", b"a token is needed: Authorization: Bearer TOKEN or ?token=TOKEN\n",
                              {"WWW-Authenticate": 'Bearer realm="streamer"'})
        live = LIVE_PATH.match(path)
        if token is not None and self.app.token and (path == "/" or (live and not live.group(2))):
            return self._enter(path)
        if path == "/metrics":
            return self._send(200, *self.app.metrics.exposition())
        if path == "/api/status":
            return self._send(200, "application/json", json.dumps(self.app.status()).encode())
        if path == "/":
            return self._send(200, "text/html; charset=utf-8", PAGES["index.html"])
        if path == "/common.js":
            return self._send(200, "text/javascript; charset=utf-8", PAGES["common.js"])
        feed = self.app.feeds.get(live.group(1)) if live else None
        if feed is None or live is None:
            return self._send(404, "text/plain; charset=utf-8", b"not found: see / for the sources\n")
        if live.group(2) is None:
            return self._send(200, "text/html; charset=utf-8", PAGES["live.html"])
        if live.group(2) == ".jpg":
            return self._snapshot(feed)
        return self._mjpeg(feed) if live.group(2) == ".mjpg" else self._mp4(feed)

    def _cookie(self) -> str | None:
        for part in (self.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                return value
        return None

    def _enter(self, path: str) -> None:
        """A page opened with ?token=: the token goes into a cookie, the browser reloads without it
        (a relative Location, right behind a proxy's path prefix too)."""
        cookie = f"{COOKIE}={self.app.token}; Path=/; HttpOnly; SameSite=Strict"
        self._send(303, "text/plain; charset=utf-8", b"", {"Location": path.rsplit("/", 1)[1] or "./", "Set-Cookie": cookie})

    def _snapshot(self, feed: LiveFeed) -> None:
        frame = feed.frames.latest()[1]
        if frame is None:
            return self._send(503, "text/plain; charset=utf-8", b"no frame yet\n", {"Retry-After": "1"})
        self._send(200, "image/jpeg", frame.jpeg, {"Cache-Control": "no-store"})

    def _mjpeg(self, feed: LiveFeed) -> None:
        try:
            with feed.viewer():
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                seen = 0
                while not feed.closed:
                    if (item := feed.frames.newer(seen, IO_TIMEOUT_S)) is not None:
                        seen, frame = item
                        self.wfile.write(_part(frame))
        except ViewersFull:
            self._full()
        except OSError:  # the viewer went away, or stalled past IO_TIMEOUT_S: its place is free again
            pass

    def _mp4(self, feed: LiveFeed) -> None:
        """Init segment, then fragments from the newest keyframe on, as they come (streamer.outputs.fmp4)."""
        try:
            with feed.viewer(), feed.watching_video():
                joined = feed.video.join(JOIN_TIMEOUT_S)  # the encoder starts with the next frame
                if joined is None:
                    return self._send(503, "text/plain; charset=utf-8", b"no video yet\n", {"Retry-After": "1"})
                epoch, init, codec, origin, seq = joined
                self.send_response(200)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("X-Codec", codec)
                self.send_header("X-Time-Origin", f"{origin:.3f}")  # media time 0 = this capture time (Unix seconds)
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(init)
                while (read := feed.video.read(epoch, seq, IO_TIMEOUT_S)) is not None:
                    fragments, seq = read
                    self.wfile.write(b"".join(fragments))
        except ViewersFull:
            self._full()
        except OSError:  # the viewer went away, or stalled past IO_TIMEOUT_S: its place is free again
            pass

    def _full(self) -> None:
        self._send(503, "text/plain; charset=utf-8", b"too many viewers of this source (server.max_viewers)\n", {"Retry-After": "5"})

    def _send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # requests are not events worth a log line
        pass



def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    return type("BoundHandler", (Handler,), {"app": server})


def _part(frame: LiveFrame) -> bytes:
    """One frame of the MJPEG stream, with its boundary."""
    head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(frame.jpeg)}\r\n\r\n".encode()
    return head + frame.jpeg + b"\r\n"
