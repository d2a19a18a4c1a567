"""A source URI parsed once into a `SourceSpec`: the only place that looks at the URI's text.

Kinds (DESIGN.md, "Source URIs"): `camera` (`0`, `/dev/video0`), `file` (a video or one image,
also `file://` URLs as RFC 8089 writes them), `images` (a folder or a glob), `stream` (`rtsp://`,
`rtsps://`, `http://`, `https://`) and `synthetic` (`synthetic:street?...`). Everything downstream
reads the spec's fields, never the URI's text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from streamer.errors import UsageError
from streamer.uris import redact_url

Kind = Literal["camera", "file", "images", "stream", "synthetic"]
STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https")
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
GLOB_CHARACTERS = "*?["


@dataclass(frozen=True)
class SourceSpec:
    """What a source URI names.

    `location`: camera: its index (int) or device path; file: its path; images: the folder or glob;
    stream: the URL (credentials included: never log it); synthetic: the URI.
    `options`: stream: `scheme`, `host`, `port` (the scheme's default when the URL has none);
    synthetic: `seed`, `frames`, `size`, `fps`, `realtime` (inputs.synthetic.parse_synthetic_uri).
    `shown`: the URI as it may be logged (secrets hidden).
    """

    kind: Kind
    location: str | int
    shown: str
    options: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def live(self) -> bool:
        """Cameras and network streams are live: they can stall, drop and come back (an http(s) URL
        may still turn out to serve a finite file: `may_be_finite`)."""
        return self.kind in ("camera", "stream")

    @property
    def may_be_finite(self) -> bool:
        """An http(s) URL: a camera's stream or a file on a web server, known once opened."""
        return self.kind == "stream" and self.options["scheme"] in ("http", "https")

    @property
    def rtsp(self) -> bool:
        return self.kind == "stream" and self.options["scheme"] in ("rtsp", "rtsps")

    @property
    def file(self) -> Path | None:
        """The file a file source reads (a video or one image), None for other kinds."""
        return Path(str(self.location)) if self.kind == "file" else None

    @property
    def device(self) -> Path | None:
        """A camera's device node: /dev/videoN as given, or for an index N /dev/videoN (where
        OpenCV's V4L2 backend looks on Linux); None for other kinds."""
        if self.kind != "camera":
            return None
        return Path(self.location) if isinstance(self.location, str) else Path(f"/dev/video{self.location}")


@dataclass(frozen=True)
class LiveOptions:
    """How network streams are opened (defaults and meanings: `source:` in streamer.config)."""

    open_timeout_s: float
    read_timeout_s: float
    rtsp_transport: str  # tcp | udp


def parse_source(uri: str, shown: str | None = None) -> SourceSpec:
    """Parse a source URI; `shown`: how to name it in messages (default: the URI, secrets hidden).
    Looks at the file system to tell a file from a folder or a glob.
    Raises UsageError (exit 2) for an unknown scheme, a file:// URL of another host, a stream URL
    whose host or port cannot be read, with an '@' after its host or with bytes that are not UTF-8,
    or a malformed synthetic URI; no message quotes a URL's user-info, query or fragment."""
    shown = shown or redact_url(uri)
    if uri.isdigit():
        return SourceSpec("camera", int(uri), shown)
    if re.fullmatch(r"/dev/video\d+", uri):
        return SourceSpec("camera", uri, shown)
    if uri.startswith("synthetic:"):
        return _synthetic(uri, shown)
    if "://" in uri:
        scheme = uri.partition("://")[0].lower()
        if scheme in STREAM_SCHEMES:
            return _stream(uri, scheme, shown)
        if scheme == "file":  # file:///home/me/clip%20%5B1080p%5D.mp4 (RFC 8089), as file managers copy it
            try:
                parts = urlsplit(uri)
                host = parts.hostname or ""
            except ValueError:  # an unclosed '[' of an IPv6 host
                raise UsageError(f"{shown}: not a readable file:// URL; give the file's path") from None
            if host not in ("", "localhost"):  # the host only: the user-info is never quoted
                raise UsageError(f"{shown}: a file:// URL of another host ({host}); mount it and give the path")
            return parse_source(unquote(parts.path), shown)
        raise UsageError(
            f"{shown}: unknown source scheme '{scheme}'; use a camera index, /dev/videoN, a file, "
            "a folder or glob of images, rtsp(s)://, http(s):// or synthetic:street"
        )
    path = Path(uri)
    if path.is_dir():
        return SourceSpec("images", uri, shown)
    if not path.exists() and any(ch in uri for ch in GLOB_CHARACTERS):  # "clip [1080p].mp4" that exists is a file
        return SourceSpec("images", uri, shown)
    return SourceSpec("file", uri, shown)


def _stream(uri: str, scheme: str, shown: str) -> SourceSpec:
    """A network stream's host and port, read without ever quoting the user-info: a password with an
    unescaped '#', '?' or '/' ends the URL's authority early, and the parser's own message would show
    part of it (`Port could not be cast to integer value as 'S3cret'`), or worse, it would parse: in
    `rtsp://admin:1234#x@cam/` the host is `admin` and the port 1234, which every later message
    (DNS, connection refused) would quote. So an '@' after the authority is refused too."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        raise UsageError(f"{shown}: the URL's host or port cannot be read; a password holding '#', '?' or '/' "
                         "must be written %23, %3F or %2F") from None
    try:
        uri.encode("utf-8")
    except UnicodeEncodeError:  # bytes from the command line that are not UTF-8: OpenCV would crash on them
        raise UsageError(f"{shown}: the URL holds bytes that are not UTF-8; write them as %XX escapes") from None
    if "@" in uri.partition("://")[2][len(parts.netloc):]:
        raise UsageError(f"{shown}: the URL has an '@' after its host; a password holding '#', '?' or '/' "
                         "must be written %23, %3F or %2F (and an '@' in a path or query %40)")
    options = {"scheme": scheme, "host": parts.hostname or "", "port": port or DEFAULT_PORTS[scheme]}
    return SourceSpec("stream", uri, shown, MappingProxyType(options))


def _synthetic(uri: str, shown: str) -> SourceSpec:
    from streamer.inputs.synthetic import parse_synthetic_uri

    try:
        options = parse_synthetic_uri(uri)
    except ValueError as exc:
        raise UsageError(f"{shown}: {exc}") from None
    return SourceSpec("synthetic", uri, shown, MappingProxyType(options))
