"""Prometheus metrics and /healthz, scraped over real HTTP from a running daemon."""
from __future__ import annotations

import json
import logging
import queue
import re
import time

import numpy as np
import pytest
import torch
from helpers import RECORDER, ROOT, Daemon, busy_port, free_port, http_get, make_video, run_cli, the_error, wait_until
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rtsp import RtspServer, needs_rtsp

from streamer import control as ctl
from streamer.frames import Counts, Frame, Panoptic
from streamer.inputs.capture import Connection
from streamer.outputs.sink import sink_loop
from streamer.service.metrics import StatsCollector, WatchedSource, health


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in Prometheus text format."""
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


@pytest.mark.system
def test_scraped_counters_rise_drops_are_counted_by_cause_and_stages_are_timed(tmp_path):
    port = free_port()
    # A 40 fps camera-paced source into a 1-frame queue: the model cannot keep up, frames drop.
    source = RECORDER[1].replace("fps=8", "fps=40")
    daemon = Daemon(*RECORDER[2:], "--source", source, "--output", str(tmp_path / "out.mp4"),
                    "--set", "source.buffer=drop_oldest", "--set", "source.queue_size=1",
                    "--set", "server.enabled=true", "--set", f"server.port={port}")
    try:
        daemon.wait_processed(1, timeout=120)
        status, first = http_get(port, "/metrics")
        assert status == 200
        time.sleep(2.0)
        _, second = http_get(port, "/metrics")
        for counter in ("streamer_frames_read_total", "streamer_frames_processed_total"):
            assert sample(second, counter, source="cam0") > sample(first, counter, source="cam0") > 0
        assert sample(second, "streamer_frames_dropped_total", source="cam0", cause="queue_full") > 0
        assert sample(second, "streamer_source_up", source="cam0") == 1
        assert sample(second, "streamer_decode_errors_total", source="cam0") == 0
        assert sample(second, "streamer_detections_capped_frames_total", source="cam0") == 0, "a few cars, far below the cap"
        assert abs(sample(second, "streamer_last_frame_timestamp_seconds", source="cam0") - time.time()) < 5
        assert sample(second, "streamer_queue_depth", source="cam0", queue="frames") is not None
        for stage in ("queue_wait", "inference", "fusion", "render", "encode"):
            assert sample(second, "streamer_stage_seconds_count", stage=stage) > 0, stage
        assert sample(second, "streamer_latency_seconds_count", source="cam0") > 0
        assert sample(second, "streamer_build_info", device="cpu") == 1
        assert "synthetic" not in second  # labels carry the source id, never its URI
        status, body = http_get(port, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert http_get(port, "/nothing")[0] == 404
    finally:
        assert daemon.terminate() == 0, daemon.text()


@pytest.mark.system
@needs_rtsp
def test_healthz_turns_503_while_the_camera_stalls_and_200_when_it_is_back(tmp_path):
    video = make_video(tmp_path / "in.mp4", frames=50, size=(160, 120), fps=25, gop=10)
    port = free_port()
    with RtspServer(video) as server:
        daemon = Daemon(*RECORDER[2:], "--source", server.url, "--set", "server.enabled=true", "--set", f"server.port={port}",
                        "--set", "source.stall_timeout_s=2", "--set", "source.read_timeout_s=30",
                        "--set", "source.reconnect.initial_delay_s=0.3", "--set", "source.reconnect.max_delay_s=1")
        try:
            wait_until(lambda: http_get(port, "/healthz")[0] == 200, timeout=120, every=0.25, what="/healthz 200")
            server.freeze()
            status, body = wait_until(lambda: (r := http_get(port, "/healthz"))[0] == 503 and r, timeout=30, every=0.25,
                                      what="/healthz 503 while the camera is frozen")
            reasons = json.loads(body)["reasons"]
            assert any(re.search(r"source cam0: no frame for [\d.]+ s", reason) for reason in reasons), body
            server.thaw()
            wait_until(lambda: http_get(port, "/healthz")[0] == 200, timeout=60, every=0.25, what="/healthz 200 again")
        finally:
            server.thaw()
            assert daemon.terminate() == 0, daemon.text()


@pytest.mark.system
def test_a_busy_server_port_is_one_clear_error_that_systemd_does_not_restart(tmp_path):
    """Another program on the port (a second streamer with the same server.port): restarting cannot
    help, so the exit code is one the shipped units do not restart on (a restart loop every 5 s in
    which that camera never records is worse than a failed unit)."""
    with busy_port() as port:
        result = run_cli("run", *RECORDER, "--max-frames", "2", "--set", "server.enabled=true", "--set", f"server.port={port}")
    message = the_error(result, 78)
    assert f"server: 127.0.0.1:{port} is in use by another program" in message and "server.port" in message
    for unit in ("streamer.service", "streamer@.service"):
        assert "RestartPreventExitStatus=78" in (ROOT / "systemd" / unit).read_text().splitlines()


def test_health_needs_a_recent_frame_from_every_source_and_no_stuck_stage():
    fresh, stale = ctl.Stats(), ctl.Stats()
    fresh.last_frame_mono, stale.last_frame_mono = 99.0, 80.0
    streaming = Connection("streaming", 0, None)
    sources = [WatchedSource(name, stats, lambda: streaming, {}, 5.0) for name, stats in (("a", fresh), ("b", stale))]
    ok, body = health(sources, [], now=100.0)
    assert not ok and body["reasons"] == ["source b: no frame for 20.0 s (stall timeout 5 s)"]
    ok, body = health(sources[:1], [], now=100.0)
    assert ok and body["status"] == "ok" and body["sources"]["a"]["last_frame_age_s"] == 1.0
    ok, body = health(sources[:1], ["worker"], now=100.0)
    assert not ok and body["reasons"] == ["stage worker is stuck"]
    refused = Connection("connecting", 3, "c: rtsp://***@cam/x: connection refused", "refused")
    ok, body = health([WatchedSource("c", ctl.Stats(), lambda: refused, {}, 5.0)], [], now=100.0)
    assert not ok and body["reasons"] == ["source c: no frame yet"]
    assert body["sources"]["c"] == {"state": "connecting", "attempt": 3, "error": "refused",
                                    "last_error": "c: rtsp://***@cam/x: connection refused", "last_frame_age_s": None}


def test_counts_are_scraped_per_source_category_line_and_zone():
    """The counting series as Prometheus reads them (the 0.0.4 text format the daemon serves): the
    counter `streamer_objects_total` and the gauge `streamer_objects` are distinct names there."""
    counts = Counts({"car": 5, "person": 2}, {"car": 1, "person": 0}, {("north", "car", "in"): 3, ("north", "car", "out"): 1},
                    {("crosswalk", "person"): 2})
    counting, quiet = ctl.Stats(), ctl.Stats()
    counting.counts = counts
    streaming = Connection("streaming", 0, None)
    sources = [WatchedSource(name, stats, lambda: streaming, {}, 5.0) for name, stats in (("cam0", counting), ("cam1", quiet))]
    registry = CollectorRegistry()
    registry.register(StatsCollector(sources, torch.device("cpu"), {"version": "test"}))
    text = generate_latest(registry).decode()
    assert sample(text, "streamer_objects_total", source="cam0", category="car") == 5
    assert sample(text, "streamer_objects", source="cam0", category="car") == 1
    assert sample(text, "streamer_objects", source="cam0", category="person") == 0
    assert sample(text, "streamer_line_crossings_total", source="cam0", line="north", category="car", direction="in") == 3
    assert sample(text, "streamer_line_crossings_total", source="cam0", line="north", category="car", direction="out") == 1
    assert sample(text, "streamer_zone_entries_total", source="cam0", zone="crosswalk", category="person") == 2
    assert 'source="cam1"' not in "".join(line for line in text.splitlines() if "objects" in line or "line_" in line or "zone_" in line)
    families = {(f.name, f.type) for f in text_string_to_metric_families(text)}
    assert {("streamer_objects", "counter"), ("streamer_objects", "gauge")} <= families


def test_frames_that_reach_the_detection_cap_are_counted_scraped_and_logged_once(caplog):
    """The sink counts the results the worker marked as capped (the instance model returned
    detections_per_image detections), warns at the first, and the counter is scraped per source."""
    results: queue.Queue = queue.Queue()
    image = np.zeros((4, 6, 3), np.uint8)
    for index, capped in enumerate((False, True, True)):
        frame = Frame("cam0", index, image, index * 100.0, time.time(), time.monotonic())
        results.put(Panoptic(frame, np.zeros((4, 6), np.int32), (), capped=capped))
    results.put(ctl.END)
    stats = ctl.Stats()
    with caplog.at_level(logging.WARNING, logger="streamer.outputs.sink"):
        sink_loop(results, [], lambda result: result.frame.image, ctl.Control(), stats)
    assert stats.processed == 3 and stats.capped == 2
    warnings = [r.getMessage() for r in caplog.records if "detections_per_image" in r.getMessage()]
    assert warnings == ["cam0: frame 1 has as many detections as models.instance.detections_per_image allows; there may have been "
                        "more (streamer_detections_capped_frames_total counts such frames)"]
    registry = CollectorRegistry()
    registry.register(StatsCollector([WatchedSource("cam0", stats, lambda: Connection("streaming", 0, None), {}, 5.0)],
                                     torch.device("cpu"), {"version": "test"}))
    assert sample(generate_latest(registry).decode(), "streamer_detections_capped_frames_total", source="cam0") == 2
