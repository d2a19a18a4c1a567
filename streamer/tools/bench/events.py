"""The events benchmark (docs/benchmarks.md, Events): what events cost the pipeline, and how soon a
line crossing reaches an MQTT subscriber.

    python -m streamer.tools.bench.events [--frames 60] [--repeats 3] [--size 640x360] [--json PATH]

(a) Throughput: `streamer run` in this process on the same synthetic street (with a counting line
and a zone, so the counts are the same in both), with events off, then on (the log, snapshots,
MQTT to a real local mosquitto, and a webhook to a local HTTP receiver when this build has
webhooks), taking turns within each repeat; fps from the first result to the end of the run, as
`streamer bench` times its pipeline mode. Target: on/off >= 0.97 (medians).

(b) Latency: a camera-paced street (`realtime=1`, at --latency-fps) with events on; a paho
subscriber on the same machine takes each `line_crossing` message's arrival time. For each one:
the frame's own pipeline latency (its capture to the moment the sink hands it to the events
output) and the events' latency (that moment to the message's arrival at the subscriber: queue,
derivation, the SQLite commit, MQTT through the broker). Target: p95 of the events' latency < 200 ms.

Needs Debian's mosquitto (a broker on a free port on 127.0.0.1, stopped at the end) and paho-mqtt.
"""
from __future__ import annotations

import argparse
import http.server
import json
import logging
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from streamer.arguments import quote
from streamer.config import Config, load_config, packaged_config_path
from streamer.config import Events as EventsSettings
from streamer.errors import StreamerError
from streamer.frames import Panoptic

log = logging.getLogger(__name__)

TARGET_RATIO = 0.97
TARGET_LATENCY_S = 0.2
SEED = 1026  # a street where cars cross the line below (tests/test_events_run.py)
LINE_AT = 0.7514  # the line's height as a share of the frame's (270.5 of 360)
TOPIC_PREFIX = "bench"


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (0 < share <= 1) of `values` (not empty)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(percentile(values, 0.5), 4), "p95": round(percentile(values, 0.95), 4),
            "max": round(max(values), 4)}


class Broker:
    """mosquitto on 127.0.0.1 (a free port), anonymous, nothing kept on disk."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise StreamerError("bench events: needs mosquitto (apt-get install mosquitto)")
        self.port = free_port()
        config = folder / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false", "max_queued_messages 0"]
        if os.geteuid() == 0:
            lines.append("user root")
        config.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise StreamerError("bench events: mosquitto did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class Subscriber:
    """A paho client on `TOPIC_PREFIX/#`: (arrival time.time(), topic, payload) of every message."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[float, str, bytes]] = []
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}")
        subscribed = threading.Event()
        self._client.on_connect = lambda client, *_: client.subscribe(f"{TOPIC_PREFIX}/#", qos=1)
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = lambda _c, _u, message: self.messages.append((time.time(), message.topic, bytes(message.payload)))
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not subscribed.wait(10):
            raise StreamerError("bench events: the subscriber did not subscribe")

    def events(self, kind: str) -> list[tuple[float, dict]]:
        return [(at, json.loads(payload)) for at, topic, payload in self.messages if topic.endswith("/" + kind)]

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


class Receiver:
    """A local HTTP receiver of webhooks: (arrival time.time(), body) of every POST, answered 204."""

    def __init__(self) -> None:
        received: list[tuple[float, bytes]] = []
        self.received = received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append((time.time(), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def webhooks_built() -> bool:
    """Whether this build delivers events to webhooks (events.webhooks)."""
    return "webhooks" in EventsSettings.model_fields


def bench_config(uri: str, size: tuple[int, int], events: Path | None, broker: int | None, hook: str | None,
                 overrides: list[str]) -> Config:
    """The packaged default (demo models) on `uri`, with a counting line and zone, nothing written
    but the events; `events`: their folder (None: events off)."""
    width, height = size
    y = round(height * LINE_AT, 1)
    fixed = ["sources=[]", f"source.uri={quote(uri)}", "output.display=false", "output.export_dir=null", "output.video=null",
             "runtime.max_frames=null", "server.enabled=false", f"source.lines={{h: [[0, {y}], [{width}, {y}]]}}",
             f"source.zones={{left: [[0, {height * 0.55:.1f}], [{width / 2:.1f}, {height * 0.55:.1f}], [{width / 2:.1f}, {height}], "
             f"[0, {height}]]}}"]
    if events is not None:
        fixed += ["events.enabled=true", f"events.dir={quote(str(events))}"]
        if broker is not None:
            fixed += ["events.mqtt.host=127.0.0.1", f"events.mqtt.port={broker}", f"events.mqtt.topic_prefix={TOPIC_PREFIX}"]
        if hook is not None:
            fixed.append(f"events.webhooks=[{{url: {quote(hook)}}}]")
    return load_config(packaged_config_path(), [*overrides, *fixed])


def throughput(args: argparse.Namespace, workdir: Path, broker: Broker, hook: str | None) -> dict[str, Any]:
    """(a): fps with events off and on, taking turns (the order flips each repeat)."""
    from streamer.tools.bench.end_to_end import pipeline_run

    width, height = args.size
    uri = f"synthetic:street?seed={SEED}&frames={args.frames}&size={width}x{height}"
    runs: dict[str, list[float]] = {"off": [], "on": []}
    for repeat in range(args.repeats):
        for mode in ("off", "on") if repeat % 2 == 0 else ("on", "off"):
            folder = workdir / f"events-{repeat}-{mode}" if mode == "on" else None
            run = pipeline_run(bench_config(uri, args.size, folder, broker.port, hook, args.set))
            runs[mode].append(run.frames / run.seconds)
            log.info("bench events %d/%d: events %s %.2f fps", repeat + 1, args.repeats, mode, runs[mode][-1])
    off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
    return {"source": uri, "runs_fps": {k: [round(v, 3) for v in vs] for k, vs in runs.items()},
            "fps": {"off": round(off, 3), "on": round(on, 3)}, "ratio": round(on / off, 4), "target_ratio": TARGET_RATIO,
            "webhook": hook is not None}


class _Handed:
    """Wraps an output: the wall time the sink hands it each frame, by the frame's pts (ms)."""

    def __init__(self, inner: Any, handed: dict[float, float]) -> None:
        self.inner, self.handed = inner, handed
        self.stage, self.needs_picture = inner.stage, inner.needs_picture

    def write(self, result: Panoptic, rendered: Any) -> None:
        self.handed[round(result.frame.pts_ms, 3)] = time.time()
        self.inner.write(result, rendered)

    def close(self) -> None:
        self.inner.close()


def latency(args: argparse.Namespace, workdir: Path, broker: Broker, receiver: Receiver | None) -> dict[str, Any]:
    """(b): a camera-paced street with events on; each line crossing from its frame to the subscriber
    (and to the webhook receiver, when there is one)."""
    from streamer.outputs.events.output import EventsOutput
    from streamer.service import build
    from streamer.service.pipeline import Pipeline

    width, height = args.size
    uri = f"synthetic:street?seed={SEED}&frames={args.latency_frames}&size={width}x{height}&fps={args.latency_fps}&realtime=1"
    handed: dict[float, float] = {}

    def outputs(config: Config, source: Any, locks: ExitStack) -> list:
        return [_Handed(o, handed) if isinstance(o, EventsOutput) else o for o in build.outputs(config, source, locks)]

    subscriber = Subscriber(broker.port)
    try:
        if receiver is not None:
            receiver.received.clear()
        config = bench_config(uri, args.size, workdir / "events-latency", broker.port, receiver.url if receiver else None, args.set)
        pipeline = Pipeline(config, outputs)
        summary_ = pipeline.run()
        if summary_.exit_code != 0:
            raise StreamerError(f"bench events: the pipeline failed (exit {summary_.exit_code})")
        time.sleep(1.0)  # the last messages in flight
        crossings = subscriber.events("line_crossing")
    finally:
        subscriber.close()
    own, events, total = [], [], []
    for arrived, message in crossings:
        key = round(message["pts_s"] * 1000, 3)
        if key in handed:
            own.append(handed[key] - message["wall"])
            events.append(arrived - handed[key])
            total.append(arrived - message["wall"])
    posted = []
    for arrived, body in receiver.received if receiver else []:
        try:
            message = json.loads(body)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("kind") == "line_crossing" and round(message["pts_s"] * 1000, 3) in handed:
            posted.append(arrived - handed[round(message["pts_s"] * 1000, 3)])
    return {"source": uri, "processed": summary_.processed, "crossings": len(crossings),
            "pipeline_s": summary(own), "events_s": summary(events), "total_s": summary(total),
            "webhook_events_s": summary(posted) if receiver else None, "target_events_p95_s": TARGET_LATENCY_S}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamer.tools.bench.events", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60, help="frames per throughput run (default 60)")
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs of each mode (default 3)")
    parser.add_argument("--size", default="640x360", help="frame size WxH (default 640x360)")
    parser.add_argument("--latency-frames", type=int, default=240, help="frames of the latency run (default 240)")
    parser.add_argument("--latency-fps", type=float, default=2.0, help="the latency run's camera rate (default 2; the "
                        "pipeline must keep up, or frames queue and are dropped)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides, as for streamer run")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args(argv)
    width, _, height = args.size.partition("x")
    args.size = (int(width), int(height))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="streamer-bench-events-") as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir)
        receiver = Receiver() if webhooks_built() else None
        try:
            hook = receiver.url if receiver else None
            result: dict[str, Any] = {"time": time.time(), "load_average": os.getloadavg(), "cpus": os.cpu_count(),
                                      "webhook": hook is not None}
            result["throughput"] = throughput(args, workdir, broker, hook)
            result["latency"] = latency(args, workdir, broker, receiver)
            result["load_average_after"] = os.getloadavg()
        finally:
            if receiver:
                receiver.close()
            broker.stop()
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StreamerError as exc:
        print(f"streamer: {exc}", file=sys.stderr)
        sys.exit(69)
