#!/usr/bin/python3
"""A small real RTSP server for tests: serves an H.264 MP4 in an endless loop.

Run it with the SYSTEM interpreter (it needs PyGObject and GStreamer's RTSP server, which the
project's virtual environment does not have):

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --path /stream --file video.mp4 \
        [--user U --password W] [--host 127.0.0.1] [--watch-stdin]

Once the server listens it prints one line, ``READY rtsp://HOST:PORT/PATH``, on stdout (``--port 0``
lets the system pick a free port; the line tells which). Nothing else goes to stdout; log lines go
to stderr. SIGTERM or SIGINT end it cleanly (exit 0); with ``--watch-stdin`` it also ends when its
stdin reaches end of file, so it never outlives a test process that dies.

How the stream loops: at start the file's H.264 access units are read once (filesrc ! qtdemux !
h264parse ! appsink, as byte-stream with SPS/PPS before every keyframe). Every client gets its own
pipeline (the factory is not shared), ``appsrc name=src ! h264parse ! rtph264pay name=pay0 pt=96``,
and the appsrc is fed those access units over and over, each pass shifted in time by the file's
length, so timestamps keep increasing and the stream never ends. Every client starts at the first
frame, a keyframe. The server's sinks play it at the file's real-time rate. Works over RTP/UDP and
over RTSP-interleaved TCP.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

SERVE_PIPELINE = "( appsrc name=src format=time is-live=false ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )"


def log(message: str) -> None:
    print(f"rtsp_server[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


class AccessUnit:
    __slots__ = ("data", "pts", "dts", "duration", "delta")

    def __init__(self, data: bytes, pts: int, dts: int, duration: int, delta: bool):
        self.data, self.pts, self.dts, self.duration, self.delta = data, pts, dts, duration, delta


def valid(time: int) -> bool:
    return time is not None and time != Gst.CLOCK_TIME_NONE


def load_access_units(path: str) -> tuple[Gst.Caps, list[AccessUnit], int]:
    """The file's H.264 access units (timestamps from 0), their caps, and the length of one pass (ns)."""
    pipeline = Gst.parse_launch(
        "filesrc name=file ! qtdemux ! h264parse config-interval=-1 "
        "! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
    )
    pipeline.get_by_name("file").set_property("location", path)
    sink = pipeline.get_by_name("sink")
    bus = pipeline.get_bus()
    pipeline.set_state(Gst.State.PLAYING)
    caps, units, message = None, [], None
    while True:
        sample = sink.emit("try-pull-sample", Gst.SECOND // 10)
        if sample is None:
            message = bus.pop_filtered(Gst.MessageType.ERROR)
            if message is not None or sink.get_property("eos"):
                break
            continue
        caps = caps or sample.get_caps()
        buffer = sample.get_buffer()
        units.append(AccessUnit(
            buffer.extract_dup(0, buffer.get_size()), buffer.pts, buffer.dts, buffer.duration,
            bool(buffer.has_flags(Gst.BufferFlags.DELTA_UNIT)),
        ))
    pipeline.set_state(Gst.State.NULL)
    if message is not None:
        error, debug = message.parse_error()
        raise RuntimeError(f"cannot read H.264 from {path}: {error.message} ({debug})")
    if not units:
        raise RuntimeError(f"no H.264 video in {path}")

    structure = caps.get_structure(0)
    ok, num, den = structure.get_fraction("framerate")
    frame = Gst.util_uint64_scale_int(Gst.SECOND, den, num) if ok and num > 0 else Gst.SECOND // 25
    times = [t for unit in units for t in (unit.pts, unit.dts) if valid(t)]
    base = min(times) if times else 0
    for index, unit in enumerate(units):
        unit.duration = unit.duration if valid(unit.duration) else frame
        unit.pts = unit.pts - base if valid(unit.pts) else (unit.dts - base if valid(unit.dts) else index * frame)
        unit.dts = unit.dts - base if valid(unit.dts) else Gst.CLOCK_TIME_NONE
    # One pass lasts from the first frame shown to the end of the last one (decode order differs
    # from display order when the file has B-frames, hence min and max).
    period = max(unit.pts + unit.duration for unit in units) - min(unit.pts for unit in units)
    return caps, units, period


class LoopFeeder:
    """Feeds one client's appsrc with the access units, pass after pass."""

    def __init__(self, appsrc, units: list[AccessUnit], period: int):
        self.appsrc, self.units, self.period = appsrc, units, period
        self.index = self.loop = 0

    def need_data(self, appsrc, _length) -> None:
        unit = self.units[self.index]
        offset = self.loop * self.period
        buffer = Gst.Buffer.new_wrapped(unit.data)
        buffer.pts = unit.pts + offset
        buffer.dts = unit.dts + offset if valid(unit.dts) else Gst.CLOCK_TIME_NONE
        buffer.duration = unit.duration
        if unit.delta:
            buffer.set_flags(Gst.BufferFlags.DELTA_UNIT)
        self.index += 1
        if self.index == len(self.units):
            self.index, self.loop = 0, self.loop + 1
        appsrc.emit("push-buffer", buffer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", required=True, help="an MP4 with H.264 video")
    parser.add_argument("--port", type=int, default=8554, help="TCP port for RTSP; 0 picks a free one")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--path", default="/stream")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--watch-stdin", action="store_true", help="exit when stdin reaches end of file")
    args = parser.parse_args(argv)
    if (args.user is None) != (args.password is None):
        parser.error("--user and --password go together")
    if not args.path.startswith("/"):
        parser.error("--path must start with /")

    Gst.init(None)
    try:
        caps, units, period = load_access_units(os.path.abspath(args.file))
    except RuntimeError as error:
        log(str(error))
        return 1
    log(f"{len(units)} access units, {period / Gst.SECOND:.3f} s a pass, caps {caps.to_string()}")

    loop = GLib.MainLoop()
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(SERVE_PIPELINE)
    factory.set_shared(False)  # a pipeline per client, each starting at the first frame

    def configure(_factory, media):
        appsrc = media.get_element().get_by_name_recurse_up("src")
        appsrc.set_property("caps", caps)
        feeder = LoopFeeder(appsrc, units, period)
        media._feeder = feeder  # keep it alive as long as the media
        appsrc.connect("need-data", feeder.need_data)

    factory.connect("media-configure", configure)

    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("user", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
        permissions.add_permission_for_role("user", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True)
        factory.set_permissions(permissions)

    server.get_mount_points().add_factory(args.path, factory)

    def client_connected(_server, client):
        connection = client.get_connection()
        log(f"client connected from {connection.get_ip() if connection else '?'}")
        client.connect("closed", lambda _client: log("client closed"))

    server.connect("client-connected", client_connected)

    if server.attach(None) == 0:
        log(f"cannot listen on {args.host}:{args.port}")
        return 1

    def quit_(*_args):
        loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, quit_)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, quit_)
    if args.watch_stdin:
        GLib.io_add_watch(GLib.IOChannel.unix_new(sys.stdin.fileno()), GLib.PRIORITY_DEFAULT,
                          GLib.IOCondition.IN | GLib.IOCondition.HUP | GLib.IOCondition.ERR,
                          lambda channel, _condition: quit_() if not os.read(sys.stdin.fileno(), 4096) else GLib.SOURCE_CONTINUE)

    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"READY rtsp://{host}:{server.get_bound_port()}{args.path}", flush=True)
    loop.run()

    log("stopping")
    server.client_filter(lambda _server, _client: GstRtspServer.RTSPFilterResult.REMOVE)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: GStreamer's streaming threads may still call into Python.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
