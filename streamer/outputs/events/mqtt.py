"""MqttSink: one source's events from the log to an MQTT broker, in order, over paho-mqtt 2.x.

Topics: `PREFIX/SOURCE/KIND` (kinds.py lists the kinds), the payload the event's JSON
(StoredEvent.message); `counts` retained, so a new subscriber learns the totals at once. The daemon's
availability is `PREFIX/availability`: `online` (retained) once connected, `offline` at a clean stop,
and the broker says `offline` itself for a daemon that vanished (the last will).

Delivery: a thread reads the log after the sink's cursor (`mqtt:SOURCE`), publishes up to WINDOW
events, and advances the cursor over the longest run of events the broker acknowledged (QoS 1 and 2:
PUBACK / PUBCOMP; QoS 0: written to the socket), committed in the log. When the connection drops,
it starts again from the cursor once paho has reconnected (paho backs off from 1 s to 30 s): what
was in flight may arrive twice, with the same id; nothing is skipped. A broker that is down only
lets the log grow; the pipeline never waits for it. The password is never logged.
"""
from __future__ import annotations

import collections
import json
import logging
import ssl
import threading
from dataclasses import dataclass, field

from streamer.outputs.events.log import EventLog

log = logging.getLogger(__name__)

WINDOW = 100  # events published and not yet acknowledged, at most
POLL_S = 0.2
DRAIN_S = 5.0  # at close, how long to wait for the log to be delivered
KEEPALIVE_S = 30
BACKOFF_S = (1, 30)


@dataclass(frozen=True)
class MqttSettings:
    """events.mqtt, as plain values (streamer.service.build makes it)."""

    host: str
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str = "streamer"
    topic_prefix: str = "streamer"
    qos: int = 1

    def availability_topic(self) -> str:
        return f"{self.topic_prefix}/availability"


class MqttSink:
    """Delivers `source_id`'s events from `events_log`; starts at once, `close()` once."""

    def __init__(self, events_log: EventLog, source_id: str, settings: MqttSettings) -> None:
        import paho.mqtt.client as mqtt  # the `mqtt` extra: imported only when events.mqtt is set

        self._mqtt = mqtt
        self.log, self.source_id, self.settings = events_log, source_id, settings
        self.name = f"mqtt:{source_id}"
        self.cursor = events_log.start_cursor(self.name, 0)
        self._next = self.cursor  # the last seq published on this connection
        self._sent: collections.deque[tuple[int, int]] = collections.deque()  # (mid, seq) in publish order
        self._acked: collections.deque[int] = collections.deque()  # mids paho confirmed (its thread appends)
        self._pending: set[int] = set()  # confirmed mids not yet at the front of _sent
        self._connected = threading.Event()
        self._lost = False  # the connection dropped: start again from the cursor
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._refusals = 0
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{settings.client_id}-{source_id}")
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.tls:
            client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        client.will_set(settings.availability_topic(), "offline", qos=1, retain=True)
        client.reconnect_delay_set(*BACKOFF_S)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_connect_fail = self._on_connect_fail
        self._client = client
        client.connect_async(settings.host, settings.port, keepalive=KEEPALIVE_S)
        client.loop_start()
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{source_id}", daemon=True)
        self._thread.start()
        log.info("%s: events to mqtt://%s:%d as %s, topics %s/%s/KIND, from event %d on", source_id, settings.host, settings.port,
                 f"{settings.client_id}-{source_id}", settings.topic_prefix, source_id, self.cursor)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        """Deliver what the log holds (at most DRAIN_S while connected), say offline, disconnect."""
        deadline = DRAIN_S / POLL_S
        while self._connected.is_set() and self._thread.is_alive() and deadline > 0 and self._behind():
            self._wake.set()
            self._stop.wait(POLL_S)
            deadline -= 1
        self._stop.set()
        self._wake.set()
        self._thread.join(DRAIN_S)
        try:
            if self._connected.is_set():
                info = self._client.publish(self.settings.availability_topic(), "offline", qos=1, retain=True)
                info.wait_for_publish(2.0)
            self._client.disconnect()
        finally:
            self._client.loop_stop()
        left = self.log.last_seq() - self.cursor
        if self._behind():
            log.warning("%s: mqtt: stopped with events not yet delivered; they go out from event %d at the next start (%d or fewer)",
                        self.source_id, self.cursor + 1, left)

    def _behind(self) -> bool:
        return bool(self.log.after(self.cursor, 1, self.source_id))

    # -- paho's thread

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusals += 1
            if self._refusals == 1 or self._refusals % 100 == 0:
                log.warning("%s: mqtt: %s:%d refused the connection: %s (events wait in the log)", self.source_id, self.settings.host,
                            self.settings.port, reason_code)
            return
        self._refusals = 0
        client.publish(self.settings.availability_topic(), "online", qos=1, retain=True)
        log.info("%s: mqtt: connected to %s:%d", self.source_id, self.settings.host, self.settings.port)
        self._connected.set()
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set() and not self._stop.is_set():
            log.warning("%s: mqtt: lost the broker (%s); reconnecting, events wait in the log", self.source_id, reason_code)
        self._lost = True
        self._connected.clear()
        self._wake.set()

    def _on_connect_fail(self, client, userdata) -> None:
        self._refusals += 1
        if self._refusals == 1 or self._refusals % 100 == 0:
            log.warning("%s: mqtt: cannot reach %s:%d; retrying with backoff (events wait in the log)", self.source_id,
                        self.settings.host, self.settings.port)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acked.append(mid)
        self._wake.set()

    # -- this sink's thread

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.wait(POLL_S)
                self._wake.clear()
                self._settle()
                if self._lost:
                    self._lost = False
                    self._sent.clear()
                    self._pending.clear()
                    self._next = self.cursor
                if not self._connected.is_set() or len(self._sent) >= WINDOW:
                    continue
                for event in self.log.after(self._next, WINDOW - len(self._sent), self.source_id):
                    info = self._client.publish(f"{self.settings.topic_prefix}/{self.source_id}/{event.kind}",
                                                json.dumps(event.message(), separators=(",", ":")), qos=self.settings.qos,
                                                retain=event.kind == "counts")
                    if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
                        self._lost = True  # not connected any more: from the cursor again, once it is
                        break
                    self._sent.append((info.mid, event.seq))
                    self._next = event.seq
                    self._wake.set()
            self._settle()
        except Exception as exc:  # noqa: BLE001  the log failed: nothing more to deliver; the pipeline goes on
            log.error("%s: mqtt: delivery stopped: %s", self.source_id, exc)

    def _settle(self) -> None:
        """Advance the cursor over the events acknowledged in a row from the oldest in flight."""
        while self._acked:
            self._pending.add(self._acked.popleft())
        seq = None
        while self._sent and self._sent[0][0] in self._pending:
            mid, seq = self._sent.popleft()
            self._pending.discard(mid)
        if self._pending:  # keep only confirmations of what is in flight: others are stale (the availability message, a
            in_flight = {mid for mid, _ in self._sent}  # connection before the last drop), and mids wrap at 65535
            self._pending &= in_flight
        if seq is not None and seq > self.cursor:
            self.log.advance(self.name, seq)
            self.cursor = seq
