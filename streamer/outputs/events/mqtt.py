"""MqttSink: every source's events from the log to an MQTT broker, in order, over one paho-mqtt 2.x
connection per daemon (client id `events.mqtt.client_id`).

Topics: `PREFIX/SOURCE/KIND` (kinds.py lists the kinds), the payload the event's JSON
(StoredEvent.message); `counts` retained, so a new subscriber learns the totals at once. Beside them,
`PREFIX/SOURCE/occupancy/ZONE` (retained): the tracks inside the zone now, a plain number, from each
zone entry's and exit's `occupancy` (0 for each of the source's zones when it connects). The daemon's
availability is `PREFIX/availability`: `online` (retained) once connected, `offline` at a clean stop,
and the broker says `offline` itself for a daemon that vanished (the last will). With Home Assistant
discovery on, homeassistant.py's configs are published (retained) at each connection.

Delivery: a thread reads the log after the sink's cursor (`mqtt`), publishes up to WINDOW
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
import socket
import ssl
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from streamer.outputs.events import homeassistant
from streamer.outputs.events.homeassistant import SourceLayout
from streamer.outputs.events.log import EventLog, StoredEvent

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
    home_assistant: bool = False
    discovery_prefix: str = "homeassistant"

    def availability_topic(self) -> str:
        return f"{self.topic_prefix}/availability"


def failure_text(exc: BaseException | None, tls: bool = False) -> str:
    """Why a connection attempt failed, in a few words, without the host. `tls`: the attempt was a TLS
    handshake (a plain port answers it by resetting or closing the connection)."""
    if isinstance(exc, socket.gaierror):
        return f"no such host ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLError) or (tls and isinstance(exc, (ConnectionResetError, ConnectionAbortedError, EOFError))):
        return f"TLS failed ({getattr(exc, 'reason', None) or getattr(exc, 'strerror', None) or exc}; is the port a TLS one?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (no broker listening there)"
    if isinstance(exc, OSError):
        return f"cannot connect ({exc.strerror or type(exc).__name__})"
    return "cannot connect"


class MqttSink:
    """Delivers every source's events from `events_log` over one connection; starts at once, `close()`
    once. `layouts`: the sources, for Home Assistant discovery and their zones' occupancy topics."""

    kind = "mqtt"

    def __init__(self, events_log: EventLog, settings: MqttSettings, layouts: Sequence[SourceLayout] = (), version: str = "") -> None:
        import paho.mqtt.client as mqtt  # the `mqtt` extra: imported only when events.mqtt is set

        self._mqtt = mqtt
        self.log, self.settings = events_log, settings
        self.layouts = {layout.source_id: layout for layout in layouts}
        self.version = version
        self.name = "mqtt"
        self.target = f"mqtt://{settings.host}:{settings.port}"
        self.error: str | None = None  # why the last attempt failed or the connection dropped; None while connected
        self._ever_connected = False
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
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id)
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
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()
        log.info("events: to %s as %s, topics %s/SOURCE/KIND%s, from event %d on", self.target, settings.client_id,
                 settings.topic_prefix, f", Home Assistant discovery under {settings.discovery_prefix}/" if settings.home_assistant
                 else "", self.cursor)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def state(self) -> str:
        """`connected`, `connecting` (never yet) or `reconnecting`."""
        return "connected" if self._connected.is_set() else "reconnecting" if self._ever_connected else "connecting"

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
            log.warning("events: mqtt: stopped with events not yet delivered; they go out from event %d at the next start (%d)",
                        self.cursor + 1, left)

    def _behind(self) -> bool:
        return bool(self.log.after(self.cursor, 1))

    # -- paho's thread

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusals += 1
            self.error = f"refused: {reason_code}"
            if self._refusals == 1 or self._refusals % 100 == 0:
                log.warning("events: mqtt: %s:%d refused the connection: %s (events wait in the log)", self.settings.host,
                            self.settings.port, reason_code)
            return
        self._refusals = 0
        self.error = None
        client.publish(self.settings.availability_topic(), "online", qos=1, retain=True)
        if self.settings.home_assistant:
            for topic, config in homeassistant.all_configs(self.settings.discovery_prefix, self.settings.topic_prefix,
                                                           self.settings.client_id, list(self.layouts.values()), self.version):
                client.publish(topic, json.dumps(config, separators=(",", ":")), qos=1, retain=True)
        log.info("events: mqtt: connected to %s:%d", self.settings.host, self.settings.port)
        self._ever_connected = True
        self._connected.set()
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set() and not self._stop.is_set():
            self.error = f"lost the broker ({reason_code})"
            log.warning("events: mqtt: lost the broker (%s); reconnecting, events wait in the log", reason_code)
        self._lost = True
        self._connected.clear()
        self._wake.set()

    def _on_connect_fail(self, client, userdata) -> None:
        self._refusals += 1
        self.error = failure_text(sys.exc_info()[1], self.settings.tls)  # paho calls this while handling the attempt's OSError
        if self._refusals == 1 or self._refusals % 100 == 0:
            log.warning("events: mqtt: cannot reach %s:%d: %s; retrying with backoff (events wait in the log)",
                        self.settings.host, self.settings.port, self.error)

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
                for event in self.log.after(self._next, WINDOW - len(self._sent)):
                    info = self._client.publish(f"{self.settings.topic_prefix}/{event.source}/{event.kind}",
                                                json.dumps(event.message(), separators=(",", ":")), qos=self.settings.qos,
                                                retain=event.kind == "counts")
                    if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
                        self._lost = True  # not connected any more: from the cursor again, once it is
                        break
                    self._states(event)
                    self._sent.append((info.mid, event.seq))
                    self._next = event.seq
                    self._wake.set()
            self._settle()
        except Exception as exc:  # noqa: BLE001  the log failed: nothing more to deliver; the pipeline goes on
            self.error = f"delivery stopped: {exc}"
            log.error("events: mqtt: delivery stopped: %s", exc)

    def _states(self, event: StoredEvent) -> None:
        """The retained state topics an event changes (not tracked for the cursor: the event itself is)."""
        zones: dict[str, int] = {}
        if event.kind in ("zone_entry", "zone_exit") and "occupancy" in event.payload:
            zones[event.payload["zone"]] = int(event.payload["occupancy"])
        elif event.kind == "source_state" and event.payload.get("state") == "connected" and event.source in self.layouts:
            zones = dict.fromkeys(self.layouts[event.source].zones, 0)  # a new run: nothing inside yet
        for zone, inside in zones.items():
            self._client.publish(homeassistant.occupancy_topic(self.settings.topic_prefix, event.source, zone), str(inside),
                                 qos=self.settings.qos, retain=True)

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
