"""WebhookSink: every source's events from the log to one HTTP receiver, one JSON POST per event, in order.

The body is the event's JSON (StoredEvent.message), the same as an MQTT payload; headers:

    Content-Type: application/json
    X-Streamer-Event: KIND           X-Streamer-Event-Id: ID (what a receiver drops repeats by)
    X-Streamer-Signature: sha256=HEX (only with a secret: HMAC-SHA256 of the raw body, RFC 2104, keyed
                                      with the secret's UTF-8 bytes; GitHub's `X-Hub-Signature-256` form)

Delivery: a thread reads the log after the sink's cursor (`webhook:` and a hash of the URL, so each
receiver keeps its own place across restarts and a reordered list), posts one event at a time and
advances the cursor once the receiver answered 2xx. Any other answer (a redirect included), a refused
connection or a timeout is retried, the same event, after an exponential backoff (`backoff_s`: from
its first value, doubled each time, capped at its second); nothing later goes out before it. Events
of kinds the receiver did not ask for are skipped (the cursor passes over them). A receiver that is
down only lets the log grow; the pipeline never waits for it. The URL's credentials and query and the
secret are never logged.
"""
from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from streamer.outputs.events.log import EventLog, StoredEvent
from streamer.uris import redact_url

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Streamer-Signature"
BATCH = 100  # events read from the log at a time
POLL_S = 0.5
DRAIN_S = 5.0  # at close, how long a receiver that answers may take to get what the log holds
BACKOFF_S = (1.0, 60.0)  # first retry after 1 s, doubling, at most 60 s apart


def signature(secret: str, body: bytes) -> str:
    """The X-Streamer-Signature value of `body`: `sha256=` and the hex HMAC-SHA256 (RFC 2104) keyed with `secret`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def cursor_name(url: str) -> str:
    """The log's cursor of the receiver at `url`: a hash, so the URL's secrets never reach the log."""
    return "webhook:" + hashlib.sha256(url.encode()).hexdigest()[:16]


def shown(url: str) -> str:
    """`url` as logs and /healthz show it: scheme, host, port and path; credentials and query hidden."""
    return redact_url(url.split("#", 1)[0])


@dataclass(frozen=True)
class WebhookSettings:
    """One of events.webhooks, as plain values (streamer.service.build makes it). `kinds`: the kinds
    it gets (None: all); `timeout_s`: per request; `backoff_s`: (first, largest) wait between tries."""

    url: str = field(repr=False)
    kinds: frozenset[str] | None = None
    secret: str | None = field(default=None, repr=False)
    timeout_s: float = 5.0
    backoff_s: tuple[float, float] = BACKOFF_S


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer that did not take the event: retried, never followed (a POST would become a GET)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001  urllib's signature
        return None


class WebhookSink:
    """Delivers the log's events to `settings.url`; starts at once, `close()` once."""

    kind = "webhook"

    def __init__(self, events_log: EventLog, settings: WebhookSettings) -> None:
        self.log, self.settings = events_log, settings
        self.name = cursor_name(settings.url)
        self.target = shown(settings.url)
        self.cursor = events_log.start_cursor(self.name, 0)
        self.error: str | None = None  # the last failure, without the URL; None once an event went through
        self.failures = 0  # tries in a row that failed
        self.delivered = 0  # events this run delivered
        self._opener = urllib.request.build_opener(_NoRedirect())
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._draining = False
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()
        log.info("events: webhook %s%s, from event %d on", self.target,
                 f" ({', '.join(sorted(settings.kinds))} only)" if settings.kinds is not None else "", self.cursor)

    @property
    def state(self) -> str:
        """`delivering` while the receiver answers, `retrying` after a failure."""
        return "retrying" if self.failures else "delivering"

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        """Deliver what the log holds (at most DRAIN_S, and only while the receiver answers), then stop."""
        deadline = time.monotonic() + DRAIN_S
        while self._thread.is_alive() and not self.failures and time.monotonic() < deadline and self.log.after(self.cursor, 1):
            self._wake.set()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        self._thread.join(self.settings.timeout_s + 1.0)
        if self.log.last_seq() > self.cursor:
            log.warning("events: webhook %s: stopped with events not yet delivered; they go out from event %d at the next start",
                        self.target, self.cursor + 1)

    # -- this sink's thread

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                events = self.log.after(self.cursor, BATCH)
                if not events:
                    self._wake.wait(POLL_S)
                    self._wake.clear()
                    continue
                passed = self.cursor  # skipped kinds: committed with the next delivery, or at the batch's end
                for event in events:
                    wanted = self.settings.kinds is None or event.kind in self.settings.kinds
                    if self._stop.is_set() or (wanted and not self._deliver(event)):
                        break
                    passed = event.seq
                    if wanted:
                        self._advance(passed)
                if passed > self.cursor:
                    self._advance(passed)
        except Exception as exc:  # noqa: BLE001  the log failed: nothing more to deliver; the pipeline goes on
            self.error = f"delivery stopped: {exc}"
            log.error("events: webhook %s: delivery stopped: %s", self.target, exc)

    def _advance(self, seq: int) -> None:
        self.log.advance(self.name, seq)
        self.cursor = seq

    def _deliver(self, event: StoredEvent) -> bool:
        """POST `event` until the receiver takes it (True) or the sink stops (False)."""
        body = json.dumps(event.message(), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "streamer", "X-Streamer-Event": event.kind,
                   "X-Streamer-Event-Id": event.id}
        if self.settings.secret is not None:
            headers[SIGNATURE_HEADER] = signature(self.settings.secret, body)
        first, largest = self.settings.backoff_s
        while not self._stop.is_set():
            error = self._post(body, headers)
            if error is None:
                if self.failures:
                    log.info("events: webhook %s: delivering again after %d failed tries", self.target, self.failures)
                self.failures, self.error = 0, None
                self.delivered += 1
                return True
            self.failures += 1
            self.error = error
            delay = min(largest, first * 2 ** min(self.failures - 1, 30))
            if self.failures == 1 or self.failures % 100 == 0:
                log.warning("events: webhook %s: %s; retrying event %d with backoff (up to %g s apart), later events wait in the log",
                            self.target, error, event.seq, largest)
            self._stop.wait(delay)
        return False

    def _post(self, body: bytes, headers: dict[str, str]) -> str | None:
        """None when the receiver answered 2xx, else what went wrong (no URL in it)."""
        request = urllib.request.Request(self.settings.url, body, headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.settings.timeout_s) as answer:
                answer.read()
                status = answer.status
        except urllib.error.HTTPError as exc:
            exc.close()
            return f"HTTP {exc.code}"
        except urllib.error.URLError as exc:
            reason = exc.reason
            return f"cannot reach the receiver ({getattr(reason, 'strerror', None) or reason})"
        except (OSError, ValueError, http.client.HTTPException) as exc:  # a timeout, a reset connection, a malformed answer
            return f"no answer ({type(exc).__name__}: {exc})" if str(exc) else f"no answer ({type(exc).__name__})"
        return None if 200 <= status < 300 else f"HTTP {status}"
