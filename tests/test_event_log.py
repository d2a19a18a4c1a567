"""The event log (streamer/outputs/events/log.py) and the events derived from frames (kinds.py): fast, no broker."""
from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time

import numpy as np
import pytest
from helpers import wait_until

from streamer.frames import Event, Zone
from streamer.outputs.events.kinds import Events, FrameFacts, Seen, inside
from streamer.outputs.events.log import FILE_NAME, EventLog, NewEvent, uuid7


def events(n: int, source: str = "cam0", wall: float | None = None, size: int = 10) -> list[NewEvent]:
    now = time.time() if wall is None else wall
    return [NewEvent("line_crossing", source, i / 10, now, {"i": i, "pad": "x" * size}) for i in range(n)]


def test_append_assigns_increasing_seqs_and_unique_time_ordered_ids(tmp_path):
    log = EventLog(tmp_path)
    stored = log.append(events(50)) + log.append(events(50))
    assert [e.seq for e in stored] == list(range(1, 101))
    assert len({e.id for e in stored}) == 100
    assert all(len(e.id) == 36 and e.id[14] == "7" for e in stored), "UUIDv7"
    assert [e.payload["i"] for e in log.after(0, 1000)] == list(range(50)) * 2
    assert [e.seq for e in log.after(40, 5)] == [41, 42, 43, 44, 45]
    message = stored[0].message()
    assert message["id"] == stored[0].id and message["kind"] == "line_crossing" and message["source"] == "cam0" and message["i"] == 0
    log.close()
    assert uuid7(1.0) < uuid7(2.0)


def test_reading_one_source(tmp_path):
    log = EventLog(tmp_path)
    log.append(events(3, "a") + events(2, "b") + events(3, "a"))
    assert [e.seq for e in log.after(0, 100, "b")] == [4, 5]
    assert [e.seq for e in log.after(4, 100, "a")] == [6, 7, 8]


def test_cursors_start_once_never_move_back_and_survive_a_reopen(tmp_path):
    log = EventLog(tmp_path)
    log.append(events(10))
    assert log.cursor("mqtt:cam0") == 0
    assert log.start_cursor("mqtt:cam0", 3) == 3
    assert log.start_cursor("mqtt:cam0", 7) == 3, "an existing cursor is kept"
    log.advance("mqtt:cam0", 8)
    log.advance("mqtt:cam0", 5)
    assert log.cursor("mqtt:cam0") == 8
    log.close()
    again = EventLog(tmp_path)
    assert again.cursor("mqtt:cam0") == 8 and [e.seq for e in again.after(8)] == [9, 10]
    assert again.append(events(1))[0].seq == 11


def _append_forever(folder: str, ready) -> None:
    log = EventLog(folder)
    n = 0
    while True:
        stored = log.append(events(5))
        n = stored[-1].seq
        log.advance("sink", n - 3)
        if n >= 500:
            ready.set()


@pytest.mark.system  # a forked writer process, SIGKILLed
def test_a_sigkill_while_appending_loses_no_committed_event(tmp_path):
    """Whatever append returned is on disk: after a SIGKILL mid-write the log opens, whole, and goes on."""
    ready = multiprocessing.get_context("fork").Event()
    child = multiprocessing.get_context("fork").Process(target=_append_forever, args=(str(tmp_path), ready))
    child.start()
    assert ready.wait(60)
    time.sleep(0.2)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    log = EventLog(tmp_path)
    seqs = [e.seq for e in log.after(0, 10**6)]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 500 and len(seqs) % 5 == 0, "whole appends only"
    assert seqs[-1] - 3 <= log.cursor("sink") + 5 and log.cursor("sink") <= seqs[-1]
    assert sqlite3.connect(tmp_path / FILE_NAME).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert log.append(events(1))[0].seq == seqs[-1] + 1


def test_retention_by_age(tmp_path):
    log = EventLog(tmp_path, keep_days=1, max_mb=None)
    now = time.time()
    log.append(events(4, wall=now - 3 * 86400) + events(3, wall=now))
    assert log.prune(now) == (4, 0)
    assert [e.seq for e in log.after(0)] == [5, 6, 7]
    assert log.dropped == 0, "age is retention, not a loss"


def test_the_size_cap_drops_the_oldest_counts_and_logs_them(tmp_path, caplog):
    log = EventLog(tmp_path, keep_days=None, max_mb=0.5)
    log.append(events(3000, size=400))  # ~1.3 MB
    log.start_cursor("slow", 0)
    log.start_cursor("fast", 3000)
    assert log.used_bytes() > 1e6
    aged, capped = log.prune()
    assert aged == 0 and capped > 1000
    assert log.used_bytes() <= 0.5e6
    left = [e.seq for e in log.after(0, 10**6)]
    assert left == list(range(capped + 1, 3001)), "the oldest go first, the rest stay in order"
    assert log.dropped == capped
    warning = [r.getMessage() for r in caplog.records if "events.max_mb" in r.getMessage()]
    assert warning and f"removed its {capped} oldest events, {capped} of them not yet delivered" in warning[0]
    log.close()
    assert EventLog(tmp_path).dropped == capped, "the count is kept in the log"


def test_a_cursor_behind_what_the_cap_removed_resumes_at_the_oldest_left(tmp_path):
    log = EventLog(tmp_path, keep_days=None, max_mb=0.2)
    log.append(events(1500, size=400))
    log.start_cursor("slow", 0)
    _, capped = log.prune()
    assert log.after(log.cursor("slow"), 1)[0].seq == capped + 1


def test_calls_from_many_threads(tmp_path):
    import threading

    log = EventLog(tmp_path)
    threads = [threading.Thread(target=lambda: [log.append(events(2)) for _ in range(50)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e.seq for e in log.after(0, 10**4)] == list(range(1, 401))


# -- kinds


def facts(index: int, seen=(), events_=(), counts=None, connection: int = 0) -> FrameFacts:
    return FrameFacts(index, index / 10, 1000.0 + index, connection, tuple(seen), tuple(events_), counts)


def kinds_of(out) -> list[str]:
    return [kind for kind, *_ in out]


def test_a_track_starts_crosses_enters_leaves_and_ends():
    square = Zone("square", ((0, 0), (100, 0), (100, 100), (0, 100)))
    derive = Events([square], track_end_s=0.5)
    out = derive.frame(facts(0, [Seen(7, "car", 0.6, (150, 50))], counts={"objects_total": {"car": 1}, "lines": {}, "zones": {}}))
    assert kinds_of(out) == ["source_state", "track_start", "counts"]
    out = derive.frame(facts(1, [Seen(7, "car", 0.9, (50, 50))], [Event("line", "l", 7, "car", "in", 0.1),
                                                                  Event("zone", "square", 7, "car", None, 0.1)],
                             counts={"objects_total": {"car": 1}, "lines": {"l": {"car": {"in": 1, "out": 0}}}, "zones": {}}))
    assert kinds_of(out) == ["line_crossing", "zone_entry", "counts"]
    assert out[0][3] == {"line": "l", "direction": "in", "category": "car", "track_id": 7, "position": [50, 50],
                         "speed_kmh": None}
    assert out[1][3]["counted"] is True
    out = derive.frame(facts(3, [Seen(7, "car", 0.7, (150, 50))]))
    assert kinds_of(out) == ["zone_exit"] and out[0][3]["inside_s"] == pytest.approx(0.2)
    out = derive.frame(facts(4, [Seen(7, "car", 0.7, (60, 50))]))
    assert kinds_of(out) == ["zone_entry"] and out[0][3]["counted"] is False
    assert kinds_of(derive.frame(facts(8))) == [], "not seen for 0.4 s: not ended yet"
    assert kinds_of(derive.frame(facts(10))) == ["zone_exit", "track_end"]
    end = derive.frame(facts(11, [Seen(8, "person", None, (1, 1))]))
    assert kinds_of(end) == ["track_start", "zone_entry"]
    closing = derive.close(2000.0)
    assert kinds_of(closing) == ["zone_exit", "track_end", "source_state"]
    assert closing[1][3]["best_score"] is None and closing[2][3]["state"] == "ended"


def test_the_best_frame_and_a_reconnect_ends_tracks():
    derive = Events([], track_end_s=10)
    derive.frame(facts(0, [Seen(1, "car", 0.5, (0, 0))]))
    derive.frame(facts(1, [Seen(1, "car", 0.8, (0, 0))]))
    derive.frame(facts(2, [Seen(1, "car", 0.7, (0, 0))]))
    out = derive.frame(facts(3, [Seen(1, "car", 0.7, (0, 0))], connection=1))
    assert kinds_of(out) == ["source_state", "track_start", "track_end"], "its ids do not continue: a new track"
    end = next(fields for kind, _, _, fields in out if kind == "track_end")
    assert end["best_frame"] == 1 and end["best_score"] == 0.8 and end["duration_s"] == pytest.approx(0.2)


def test_counts_only_when_they_change():
    derive = Events([], track_end_s=10)
    c = {"objects_total": {}, "lines": {}, "zones": {}}
    assert kinds_of(derive.frame(facts(0, counts=c))) == ["source_state", "counts"]
    assert kinds_of(derive.frame(facts(1, counts=dict(c)))) == []


def test_inside_follows_the_counters_half_open_rule():
    square = ((0, 0), (10, 0), (10, 10), (0, 10))
    assert inside((0, 0), square) and inside((5, 5), square)
    assert not inside((10, 5), square) and not inside((5, 10), square) and not inside((-1, 5), square)


# -- config


def test_the_mqtt_password_comes_from_the_environment_and_is_never_printed(monkeypatch):
    from streamer.config import ConfigError, to_yaml, validate

    monkeypatch.setenv("MQTT_TEST_PASSWORD", "hunter2-secret")
    raw = {"source": {"uri": "synthetic:street"}, "events": {"enabled": True, "mqtt": {"host": "b", "password": "${MQTT_TEST_PASSWORD}"}}}
    config = validate(raw)
    assert config.events.mqtt.password is not None and config.events.mqtt.password.get_secret_value() == "hunter2-secret"
    assert "hunter2-secret" not in to_yaml(config) and "hunter2-secret" not in repr(config)
    with pytest.raises(ConfigError, match="MQTT_UNSET_X is not set"):
        validate({**raw, "events": {"mqtt": {"password": "${MQTT_UNSET_X}"}}})
    with pytest.raises(ConfigError, match="events.enabled needs tracking.enabled"):
        validate({**raw, "tracking": {"enabled": False}})


# -- EventsOutput


def test_events_output_logs_a_synthetic_streets_crossings_as_its_counter_counts(tmp_path):
    """The true tracks of a synthetic street through the Counter, then EventsOutput: the logged line
    crossings and counted zone entries are the Counter's totals, every track starts and ends, in order."""
    import numpy as np

    from streamer.frames import Frame, Line, Panoptic
    from streamer.inference.counting import Counter
    from streamer.inputs.synthetic import CATEGORIES, StreetScene
    from streamer.outputs.events.output import EventsOutput

    line, zone = Line("h", (0, 270.5), (640, 270.5)), Zone("left", ((0, 200), (320, 200), (320, 360), (0, 360)))
    names = {c.id: c.name for c in CATEGORIES}
    scene, counter = StreetScene(1026, (640, 360), 15.0), Counter([line], [zone], names)
    output = EventsOutput("street", EventLog(tmp_path), [zone], names, track_end_s=2.0)
    image, blank = np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.int32)
    longest = 0.0
    for index in range(45):
        segments = scene.render(index).segments
        found = counter.update(segments, index / 15.0)
        frame = Frame("street", index, image, index * 1000 / 15.0, time.time(), time.monotonic())
        started = time.perf_counter()
        output.write(Panoptic(frame, blank, tuple(segments), counts=counter.counts(), events=tuple(found)), None)
        longest = max(longest, time.perf_counter() - started)
    output.close()
    assert longest < 0.05, "write only queues"
    log = EventLog(tmp_path)
    logged = log.after(0, 10**6)
    assert [e.seq for e in logged] == list(range(1, len(logged) + 1))
    crossed: dict = {}
    for e in logged:
        if e.kind == "line_crossing":
            crossed.setdefault(e.payload["category"], {"in": 0, "out": 0})[e.payload["direction"]] += 1
    counts = counter.counts().to_dict()
    assert crossed == counts["lines"]["h"] == {"car": {"in": 2, "out": 1}, "person": {"in": 0, "out": 1}}
    entered: dict = {}
    for e in logged:
        if e.kind == "zone_entry" and e.payload["counted"]:
            entered[e.payload["category"]] = entered.get(e.payload["category"], 0) + 1
    assert entered == counts["zones"]["left"]
    kinds = [e.kind for e in logged]
    assert kinds.count("track_start") == kinds.count("track_end") == sum(counts["objects_total"].values())
    assert kinds[0] == "source_state" and kinds[-1] == "source_state" and logged[-1].payload["state"] == "ended"
    last_counts = [e.payload for e in logged if e.kind == "counts"][-1]
    assert last_counts == {k: counts[k] for k in ("objects_total", "lines", "zones")}


# -- a source's connection


def test_a_live_source_whose_stream_drops_logs_reconnecting_at_once_and_a_file_that_ends_does_not(tmp_path):
    import functools
    import queue
    import threading

    from streamer import control as ctl
    from streamer.config import BufferPolicy
    from streamer.inputs.capture import Capture, Liveness
    from streamer.outputs.events.delivery import Delivery

    class Reader:
        """Three tiny frames, then the end of the stream."""

        description, fps = "three", 25.0

        def __init__(self, live: bool) -> None:
            self.live, self.left = live, 3

        def read(self):
            self.left -= 1
            return None if self.left < 0 else (np.zeros((4, 4, 3), np.uint8), 0.0)

        def close(self) -> None:
            pass

    def capture(source_id: str, live: bool, control: ctl.Control) -> Capture:
        return Capture(lambda: Reader(live), source_id, "three", queue.Queue(maxsize=8), BufferPolicy.DROP_OLDEST,
                       Liveness(live, 15.0, None, 0.01, 0.02, 30.0), control, ctl.Stats(),
                       on_state=functools.partial(delivery.source_state, source_id))

    delivery = Delivery(EventLog(tmp_path))
    control = ctl.Control()
    thread = threading.Thread(target=capture("cam", True, control).run, daemon=True)
    try:
        capture("file", False, ctl.Control()).run()
        thread.start()
        wait_until(lambda: len(delivery.log.after(0, 10)) >= 2, 10)
        control.stop.set()
        control.abort.set()  # nobody takes its frames: its END would wait for room
        thread.join(10)
        logged = delivery.log.after(0, 100)
        assert {e.source for e in logged} == {"cam"}, "a file's end is no outage"
        assert all(e.kind == "source_state" and e.payload == {"state": "reconnecting", "reason": "ended"} and e.pts_s is None
                   for e in logged)
    finally:
        control.stop.set()
        control.abort.set()
        if thread.ident is not None:
            thread.join(10)
        delivery.close()
