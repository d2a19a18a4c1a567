"""Prometheus metrics and the health check behind `/metrics` and `/healthz` (served by streamer.service.server).

Counters are read from each source's Stats when scraped, so the frame path pays nothing for them;
only the latency histograms are observed per frame, by the sink thread. Source labels are the
configured ids, never URLs.
"""
from __future__ import annotations

import logging
import platform
import queue
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from streamer import control as ctl
from streamer.frames import Panoptic
from streamer.inputs.capture import Connection

if TYPE_CHECKING:
    from streamer.outputs.events.delivery import SinkState

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ZONE_TIME_BUCKETS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
SPEED_BUCKETS_KMH = (5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 100.0, 120.0, 150.0)


@dataclass
class WatchedSource:
    """What metrics and health read of one source."""

    source_id: str
    stats: ctl.Stats
    connection: Callable[[], Connection]  # the capture's state, attempts and last error
    queues: dict[str, queue.Queue]  # name (frames, results) -> queue
    stall_timeout_s: float


def health(sources: list[WatchedSource], stalled_stages: list[str], now: float) -> tuple[bool, dict]:
    """Healthy while every source produced a frame within its stall timeout and no stage is stuck.
    Per source: `error` is the kind of its last failure (`refused`, `timed_out`, ...), `last_error`
    that failure's line, which names the camera's host and path: the server leaves it out of
    answers to requests without the token."""
    reasons = [f"stage {name} is stuck" for name in stalled_stages]
    report = {}
    for source in sources:
        last = source.stats.last_frame_mono
        age = None if last is None else now - last
        connection = source.connection()
        report[source.source_id] = {"state": connection.state, "attempt": connection.attempt, "error": connection.failure,
                                    "last_error": connection.last_error, "last_frame_age_s": None if age is None else round(age, 3)}
        if age is None:
            reasons.append(f"source {source.source_id}: no frame yet")
        elif age > source.stall_timeout_s:
            reasons.append(f"source {source.source_id}: no frame for {age:.1f} s (stall timeout {source.stall_timeout_s:g} s)")
    ok = not reasons
    return ok, {"status": "ok" if ok else "unhealthy", "reasons": reasons, "sources": report}


class StatsCollector:
    """Reads the counters and gauges at scrape time."""

    def __init__(self, sources: list[WatchedSource], device: torch.device, build: dict[str, str]):
        self.sources = sources
        self.device = device
        self.build = build

    def collect(self):
        counters = {
            "frames_read": ("Frames read from the source", lambda s: s.read),
            "frames_processed": ("Frames through the models and written to the outputs", lambda s: s.processed),
            "decode_errors": ("Reads from the source that failed", lambda s: s.decode_errors),
            "reconnects": ("Times a live source was reconnected", lambda s: s.reconnects),
            "detections_capped_frames": ("Frames whose detections reached models.instance.detections_per_image", lambda s: s.capped),
        }
        for name, (text, value) in counters.items():
            family = CounterMetricFamily(f"streamer_{name}", text, labels=["source"])
            for source in self.sources:
                family.add_metric([source.source_id], value(source.stats))
            yield family
        dropped = CounterMetricFamily("streamer_frames_dropped", "Frames dropped before the model, by cause", labels=["source", "cause"])
        up = GaugeMetricFamily("streamer_source_up", "1 while the source is streaming", labels=["source"])
        attempts = GaugeMetricFamily("streamer_source_connect_attempts", "Connection attempts in a row that failed or did not last",
                                     labels=["source"])
        last = GaugeMetricFamily("streamer_last_frame_timestamp_seconds", "Wall-clock time of the newest frame read", labels=["source"])
        depth = GaugeMetricFamily("streamer_queue_depth", "Items waiting in a queue", labels=["source", "queue"])
        for source in self.sources:
            for cause, count in sorted(source.stats.dropped.items()):
                dropped.add_metric([source.source_id, cause], count)
            connection = source.connection()
            up.add_metric([source.source_id], 1.0 if connection.state == "streaming" else 0.0)
            attempts.add_metric([source.source_id], connection.attempt)
            if source.stats.last_frame_at is not None:
                last.add_metric([source.source_id], source.stats.last_frame_at)
            for name, q in source.queues.items():
                depth.add_metric([source.source_id, name], q.qsize())
        yield from (dropped, up, attempts, last, depth)
        yield from self._counts()
        if self.device.type == "cuda":
            memory = GaugeMetricFamily("streamer_gpu_memory_bytes", "GPU memory held by PyTorch", labels=["device", "kind"])
            memory.add_metric([str(self.device), "allocated"], torch.cuda.memory_allocated(self.device))
            memory.add_metric([str(self.device), "reserved"], torch.cuda.memory_reserved(self.device))
            yield memory
        info = GaugeMetricFamily("streamer_build_info", "Versions of streamer and its main libraries", labels=list(self.build))
        info.add_metric(list(self.build.values()), 1.0)
        yield info


    def _counts(self):
        """The counts of tracked objects, line crossings and zone entries (sources that count)."""
        seen = CounterMetricFamily("streamer_objects", "Distinct tracked objects seen", labels=["source", "category"])
        visible = GaugeMetricFamily("streamer_objects", "Tracked objects in the newest frame", labels=["source", "category"])
        crossings = CounterMetricFamily("streamer_line_crossings", "Tracks that crossed a counting line (each once per line)",
                                        labels=["source", "line", "category", "direction"])
        entries = CounterMetricFamily("streamer_zone_entries", "Tracks that entered a counting zone (each once per zone)",
                                      labels=["source", "zone", "category"])
        for source in self.sources:
            counts = source.stats.counts
            if counts is None:
                continue
            for category, total in sorted(counts.objects_total.items()):
                seen.add_metric([source.source_id, category], total)
                visible.add_metric([source.source_id, category], counts.visible.get(category, 0))
            for (line, category, direction), total in sorted(counts.line_crossings.items()):
                crossings.add_metric([source.source_id, line, category, direction], total)
            for (zone, category), total in sorted(counts.zone_entries.items()):
                entries.add_metric([source.source_id, zone, category], total)
        yield from (seen, visible, crossings, entries)


def build_labels(device: torch.device) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    return {
        "version": installed("streamer"), "python": platform.python_version(),
        "torch": torch.__version__, "torchvision": installed("torchvision"), "device": str(device),
    }


class Metrics:
    """The registry behind /metrics (the counters read at scrape time, the latency histograms
    observed per frame) and the /healthz verdict; streamer.service.server serves both."""

    def __init__(self, sources: list[WatchedSource], control: ctl.Control, stage_timeout_s: float, device: torch.device,
                 category_names: Mapping[int, str] | None = None):
        self.sources = sources
        self.category_names = dict(category_names or {})  # category id -> name, for the speed histogram's label
        self.control = control
        self.stage_timeout_s = stage_timeout_s
        self.registry = CollectorRegistry()
        self._events: Deliveries | None = None
        self.registry.register(StatsCollector(sources, device, build_labels(device)))
        self.stage_seconds = Histogram(
            "streamer_stage_seconds", "Time per frame in each stage", ["stage"], registry=self.registry, buckets=LATENCY_BUCKETS
        )
        self.latency = Histogram(
            "streamer_latency_seconds", "End-to-end latency, frame read to outputs written", ["source"],
            registry=self.registry, buckets=LATENCY_BUCKETS,
        )
        self.zone_time = Histogram(
            "streamer_zone_time_seconds", "Time tracked things spent in each zone, stream seconds: one observation per visit, "
            "when it ends (the thing left, its track ended, or the source reconnected)",
            ["source", "zone"], registry=self.registry, buckets=ZONE_TIME_BUCKETS_S,
        )
        self.speed = Histogram(
            "streamer_speed_kmh", "Speeds of tracked things, km/h: one observation per thing and frame with a plausible speed",
            ["source", "category"], registry=self.registry, buckets=SPEED_BUCKETS_KMH,
        )

    def observe(self, result: Panoptic, timings: dict[str, float]) -> None:
        """Called by the sink thread once a result is written, with every stage's seconds."""
        for stage, seconds in timings.items():
            self.stage_seconds.labels(stage).observe(seconds)
        self.latency.labels(result.frame.source_id).observe(time.monotonic() - result.frame.captured_mono)
        if result.zone_times is not None:
            for zone, _, seconds in result.zone_times.ended:
                self.zone_time.labels(result.frame.source_id, zone).observe(seconds)
        if result.speeds:
            categories = {s.track_id: s.category_id for s in result.segments if s.isthing and s.track_id is not None}
            for track, speed in result.speeds.items():
                if speed.plausible and track in categories:
                    category = categories[track]
                    self.speed.labels(result.frame.source_id, self.category_names.get(category, str(category))).observe(speed.kmh)

    def health(self) -> tuple[bool, dict]:
        """health() of the sources, and the event sinks' state under `events` when events are delivered
        (never a reason to be unhealthy: a broker or receiver that is down only lets the log grow)."""
        ok, body = health(self.sources, self.control.stalled_stages(self.stage_timeout_s), time.monotonic())
        if self._events is not None:
            body["events"] = events_health(self._events)
        return ok, body

    def watch_events(self, delivery: Deliveries) -> None:
        """Show the event sinks of `delivery` (outputs.events.delivery.Delivery) in /healthz and /metrics."""
        self._events = delivery
        self.registry.register(EventsCollector(delivery))

    def exposition(self) -> tuple[str, bytes]:
        """(content type, body) of /metrics: the Prometheus text format 0.0.4."""
        return CONTENT_TYPE_LATEST, generate_latest(self.registry)


class Deliveries(Protocol):
    """What metrics read of outputs.events.delivery.Delivery."""

    def states(self) -> list[SinkState]: ...

    def dropped(self) -> int: ...


def sink_label(states: list[SinkState], index: int) -> str:
    """A sink's label: `mqtt`, or `webhook1`, `webhook2`... in the order of events.webhooks (never its URL)."""
    state = states[index]
    if state.kind != "webhook":
        return state.kind
    return f"webhook{sum(s.kind == 'webhook' for s in states[:index + 1])}"


def events_health(delivery: Deliveries) -> dict:
    """/healthz's `events`: each sink's label, state, last error (no host, URL or secret) and the events waiting for it."""
    states = delivery.states()
    return {"sinks": {sink_label(states, i): {"state": s.state, "error": None if s.up else s.error, "waiting": s.waiting}
                      for i, s in enumerate(states)}, "dropped": delivery.dropped()}


class EventsCollector:
    """The event sinks at scrape time: up, events waiting, and the events the log's size cap removed."""

    def __init__(self, delivery: Deliveries) -> None:
        self.delivery = delivery

    def collect(self):
        states = self.delivery.states()
        up = GaugeMetricFamily("streamer_event_sink_up", "1 while the sink delivers (MQTT connected, webhook answering)",
                               labels=["sink"])
        waiting = GaugeMetricFamily("streamer_events_waiting", "Events logged and not yet delivered by the sink", labels=["sink"])
        for i, state in enumerate(states):
            label = sink_label(states, i)
            up.add_metric([label], 1.0 if state.up else 0.0)
            waiting.add_metric([label], state.waiting)
        dropped = CounterMetricFamily("streamer_events_dropped", "Events the log's size cap (events.max_mb) removed, all time")
        dropped.add_metric([], self.delivery.dropped())
        yield from (up, waiting, dropped)
