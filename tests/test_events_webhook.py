"""Events to webhooks with a real HTTP receiver (http.server on 127.0.0.1): retries with backoff, order,
the HMAC-SHA256 signature recomputed here, each receiver's own cursor across a restart, kinds."""
from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
from helpers import wait_until
from receiver import Receiver

from streamer.outputs.events.log import EventLog, NewEvent
from streamer.outputs.events.webhook import WebhookSettings, WebhookSink

pytestmark = pytest.mark.system  # an HTTP server

SECRET = "whsec-test-4f1a"
FAST = (0.05, 0.2)  # the backoff of these tests: first retry after 50 ms, at most 200 ms apart


def batch(n: int, start: int = 0) -> list[NewEvent]:
    now = time.time()
    kinds = ("line_crossing", "track_start", "counts")
    return [NewEvent(kinds[(start + i) % 3], "cam0" if i % 2 else "cam1", (start + i) / 15, now, {"n": start + i}) for i in range(n)]


def test_a_receiver_that_fails_three_times_gets_every_event_once_in_order_signed_and_none_lost_across_a_restart(tmp_path):
    receiver = Receiver(failures=3)
    log = EventLog(tmp_path / "events")
    try:
        first = log.append(batch(20))
        everything = WebhookSink(log, WebhookSettings(f"{receiver.url}/all?token=q-secret", secret=SECRET, backoff_s=FAST))
        crossings = WebhookSink(log, WebhookSettings(f"{receiver.url}/crossings", frozenset({"line_crossing"}), backoff_s=FAST))
        wait_until(lambda: everything.cursor == crossings.cursor == 20, 20, what=lambda: (everything.cursor, crossings.cursor))
        assert receiver.refused == {"/all?token=q-secret": 3, "/crossings": 3}, "three 500s each, then retried"
        assert everything.state == "delivering" and everything.error is None
        everything.close()
        crossings.close()
        # a restart: events logged while no sink runs go out from each receiver's cursor, none twice
        log.close()
        log = EventLog(tmp_path / "events")
        second = log.append(batch(20, 20))
        everything = WebhookSink(log, WebhookSettings(f"{receiver.url}/all?token=q-secret", secret=SECRET, backoff_s=FAST))
        crossings = WebhookSink(log, WebhookSettings(f"{receiver.url}/crossings", frozenset({"line_crossing"}), backoff_s=FAST))
        try:
            wait_until(lambda: everything.cursor == crossings.cursor == 40, 20)
        finally:
            everything.close()
            crossings.close()

        logged = [e.message() for e in first + second]
        assert receiver.events("/all?token=q-secret") == logged, "every event once, in log order"
        assert receiver.events("/crossings") == [e for e in logged if e["kind"] == "line_crossing"]
        for path, headers, body in receiver.accepted:
            event = json.loads(body)
            assert headers["Content-Type"] == "application/json" and headers["X-Streamer-Event-Id"] == event["id"]
            if path.startswith("/all"):
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                assert hmac.compare_digest(headers["X-Streamer-Signature"], expected)
            else:
                assert "X-Streamer-Signature" not in headers, "no secret, no signature"
    finally:
        log.close()
        receiver.close()


def test_a_receiver_that_is_down_keeps_the_events_in_the_log_and_says_why_without_its_secrets(tmp_path, caplog):
    receiver = Receiver()
    url = f"{receiver.url}/hook?key=k-secret"
    receiver.close()  # nothing listens there any more
    log = EventLog(tmp_path / "events")
    try:
        log.append(batch(5))
        sink = WebhookSink(log, WebhookSettings(url, secret=SECRET, timeout_s=1, backoff_s=FAST))
        wait_until(lambda: sink.failures >= 2, 10)
        assert sink.state == "retrying" and sink.error is not None and "cannot reach" in sink.error
        started = time.monotonic()
        sink.close()
        assert time.monotonic() - started < 3, "closing does not wait for a receiver that is down"
        assert log.cursor(sink.name) == 0 and log.count() == 5, "the events wait in the log"
        text = caplog.text + repr(sink.settings) + sink.target + (sink.error or "")
        assert "k-secret" not in text and SECRET not in text
        assert any("cannot reach" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    finally:
        log.close()
