"""Events over MQTT with a real broker (Debian's mosquitto on 127.0.0.1): order, acknowledgements,
a broker that dies and comes back, a sink killed with SIGKILL, passwords."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import signal
import sys
import threading
import time

import pytest
from helpers import wait_until
from mosquitto import Broker, Subscriber

from streamer.outputs.events.log import EventLog, NewEvent
from streamer.outputs.events.mqtt import MqttSettings, MqttSink

pytestmark = pytest.mark.system  # every test here starts a broker


def batch(n: int, start: int = 0, source: str = "cam0") -> list[NewEvent]:
    now = time.time()
    return [NewEvent("line_crossing", source, (start + i) / 15, now, {"n": start + i, "line": "h", "direction": "in",
                                                                       "category": "car", "track_id": start + i}) for i in range(n)]


def check_delivery(received: list[dict], logged: list[int]) -> None:
    """Every logged seq arrived; in order of first arrival; anything twice is an id seen before."""
    seen: dict[str, int] = {}
    firsts: list[int] = []
    for event in received:
        if event["id"] in seen:
            assert seen[event["id"]] == event["seq"]
            continue
        seen[event["id"]] = event["seq"]
        firsts.append(event["seq"])
    assert firsts == logged, (len(firsts), len(logged), [s for s in logged if s not in set(firsts)][:10])


def check_resumed(received: list[dict], logged: list[int]) -> None:
    """Every logged seq arrived, anything twice with the id it had; a delivery that was cut off and
    resumed from the cursor arrives in log order on each connection: the seqs climb, and start again
    lower once, where the resend began (what was in flight may land on either side of it)."""
    ids: dict[int, str] = {}
    for event in received:
        assert ids.setdefault(event["seq"], event["id"]) == event["id"]
    assert sorted(ids) == logged
    seqs = [event["seq"] for event in received]
    assert sum(b < a for a, b in zip(seqs, seqs[1:])) <= 1, "in log order on each connection"


def test_events_arrive_in_order_counts_retained_availability_online_then_offline(tmp_path):
    broker = Broker(tmp_path / "broker")
    sub = Subscriber(broker.port)
    log = EventLog(tmp_path / "events")
    try:
        stored = log.append(batch(200))
        log.append([NewEvent("counts", "cam0", 14.0, time.time(), {"objects_total": {"car": 3}, "lines": {"h": {}}, "zones": {}})])
        sink = MqttSink(log, MqttSettings("127.0.0.1", broker.port, topic_prefix="st"))
        assert sub.wait_for(lambda s: len(s.events()) == 201)
        check_delivery(sub.events(), list(range(1, 202)))
        first = sub.events()[0]
        assert first == {**stored[0].message(), "seq": 1} and set(first) >= {"id", "seq", "kind", "source", "pts_s", "wall", "line"}
        topics = {t for t, _, _ in sub.messages}
        assert topics == {"st/cam0/line_crossing", "st/cam0/counts", "st/availability"}
        assert ("st/availability", "online", False) in sub.messages or ("st/availability", "online", True) in sub.messages
        assert sub.wait_for(lambda s: log.cursor("mqtt") == 201, 10), "the cursor follows the acknowledgements"
        late = Subscriber(broker.port, "st/#")  # retained: what a new subscriber learns at once
        assert late.wait_for(lambda s: len(s.messages) >= 2, 10)
        retained = {t: (p, r) for t, p, r in late.messages}
        assert retained["st/availability"] == ("online", True)
        assert json.loads(retained["st/cam0/counts"][0])["objects_total"] == {"car": 3} and retained["st/cam0/counts"][1]
        assert "st/cam0/line_crossing" not in retained
        sink.close()
        assert sub.wait_for(lambda s: s.messages[-1] == ("st/availability", "offline", False), 10)
        late.close()
    finally:
        sub.close()
        log.close()
        broker.stop()


def steady(read, every: float = 0.3, timeout: float = 10.0) -> int:
    """A value once two reads `every` seconds apart agree."""
    deadline, value = time.monotonic() + timeout, read()
    while time.monotonic() < deadline:
        time.sleep(every)
        value, before = read(), value
        if value == before:
            return value
    raise AssertionError(f"still moving after {timeout} s: {value}")


def test_a_broker_down_at_start_then_killed_mid_stream_loses_nothing(tmp_path, caplog):
    """The log grows while the broker is away; when it is back every event arrives, in order; the producer never waits."""
    caplog.set_level(logging.INFO)
    # the subscriber's session outlives the kill, so what the sink resends before the subscriber is
    # back is queued for it, not lost in a race between the two reconnections
    broker = Broker(tmp_path / "broker", persistent=True)
    broker.kill()  # down at start
    log = EventLog(tmp_path / "events")
    sink = MqttSink(log, MqttSettings("127.0.0.1", broker.port))
    stop = threading.Event()
    waits: list[float] = []

    def produce() -> None:
        n = 0
        while not stop.is_set() and n < 3000:
            started = time.perf_counter()
            log.append(batch(10, n))
            sink.wake()
            waits.append(time.perf_counter() - started)
            n += 10
            time.sleep(0.02)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        time.sleep(1.0)
        assert log.cursor("mqtt") == 0 and log.count() > 0
        broker.start()
        sub = Subscriber(broker.port, durable=True)
        assert sub.wait_for(lambda s: len(s.events()) > 600, 30), "delivered once the broker is up"
        time.sleep(1.5)  # the session saved
        sub.forget()
        broker.kill()  # mid-stream, with events in flight
        # the cursor once the sink has seen the broker go and settled the acknowledgements that had
        # arrived before the kill: with no broker it cannot move any more
        assert wait_until(lambda: any("lost the broker" in r.getMessage() for r in caplog.records), 10)
        at_kill = steady(lambda: log.cursor("mqtt"))
        assert at_kill < 2500, "killed mid-stream"
        time.sleep(1.5)
        broker.start()
        assert sub.resubscribed()
        producer.join(60)
        assert sub.wait_for(lambda s: log.cursor("mqtt") == 3000, 60), log.cursor("mqtt")
        # What the killed broker had acknowledged but not yet passed on may have died with it (saved
        # every second only); everything after the sink's cursor at the kill was sent again and arrives,
        # a repeat always with its id. (The order on each connection: the other tests; a restarted broker
        # may replay what it had saved.)
        ids: dict[int, str] = {}
        for event in sub.events():
            assert ids.setdefault(event["seq"], event["id"]) == event["id"]
        order = sorted(ids)
        assert set(range(at_kill + 1, 3001)) <= set(order), "nothing after the cursor is lost"
        assert max(waits) < 1.0, "appending never waits for the broker"
        assert any("lost the broker" in r.getMessage() for r in caplog.records)
    finally:
        stop.set()
        producer.join(10)
        sink.close()
        log.close()
        broker.stop()


def test_every_event_arrives_across_a_broker_restart_with_a_persistent_subscriber(tmp_path):
    """The broker killed after a run's first events, events logged while it is down, the broker back:
    every event arrives exactly in log order, none lost."""
    broker = Broker(tmp_path / "broker", persistent=True)  # the subscriber's session outlives the kill
    sub = Subscriber(broker.port, "streamer/#", durable=True)
    log = EventLog(tmp_path / "events")
    sink = MqttSink(log, MqttSettings("127.0.0.1", broker.port))
    try:
        log.append(batch(1000))
        sink.wake()
        assert sub.wait_for(lambda s: len(s.events()) == 1000 and log.cursor("mqtt") == 1000, 30)
        time.sleep(1.5)  # the session saved
        sub.forget()
        broker.kill()
        log.append(batch(1000, 1000))  # while it is down: only the log grows
        sink.wake()
        time.sleep(0.5)
        broker.start()
        assert sub.resubscribed()
        assert sub.wait_for(lambda s: log.cursor("mqtt") == 2000 and len({e["seq"] for e in s.events()}) == 2000, 60)
        check_delivery(sub.events(), list(range(1, 2001)))
    finally:
        sink.close()
        sub.close()
        log.close()
        broker.stop()


def _deliver(folder: str, port: int) -> None:
    log = EventLog(folder)
    MqttSink(log, MqttSettings("127.0.0.1", port))
    time.sleep(600)


def test_a_sink_killed_with_sigkill_resumes_from_its_cursor(tmp_path):
    broker = Broker(tmp_path / "broker")
    sub = Subscriber(broker.port)
    log = EventLog(tmp_path / "events")
    log.append(batch(5000))
    try:
        child = multiprocessing.get_context("spawn").Process(target=_deliver, args=(str(tmp_path / "events"), broker.port))
        child.start()
        assert sub.wait_for(lambda s: log.cursor("mqtt") > 1000, 60)
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        at_kill = log.cursor("mqtt")
        assert at_kill < 5000, "killed mid-delivery"
        # the cursor is what the broker acknowledged: all of it reaches the subscriber, a moment later
        assert sub.wait_for(lambda s: len({e["seq"] for e in s.events()}) >= at_kill, 30), "the cursor never runs ahead"
        got_before = len(sub.events())
        sink = MqttSink(log, MqttSettings("127.0.0.1", broker.port))
        assert sink.cursor == at_kill
        assert sub.wait_for(lambda s: log.cursor("mqtt") == 5000, 60)
        assert sub.wait_for(lambda s: len({e["seq"] for e in s.events()}) == 5000, 30), "acknowledged, then passed on"
        sink.close()
        received = sub.events()
        check_resumed(received, list(range(1, 5001)))
        twice = len(received) - 5000
        assert twice <= got_before - at_kill + 1, "only what was in flight at the kill came twice"
    finally:
        sub.close()
        log.close()
        broker.stop()


def test_a_password_broker_the_right_password_and_a_wrong_one_never_printed(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    broker = Broker(tmp_path / "broker", users={"cam": "s3cret-pass", "reader": "r3ad"})
    sub = Subscriber(broker.port, username="reader", password="r3ad")
    log = EventLog(tmp_path / "events")
    log.append(batch(20))
    try:
        wrong = MqttSink(log, MqttSettings("127.0.0.1", broker.port, username="cam", password="wrong-pass"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("refused" in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
        refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert refused and ("Not authorized" in refused[0] or "Bad user name or password" in refused[0]), refused
        assert sub.events() == [] and log.cursor("mqtt") == 0, "nothing delivered, everything kept"
        wrong.close()
        right = MqttSink(log, MqttSettings("127.0.0.1", broker.port, username="cam", password="s3cret-pass"))
        assert sub.wait_for(lambda s: len(s.events()) == 20, 20)
        check_delivery(sub.events(), list(range(1, 21)))
        right.close()
        text = caplog.text + repr(MqttSettings("h", password="s3cret-pass"))
        assert "s3cret-pass" not in text and "wrong-pass" not in text
    finally:
        sub.close()
        log.close()
        broker.stop()


@pytest.mark.parametrize("case", ["no such host", "tls to a plain port"])
def test_a_broker_that_cannot_be_reached_is_one_warning_and_the_events_wait(tmp_path, caplog, case):
    broker = Broker(tmp_path / "broker")
    log = EventLog(tmp_path / "events")
    log.append(batch(5))
    settings = (MqttSettings("no-such-host.invalid", 1883) if case == "no such host"
                else MqttSettings("127.0.0.1", broker.port, tls=True))
    try:
        sink = MqttSink(log, settings)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("cannot reach" in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
        assert sink.state == "connecting" and sink.error is not None
        assert ("no such host" if case == "no such host" else "TLS failed") in sink.error, sink.error
        started = time.monotonic()
        sink.close()
        assert time.monotonic() - started < 3, "closing does not wait for a broker it never reached"
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any(f"cannot reach {settings.host}:{settings.port}" in w for w in warnings), warnings
        assert log.cursor("mqtt") == 0 and log.count() == 5, "the events wait in the log"
    finally:
        log.close()
        broker.stop()


def render(template: str, payload: str) -> str:
    """A discovery value_template as Home Assistant renders it: Jinja2 (sandboxed), `value` the payload, `value_json` its JSON."""
    from jinja2.sandbox import SandboxedEnvironment

    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = None
    return SandboxedEnvironment().from_string(template).render(value=payload, value_json=parsed).strip()


def test_home_assistant_discovery_configs_are_retained_with_the_keys_it_needs_and_read_values_that_arrive(tmp_path):
    """One connection for two sources; each source a device; every config's state topic carries a
    retained value its template reads: the counts' totals and the zone's occupancy."""
    from streamer.outputs.events.homeassistant import SourceLayout

    broker = Broker(tmp_path / "broker")
    log = EventLog(tmp_path / "events")
    now = time.time()
    counts = {"objects_total": {"car": 3}, "lines": {"h": {"car": {"in": 2, "out": 1}, "person": {"in": 0, "out": 1}}},
              "zones": {"left zone": {"car": 2}}}
    log.append([NewEvent("source_state", "cam0", 0.0, now, {"state": "connected", "connection": 0}),
                NewEvent("source_state", "cam.1", 0.0, now, {"state": "connected", "connection": 0}),
                NewEvent("zone_entry", "cam0", 1.0, now, {"zone": "left zone", "category": "car", "track_id": 4, "position": [1, 2],
                                                          "counted": True, "occupancy": 1}),
                NewEvent("counts", "cam0", 1.0, now, counts),
                NewEvent("counts", "cam.1", 1.0, now, {"objects_total": {}, "lines": {}, "zones": {"z": {}}})])
    layouts = [SourceLayout("cam0", ("h",), ("left zone",), ("car", "person")), SourceLayout("cam.1", (), ("z",), ("car",))]
    sink = MqttSink(log, MqttSettings("127.0.0.1", broker.port, topic_prefix="st", client_id="d1", home_assistant=True,
                                      discovery_prefix="ha"), layouts)
    try:
        assert wait_until(lambda: log.cursor("mqtt") == 5, 10)
        sub = Subscriber(broker.port)  # after the fact: only what is retained
        expected_configs = 2 * 1 + 2 + 2 + 1 + 2  # cam0: 2 categories, h in/out, zone entries + occupied; cam.1: 1 category, z both
        assert sub.wait_for(lambda s: sum(t.startswith("ha/") for t, _, _ in s.messages) == expected_configs, 10)
        time.sleep(0.3)
        retained = {t: p for t, p, r in sub.messages if r}
        sub.close()
        configs = {t: json.loads(p) for t, p in retained.items() if t.startswith("ha/")}
        assert len(configs) == expected_configs
        values: dict[tuple[str, str], str] = {}
        for topic, config in configs.items():
            component = topic.split("/")[1]
            assert re.fullmatch(r"ha/(sensor|binary_sensor)/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/config", topic), topic
            assert {"name", "unique_id", "state_topic", "value_template", "device", "availability_topic"} <= set(config)
            assert config["device"]["identifiers"] and isinstance(config["device"]["identifiers"], list)
            assert config["availability_topic"] == "st/availability" and retained["st/availability"] == "online"
            assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
            assert config["state_topic"] in retained, f"{config['state_topic']} carries a retained value"
            value = render(config["value_template"], retained[config["state_topic"]])
            if component == "binary_sensor":
                assert config["device_class"] == "occupancy" and value in (config["payload_on"], config["payload_off"])
            else:
                assert config["state_class"] == "total_increasing" and value.isdigit(), (topic, value)
            values[config["device"]["name"], config["name"]] = value
        assert len({c["unique_id"] for c in configs.values()}) == len(configs), "unique ids"
        assert len({c["device"]["identifiers"][0] for c in configs.values()}) == 2, "a device per source"
        assert values == {("cam0", "car seen"): "3", ("cam0", "person seen"): "0", ("cam0", "h in"): "2", ("cam0", "h out"): "2",
                          ("cam0", "left zone entries"): "2", ("cam0", "left zone occupied"): "ON",
                          ("cam.1", "car seen"): "0", ("cam.1", "z entries"): "0", ("cam.1", "z occupied"): "OFF"}
    finally:
        sink.close()
        log.close()
        broker.stop()


def test_a_wrong_password_and_a_dead_webhook_show_in_healthz_metrics_and_the_status_line_while_the_events_wait(tmp_path, caplog):
    """The daemon's sinks as build makes them from the config: one line each at the first failure, their
    state and last error in /healthz and /metrics, and the log keeps every event for them."""
    import torch

    from streamer import control as ctl
    from streamer.config import validate
    from streamer.service import build
    from streamer.service.metrics import Metrics

    broker = Broker(tmp_path / "broker", users={"cam": "right-pass"})
    config = validate({"source": {"uri": "synthetic:street", "id": "street"}, "events": {
        "enabled": True, "dir": str(tmp_path / "events"),
        "webhooks": [{"url": "http://127.0.0.1:1/hook?key=k-secret", "secret": "s-secret"}],
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "username": "cam", "password": "wrong-pass"}}})
    delivery = build.delivery(config)
    log = EventLog(tmp_path / "events")
    try:
        log.append(batch(7))
        delivery.wake()
        wait_until(lambda: all(state.error for state in delivery.states()), 10, what=lambda: delivery.states())
        metrics = Metrics([], ctl.Control(), 60.0, torch.device("cpu"))
        metrics.watch_events(delivery)
        ok, body = metrics.health()
        mqtt, hook = body["events"]["sinks"]["mqtt"], body["events"]["sinks"]["webhook1"]
        assert mqtt["state"] == "connecting" and mqtt["waiting"] == 7 and "refused" in mqtt["error"]
        assert "Not authorized" in mqtt["error"] or "Bad user name or password" in mqtt["error"]
        assert hook["state"] == "retrying" and hook["waiting"] == 7 and "cannot reach" in hook["error"]
        assert body["events"]["dropped"] == 0
        exposition = metrics.exposition()[1].decode()
        assert 'streamer_event_sink_up{sink="mqtt"} 0.0' in exposition and 'streamer_events_waiting{sink="webhook1"} 7.0' in exposition
        text = delivery.text()
        assert text.startswith("events: mqtt connecting (refused: ") and ", 7 waiting; webhook http://127.0.0.1:1/hook?key=" in text
        refusals = [r.getMessage() for r in caplog.records if "refused the connection" in r.getMessage()]
        assert len(refusals) == 1, "one line, not one per retry"
        shown = caplog.text + json.dumps(body) + exposition + text
        assert not any(secret in shown for secret in ("wrong-pass", "right-pass", "k-secret", "s-secret"))
        assert log.count() == 7 and log.cursor("mqtt") == 0, "the events wait in the log"
    finally:
        delivery.close()
        log.close()
        broker.stop()


def test_mqtt_without_paho_is_one_line_naming_the_extra_exit_78(tmp_path, monkeypatch):
    from streamer.config import validate
    from streamer.errors import ConfigError
    from streamer.service import build

    config = validate({"source": {"uri": "synthetic:street"}, "events": {"enabled": True, "dir": str(tmp_path), "mqtt": {"host": "b"}}})
    monkeypatch.setitem(sys.modules, "paho", None)  # as if it were not installed: importing it raises ImportError
    monkeypatch.setitem(sys.modules, "paho.mqtt", None)
    with pytest.raises(ConfigError, match=r"pip install 'streamer\[mqtt\]'") as caught:
        build.delivery(config)
    assert caught.value.exit_code == 78 and not (tmp_path / "events.sqlite").exists(), "refused before the log is touched"
