"""Why a network stream did not open, in one line a user can act on.

OpenCV's capture says only that it failed. On a failure the stream is opened once more through
PyAV, whose exceptions carry FFmpeg's error code (RTSP and HTTP status codes included, which
FFmpeg maps alike), and the failure is named by kind: host not found, refused, timed out,
unauthorised, not found, bad stream. Each kind has its own exit code (README, "Exit codes"), used
when a source that never connected gives up. PyAV's own logging stays off (its default), so this
adds nothing to stderr.
"""
from __future__ import annotations

import socket
import time

import av

from streamer.errors import DataError, InputNotFound, NotPermitted, StreamerError, Unavailable
from streamer.inputs.spec import LiveOptions, SourceSpec

TIMED_OUT_FRACTION = 0.9  # a failure after this much of the open timeout is the timeout (RTSP reports it as bad data)


def open_failure(spec: SourceSpec, live: LiveOptions) -> StreamerError:
    """The error for a stream that OpenCV could not open, by kind, naming it as `spec.shown`
    (credentials hidden). Tries to open it through PyAV (at most `live.open_timeout_s`)."""
    description, open_timeout_s, read_timeout_s = spec.shown, live.open_timeout_s, live.read_timeout_s
    host = spec.options["host"]
    address = f"{host}:{spec.options['port']}"
    ffmpeg_options = {"rtsp_transport": live.rtsp_transport} if spec.rtsp else {}
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return _kind("host_not_found", InputNotFound(f"{description}: host {host!r} not found (DNS); check the address"))
    started = time.monotonic()
    try:
        container = av.open(str(spec.location), options=ffmpeg_options, timeout=(open_timeout_s, read_timeout_s))
    except av.error.HTTPUnauthorizedError:
        return _kind("unauthorized", NotPermitted(
            f"{description}: unauthorised (401): the user name or password is wrong or missing; "
            f"give them in the URL ({spec.options['scheme']}://${{USER}}:${{PASSWORD}}@host/path, from the environment)"))
    except av.error.HTTPForbiddenError:
        return _kind("forbidden", NotPermitted(f"{description}: forbidden (403): these credentials may not read this stream"))
    except av.error.HTTPNotFoundError:
        return _kind("not_found", InputNotFound(f"{description}: not found (404): {address} has no stream at this path; check the path"))
    except av.error.ConnectionRefusedError:
        return _kind("refused", Unavailable(f"{description}: connection refused: nothing listens at {address}; check the address "
                                            "and port, and that the camera is on"))
    except (av.error.FFmpegError, OSError) as exc:
        if time.monotonic() - started >= TIMED_OUT_FRACTION * open_timeout_s or isinstance(exc, TimeoutError):
            return _kind("timed_out", Unavailable(f"{description}: timed out: no answer from {address} within {open_timeout_s:g} s "
                                                  "(source.open_timeout_s); check the network (firewall, VPN) and the address"))
        if isinstance(exc, av.error.HTTPError):
            return _kind("rejected", Unavailable(f"{description}: the server refused the request ({exc.strerror})"))
        if isinstance(exc, (av.error.InvalidDataError, av.error.DemuxerNotFoundError, av.error.DecoderNotFoundError)):
            return _kind("bad_stream", DataError(f"{description}: bad stream: {address} answers, but not with video FFmpeg can read; "
                                                 "check the path and the camera's stream settings (H.264/H.265/MJPEG)"))
        return _kind("unavailable", Unavailable(f"{description}: cannot open the stream ({exc.strerror or type(exc).__name__}); "
                                                "check the address, credentials and network"))
    with container:
        if not container.streams.video:
            kinds = ", ".join(s.type for s in container.streams)
            return _kind("no_video", DataError(f"{description}: bad stream: it holds no video (only {kinds})"))
    return _kind("flaky", Unavailable(f"{description}: the stream opened only on a second try; retrying"))


def _kind(kind: str, error: StreamerError) -> StreamerError:
    """`error` with its kind of failure (StreamerError.kind): what a token-free /healthz shows."""
    error.kind = kind
    return error
