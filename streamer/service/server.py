"""The daemon's one HTTP server (`server:`): metrics, health, and the live view of every source.

Endpoints: `/healthz` (always open), `/metrics`, `/api/status`, `/` (every source), `/live/{source}`
(one source, large), `/live/{source}.jpg` (the newest frame), `/live/{source}.mjpg` (MJPEG),
`/live/{source}.mp4` (H.264 in fragmented MP4, for the page's Media Source Extensions player),
`/live/{source}/heatmap.png` (its occupancy heatmap: ?category=NAME, ?layer=masks|ground);
with events on, `/api/events` (the event log, filtered and paged: streamer.outputs.events.query),
`/api/events/{id}/snapshot.jpg` and `/api/events/{id}/crop.jpg` (an event's pictures; 404 for an
unknown id, 400 with one line for a bad parameter).
With a token (server.token or STREAMER_TOKEN) every endpoint but /healthz needs it: an
`Authorization: Bearer` header, a `streamer_token` cookie, or `?token=` (a page opened that way sets
the cookie and reloads without it, so the token leaves the address bar). The cookie holds an HMAC of
the token, never the token itself; all are compared in constant time. The reload goes to the page
itself, `./` or the source's id, never to anything the request named, so it cannot lead off the
server. Source ids in URLs are looked up in the configured ones, never used as paths.

Without a token (the token-free loopback server) a request is answered only when its Host is a
loopback name or address (`localhost`, `127.0.0.1`, `[::1]`, any port), the listening host itself, or
one of `server.allowed_hosts`; any other gets 421: a web page the user visits cannot read the
status, snapshots or streams through DNS rebinding (its requests carry the page's own host name).
/healthz shows each source's id, state, attempt and the kind of its last failure (`refused`,
`timed_out`, ...); the failure's own line (which names the camera's host and path) only to a request
that presents the token.

It runs on the standard library's threaded server (streamer.service.http), one thread per
connection: every viewer's thread waits on its source's Broadcast and writes at its own pace, so the
sink thread never touches a socket.
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import socket
import sqlite3
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from importlib import resources
from pathlib import Path

from streamer.control import latency_summary
from streamer.errors import ConfigError, StreamerError
from streamer.outputs.heatmap import LAYERS, HeatmapOutput
from streamer.outputs.live import LiveFeed, LiveFrame, ViewersFull
from streamer.service.http import IO_TIMEOUT_S, BoundedHandler, BoundedHTTPServer
from streamer.service.metrics import Metrics, WatchedSource
from streamer.service.status import RecentRate

log = logging.getLogger(__name__)

COOKIE = "streamer_token"
COOKIE_LABEL = b"streamer live view cookie"  # the cookie holds HMAC-SHA256(token, this): a stolen cookie is not the token
LOOPBACK_NAMES = ("localhost",)
BOUNDARY = "streamer-frame"
LIVE_PATH = re.compile(r"^/live/([^/]+?)(\.jpg|\.mjpg|\.mp4)?$")
SNAPSHOT_PATH = re.compile(r"^/api/events/([^/]+)/(snapshot|crop)\.jpg$")
HEATMAP_PATH = re.compile(r"^/live/([^/]+)/heatmap\.png$")
PAGES = {name: (resources.files("streamer.service") / "web" / name).read_bytes() for name in ("index.html", "live.html", "common.js")}
FPS_WINDOW_S = 5.0
JOIN_TIMEOUT_S = 10.0  # a video viewer waits this long for its first keyframe


class Server:
    """Serves the endpoints above from daemon threads until closed. `feeds`: source id -> its live
    view (empty: no live view, e.g. in `streamer bench`); `events_dir`: the event log's folder (None:
    events are off, /api/events is 404)."""

    def __init__(self, host: str, port: int, token: str | None, metrics: Metrics, feeds: dict[str, LiveFeed],
                 max_connections: int, allowed_hosts: tuple[str, ...] = (), events_dir: Path | None = None,
                 heatmaps: dict[str, HeatmapOutput] | None = None):
        self.token = token
        self.heatmaps = heatmaps or {}
        self.events_dir = events_dir
        self.cookie = None if token is None else hmac.new(token.encode(), COOKIE_LABEL, hashlib.sha256).hexdigest()
        self.allowed_hosts = {_host_name(host), *(name.lower().rstrip(".") for name in allowed_hosts)}
        self.off_loopback = not _loopback(host)
        self.metrics = metrics
        self.sources: dict[str, WatchedSource] = {s.source_id: s for s in metrics.sources}
        self.feeds = feeds
        self._rates = {source_id: RecentRate(FPS_WINDOW_S) for source_id in self.sources}
        self._rates_lock = threading.Lock()
        try:
            self._server = BoundedHTTPServer((host, port), _handler(self), max_connections)
        except OSError as exc:
            raise listen_error(host, port, exc) from None
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
        assert self.cookie is not None
        presented = [(header.removeprefix("Bearer ").strip() if header and header.startswith("Bearer ") else None, self.token),
                     (cookie, self.cookie), (query, self.token)]
        return any(value is not None and hmac.compare_digest(value.encode(), expected.encode()) for value, expected in presented)

    def host_allowed(self, host: str | None) -> bool:
        """Whether a token-free request naming `host` (its Host header, or the authority of an
        absolute request target; None: it named none, so no browser sent it) is answered: loopback
        names and addresses, the listening host, server.allowed_hosts; behind an off-loopback bind
        (allow_unauthenticated) any IP address too: DNS rebinding needs a name."""
        if host is None:
            return True
        name = _host_name(host)
        if name in LOOPBACK_NAMES or name in self.allowed_hosts:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return address.is_loopback or self.off_loopback

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Handler(BoundedHandler):
    """One connection's requests; `app` is the Server (a subclass per Server sets it)."""

    server_version = "streamer"
    probe_paths = frozenset({"/healthz", "/metrics"})  # their own places: reachable while viewers fill the rest
    app: Server

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a fragment or JPEG goes out at once

    def version_string(self) -> str:
        return self.server_version  # not the Python version too

    def end_headers(self) -> None:
        """Every answer: no content sniffing; from a token-free server, nothing a page of another site
        may embed (an <img> of the snapshot or the MJPEG on any web page the user visits): the
        browser loads them only for pages of this site (another port of localhost too)."""
        self.send_header("X-Content-Type-Options", "nosniff")
        if self.app.token is None:
            self.send_header("Cross-Origin-Resource-Policy", "same-site")
        super().end_headers()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        target = _target(self.path)
        if target is None:
            return self._send(400, "text/plain; charset=utf-8", b"bad request target\n")
        authority, path, query_text = target
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1:
            return self._send(400, "text/plain; charset=utf-8", b"more than one Host header\n")
        if self.app.token is None and not self.app.host_allowed(authority if authority is not None else next(iter(hosts), None)):
            return self._send(421, "text/plain; charset=utf-8", b"this server answers only to its own names: loopback, "
                              b"and those listed in server.allowed_hosts\n")
        query = urllib.parse.parse_qs(query_text)
        tokens = query.get("token")
        token = tokens[0] if tokens else None
        authorized = self.app.authorized(self.headers.get("Authorization"), self._cookie(), token)
        if path == "/healthz":
            ok, body = self.app.metrics.health()
            if not (self.app.token and authorized):  # the failures' own lines name hosts and paths
                for source in body["sources"].values():
                    source.pop("last_error", None)
            return self._send(200 if ok else 503, "application/json", json.dumps(body).encode() + b"\n")
        if not authorized:
            return self._send(401, "text/plain; charset=utf-8", b"a token is needed: Authorization: Bearer TOKEN or ?token=TOKEN\n",
                              {"WWW-Authenticate": 'Bearer realm="streamer"'})
        live = LIVE_PATH.match(path)
        if token is not None and self.app.token:
            if path == "/":
                return self._enter("./")
            if live and not live.group(2) and live.group(1) in self.app.feeds:
                return self._enter(live.group(1))  # a configured id: a name, never a path or a host
        if path == "/metrics":
            return self._send(200, *self.app.metrics.exposition())
        if path == "/api/status":
            return self._send(200, "application/json", json.dumps(self.app.status()).encode())
        if path == "/api/events" or path.startswith("/api/events/"):
            return self._events(path, query)
        if path == "/":
            return self._send(200, "text/html; charset=utf-8", PAGES["index.html"])
        if path == "/common.js":
            return self._send(200, "text/javascript; charset=utf-8", PAGES["common.js"])
        heatmap = HEATMAP_PATH.match(path)
        if heatmap:
            return self._heatmap(heatmap.group(1), query)
        feed = self.app.feeds.get(live.group(1)) if live else None
        if feed is None or live is None:
            return self._send(404, "text/plain; charset=utf-8", b"not found: see / for the sources\n")
        if live.group(2) is None:
            return self._send(200, "text/html; charset=utf-8", PAGES["live.html"])
        if live.group(2) == ".jpg":
            return self._snapshot(feed)
        return self._mjpeg(feed) if live.group(2) == ".mjpg" else self._mp4(feed)

    def _heatmap(self, source_id: str, query: dict[str, list[str]]) -> None:
        """/live/{source}/heatmap.png[?category=NAME][&layer=masks|ground]: the source's occupancy heatmap
        (every thing category together unless one is named) at the frame's size."""
        output = self.app.heatmaps.get(source_id)
        if output is None:
            return self._send(404, "text/plain; charset=utf-8", b"not found: no heatmap for this source (analytics.heatmap)\n")
        layer = (query.get("layer") or ["masks"])[0]
        if layer not in LAYERS:
            return self._send(400, "text/plain; charset=utf-8", f"layer must be one of {', '.join(LAYERS)}\n".encode())
        categories = query.get("category")
        category = categories[0] if categories else None
        snap = output.heatmap.snapshot()
        body = output.picture(category, layer, snap.size) if snap else None
        if body is None:
            if snap is None:
                return self._send(503, "text/plain; charset=utf-8", b"no frame yet\n", {"Retry-After": "1"})
            return self._send(404, "text/plain; charset=utf-8", b"not found: no such category in the heatmap yet\n")
        self._send(200, "image/png", body, {"Cache-Control": "no-store"})

    def _cookie(self) -> str | None:
        for part in (self.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                return value
        return None

    def _enter(self, page: str) -> None:
        """A page opened with ?token=: the cookie (an HMAC of the token) is set, the browser reloads
        without it. `page`: `./` or a configured source id, a relative Location that stays on this
        server (and right behind a proxy's path prefix too)."""
        cookie = f"{COOKIE}={self.app.cookie}; Path=/; HttpOnly; SameSite=Strict"
        self._send(303, "text/plain; charset=utf-8", b"", {"Location": urllib.parse.quote(page, safe="./"), "Set-Cookie": cookie})

    def _events(self, path: str, params: dict[str, list[str]]) -> None:
        from streamer.outputs.events import query

        folder = self.app.events_dir
        if folder is None:
            return self._send(404, "text/plain; charset=utf-8", b"events are off (events.enabled: false)\n")
        try:
            if path == "/api/events":
                try:
                    asked = query.parse_query(params)
                except query.BadQuery as exc:
                    return self._send(400, "text/plain; charset=utf-8", f"{exc}\n".encode())
                return self._send(200, "application/json", json.dumps(query.read_events(folder, asked)).encode(),
                                  {"Cache-Control": "no-store"})
            wanted = SNAPSHOT_PATH.match(path)
            picture = wanted and query.read_snapshot(folder, wanted.group(1), crop=wanted.group(2) == "crop")
        except sqlite3.Error as exc:
            log.warning("server: cannot read the event log in %s: %s", folder, exc)
            return self._send(503, "text/plain; charset=utf-8", b"the event log cannot be read now\n", {"Retry-After": "1"})
        if not picture:
            return self._send(404, "text/plain; charset=utf-8", b"not found: no such event, or it has no snapshot\n")
        return self._send(200, "image/jpeg", picture, {"Cache-Control": "max-age=86400, immutable"})

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


def _target(raw: str) -> tuple[str | None, str, str] | None:
    """(authority, path, query) of a request target: origin-form `/path?query` (no authority: a path
    starting `//` stays a path), or absolute-form `http://host/path?query` (RFC 9112: its host
    stands for the Host header); None for anything else."""
    if raw.startswith("/"):
        path, _, query = raw.partition("#")[0].partition("?")
        return None, path, query
    if raw.lower().startswith(("http://", "https://")):
        try:
            url = urllib.parse.urlsplit(raw)
        except ValueError:
            return None
        return url.netloc.rpartition("@")[2], url.path or "/", url.query
    return None


def _host_name(host: str) -> str:
    """A Host header's name, without its port and brackets, lower case, without a final dot:
    `LocalHost.:9108` -> `localhost`, `[::1]:9108` -> `::1`, `::1` -> `::1`; "" for a Host no
    browser sends (a port that is not a number, `127.0.0.1:1@evil.example`), which no rule allows."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, port = host[1:].partition("]")
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
        port = ":" + port
    else:
        name, port = host, ""
    if port and not re.fullmatch(r":\d{0,5}", port):
        return ""
    return name.rstrip(".")


def _loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_error(host: str, port: int, exc: OSError) -> StreamerError:
    """The one line for a server that cannot listen, by cause. A port that another program holds
    (often a second streamer on the same server.port) is exit 78 like a bad configuration: systemd's
    units do not restart on it (RestartPreventExitStatus=78), where a restart every few seconds would
    fail forever while that camera never records."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return ConfigError(f"server: host {host} not found (server.host); use an address such as 127.0.0.1 or ::1")
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"server: {where} is in use by another program (a second streamer with the same server.port?): "
                           "give each daemon its own server.port; not restarted by systemd (exit 78)")
    if exc.errno == errno.EACCES:
        return ConfigError(f"server: listening on {where} needs privileges; use a server.port of 1024 or more")
    if exc.errno == errno.EADDRNOTAVAIL:
        return StreamerError(f"server: {host} is not an address of this machine (yet: is its network up?); change server.host")
    if exc.errno == errno.EAFNOSUPPORT:
        return StreamerError(f"server: this machine has no IPv6 for {host}; use server.host 127.0.0.1")
    return StreamerError(f"server: cannot listen on {where}: {exc.strerror or exc}; change server.host or server.port")


def _part(frame: LiveFrame) -> bytes:
    """One frame of the MJPEG stream, with its boundary."""
    head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(frame.jpeg)}\r\n\r\n".encode()
    return head + frame.jpeg + b"\r\n"
