"""Delivery: the daemon's sinks (one MQTT connection, each webhook), shared by every source, and their state.

One per run (streamer.service.build makes it with the first source's events): every source's
EventsOutput logs into the same `events.dir` and wakes the sinks here after each append
(`source_waker`); the sinks read the log with a connection of their own and are closed once, when the
run ends, after every source's last events are logged. `states()` is what the status line, /healthz
and /metrics show of each sink: its state, its last error (no host, URL or secret in it) and the
events waiting for it (the log's last seq minus its cursor).
"""
from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from streamer.outputs.events.log import EventLog, NewEvent

log = logging.getLogger(__name__)


class DeliverySink(Protocol):
    """mqtt.MqttSink, webhook.WebhookSink."""

    kind: str  # mqtt | webhook
    name: str  # its cursor in the log
    target: str  # where it delivers, as it may be shown (secrets hidden)
    cursor: int
    error: str | None

    @property
    def state(self) -> str: ...

    def wake(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SinkState:
    """One sink as status, /healthz and /metrics show it. `state`: mqtt `connected` / `connecting` /
    `reconnecting`, webhook `delivering` / `retrying`; `waiting`: events logged and not yet delivered."""

    kind: str
    target: str
    state: str
    error: str | None
    waiting: int

    @property
    def up(self) -> bool:
        return self.state in ("connected", "delivering")

    def text(self) -> str:
        """`mqtt connected, 0 waiting`, `webhook http://h/hook retrying (HTTP 500), 12 waiting`."""
        what = self.kind if self.kind == "mqtt" else f"{self.kind} {self.target}"
        return f"{what} {self.state}" + (f" ({self.error})" if self.error and not self.up else "") + f", {self.waiting} waiting"


class _SourceWaker:
    """What a source's EventsOutput holds as its sink: wakes the shared sinks; its close() leaves them to the run."""

    def __init__(self, delivery: Delivery) -> None:
        self._delivery = delivery

    def wake(self) -> None:
        self._delivery.wake()

    def close(self) -> None:
        self._delivery.wake()


class Delivery:
    """The run's sinks, delivering from `events_log` (its own connection, closed here)."""

    def __init__(self, events_log: EventLog, sinks: Sequence[DeliverySink] = ()) -> None:
        self.log = events_log
        self.sinks = list(sinks)
        self._closed = False

    def source_waker(self) -> _SourceWaker:
        return _SourceWaker(self)

    def wake(self) -> None:
        for sink in self.sinks:
            sink.wake()

    def source_state(self, source_id: str, state: str, reason: str | None = None) -> None:
        """A source's capture changed state (inputs.capture.Capture's `on_state`, its thread): `reconnecting`
        is logged at once as a `source_state` event (`reason`: why the connection ended: `ended`, `stalled`,
        `failed`), so receivers learn of an outage while no frame comes; it may come before the events of
        the last frames read before the drop, still in the models. The other states come with the frames (kinds.py)."""
        if state != "reconnecting":
            return
        try:
            self.log.append([NewEvent("source_state", source_id, None, time.time(), {"state": state, "reason": reason})])
        except sqlite3.Error as exc:
            log.error("%s: events: cannot log that the source is reconnecting: %s", source_id, exc)
            return
        self.wake()

    def states(self) -> list[SinkState]:
        try:
            last = self.log.last_seq() if self.sinks and not self._closed else 0
        except sqlite3.Error:  # closed by the run's end meanwhile
            last = 0
        return [SinkState(sink.kind, sink.target, sink.state, sink.error, max(0, last - sink.cursor)) for sink in self.sinks]

    def dropped(self) -> int:
        """Events the log's size cap removed, all time (0 once closed)."""
        try:
            return self.log.dropped if not self._closed else 0
        except sqlite3.Error:
            return 0

    def text(self) -> str:
        """The status line's part: `events: mqtt connected, 0 waiting`; "" without sinks."""
        states = self.states()
        return "events: " + "; ".join(state.text() for state in states) if states else ""

    def close(self) -> None:
        """Each sink delivers what it can in a few seconds and stops; then the log is closed."""
        try:
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception as exc:  # noqa: BLE001  one sink's failure never keeps the others from closing
                    log.error("events: %s %s did not close cleanly: %s", sink.kind, sink.target, exc)
        finally:
            self._closed = True
            self.log.close()
