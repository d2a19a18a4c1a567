"""The daemon's events end to end: a synthetic street with a line and a zone, a real broker (mosquitto),
the events published against the run's export counts; a daemon killed with SIGKILL resumes from its cursor."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from helpers import cli_env, run_cli
from mosquitto import Broker, Subscriber, free_port
from receiver import Receiver

from streamer.outputs.events.log import EventLog

pytestmark = pytest.mark.system  # a broker and the daemon's processes

SOURCE = "synthetic:street?seed=1026&frames=45"  # tests/test_eval_demo.py: 2 cars in and 1 car and 1 person out at h
LINE = "source.lines={h: [[0, 270.5], [640, 270.5]]}"
ZONE = "source.zones={left: [[0, 200], [320, 200], [320, 360], [0, 360]]}"


def events_args(folder, port: int) -> list[str]:
    return ["--set", "events.enabled=true", "--set", f"events.dir={folder}", "--set", "events.mqtt.host=127.0.0.1",
            "--set", f"events.mqtt.port={port}", "--set", "events.mqtt.topic_prefix=st", "--set", "source.id=street"]


def healthz(port: int) -> dict:
    """The daemon's /healthz body (503 until its first frame, and when unhealthy: the same JSON)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def crossings(events: list[dict]) -> dict:
    """{line: {category: {"in": n, "out": n}}} of line_crossing events, like the export's counts."""
    out: dict = {}
    for e in events:
        out.setdefault(e["line"], {}).setdefault(e["category"], {"in": 0, "out": 0})[e["direction"]] += 1
    return out


def test_published_crossings_zone_entries_and_retained_counts_equal_the_runs_counts(tmp_path):
    """Over one MQTT connection and to a webhook: the same events, in log order."""
    broker = Broker(tmp_path / "broker")
    sub = Subscriber(broker.port, "st/#")
    receiver = Receiver()
    try:
        export = tmp_path / "export"
        hook = f"events.webhooks=[{{url: '{receiver.url}/hook', secret: s3cret}}]"
        result = run_cli("run", "--source", SOURCE, "--device", "cpu", "--set", LINE, "--set", ZONE, "--export-dir", str(export),
                         *events_args(tmp_path / "events", broker.port), "--set", hook, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        counts = json.loads((export / "panoptic.json").read_text())["counts"]
        assert sub.wait_for(lambda s: ("st/availability", "offline", False) in s.messages, 10), "offline at a clean stop"
        published = sub.events()
        assert {e["source"] for e in published} == {"street"}
        assert crossings(sub.events("line_crossing")) == {k: v for k, v in counts["lines"].items() if v}
        assert counts["lines"]["h"] == {"car": {"in": 2, "out": 1}, "person": {"in": 0, "out": 1}}, "the scene's ground truth"
        entries: dict = {}
        for e in sub.events("zone_entry"):
            if e["counted"]:
                entries.setdefault(e["zone"], {}).setdefault(e["category"], 0)
                entries[e["zone"]][e["category"]] += 1
        assert entries == {k: v for k, v in counts["zones"].items() if v}
        last = sub.events("counts")[-1]
        assert {k: last[k] for k in ("objects_total", "lines", "zones")} == {k: counts[k] for k in ("objects_total", "lines", "zones")}
        started = {e["track_id"] for e in sub.events("track_start")}
        ended = {e["track_id"] for e in sub.events("track_end")}
        assert started == ended and len(started) == sum(counts["objects_total"].values()), "every track starts and ends"
        exits = sub.events("zone_exit")
        assert all(e["inside_s"] >= 0 for e in exits) and len(exits) == len(sub.events("zone_entry")), "every entry has its exit"
        states = [e["state"] for e in sub.events("source_state")]
        assert states == ["connected", "ended"]
        seqs = [e["seq"] for e in published]
        assert seqs == list(range(1, len(seqs) + 1)), "in log order, none lost, none twice"
        late = Subscriber(broker.port, "st/street/counts")
        assert late.wait_for(lambda s: bool(s.messages), 10)
        assert late.messages[0][2] and json.loads(late.messages[0][1])["lines"] == counts["lines"], "counts are retained"
        late.close()
        log = EventLog(tmp_path / "events")
        assert log.count() == len(published) and log.cursor("mqtt") == len(published)
        log.close()
        assert receiver.events("/hook") == published, "the webhook got every event, in order, once"
        assert "s3cret" not in result.stderr
    finally:
        receiver.close()
        sub.close()
        broker.stop()


def test_a_daemon_killed_with_sigkill_while_the_broker_is_down_delivers_everything_at_its_next_start(tmp_path):
    broker = Broker(tmp_path / "broker")
    broker.kill()  # down: the first run only logs
    folder = tmp_path / "events"
    port = free_port()
    first = subprocess.Popen([sys.executable, "-m", "streamer", "run", "--source", "synthetic:street?seed=1026&frames=400",
                              "--device", "cpu", "--set", LINE, "--set", ZONE, *events_args(folder, broker.port),
                              "--set", "server.enabled=true", "--set", f"server.port={port}", "--set", "runtime.status_interval_s=0.5"],
                             cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        logged = 0
        while time.monotonic() < deadline and logged < 30:
            time.sleep(0.5)
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            if (folder / "events.sqlite").exists():
                try:
                    logged = sqlite3.connect(folder / "events.sqlite", timeout=5).execute("SELECT COUNT(*) FROM events").fetchone()[0]
                except sqlite3.OperationalError:
                    logged = 0
        assert logged >= 30, "the first run logged events"
        health = healthz(port)["events"]
        mqtt = health["sinks"]["mqtt"]
        assert mqtt["state"] == "connecting" and "connection refused" in mqtt["error"] and mqtt["waiting"] >= 30, health
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        status = [line for line in first.stderr.read().splitlines() if "status:" in line] if first.stderr else []
        assert any("events: mqtt connecting (connection refused" in line for line in status), status[-3:]
        log = EventLog(folder)
        kept = [e.seq for e in log.after(0, 10**6)]
        assert log.cursor("mqtt") == 0 and kept == list(range(1, len(kept) + 1))
        log.close()

        broker.start()
        sub = Subscriber(broker.port, "st/#")
        second = run_cli("run", "--source", "synthetic:street?seed=7&frames=10", "--device", "cpu", "--set", LINE, "--set", ZONE,
                         *events_args(folder, broker.port), cwd=tmp_path)
        assert second.returncode == 0, second.stderr
        log = EventLog(folder)
        total = log.last_seq()
        assert sub.wait_for(lambda s: len(s.events()) >= total, 20)
        seqs = [e["seq"] for e in sub.events()]
        assert seqs == list(range(1, total + 1)), "the killed run's events first, then the new run's, in order, none lost"
        assert total > len(kept) and log.cursor("mqtt") == total
        log.close()
        sub.close()
    finally:
        if first.poll() is None:
            first.kill()
        broker.stop()


def test_a_second_daemon_on_the_same_event_log_is_refused_with_one_line_exit_73(tmp_path):
    from streamer.outputs.locks import holding

    folder = tmp_path / "events"
    folder.mkdir()
    with holding(folder, "event log"):  # this process holds it, as a running daemon would
        result = run_cli("run", "--source", "synthetic:street?seed=1&frames=5", "--device", "cpu", "--set", "events.enabled=true",
                         "--set", f"events.dir={folder}", cwd=tmp_path)
    assert result.returncode == 73, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "event log is being written by another streamer" in lines[0] and f"PID {os.getpid()}" in lines[0], lines
    assert not (folder / "events.sqlite").exists(), "refused before the log is touched"
