"""Capture thread: read a source into a bounded queue under its buffer policy, and keep a live
source alive: reconnect with backoff, abandon a read that hangs, log every state change.

The blocking `read()` runs in a helper thread that can be left behind: OpenCV may block inside
FFmpeg for several times its read timeout on a stalled stream, and the pipeline must not wait.
"""
from __future__ import annotations

import enum
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from streamer import control as ctl
from streamer.config import BufferPolicy
from streamer.errors import DataError, StreamerError
from streamer.frames import Frame
from streamer.inputs.clock import LiveClock
from streamer.inputs.sources import Reader
from streamer.uris import redact_uri

log = logging.getLogger(__name__)


class State(enum.Enum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    RECONNECTING = "reconnecting"
    ENDED = "ended"


@dataclass(frozen=True)
class Connection:
    """A source's connection as the status line and /healthz show it."""

    state: str  # connecting | streaming | reconnecting | ended
    attempt: int  # attempts in a row that failed or did not last; 0 once streaming well
    last_error: str | None  # why the last attempt failed (credentials hidden); None once a frame arrived
    failure: str | None = None  # the kind of that failure (StreamerError.kind: refused, timed_out, ...): no host, no path

    def text(self, source_id: str) -> str:
        """`cam0 streaming`, `cam0 connecting (attempt 3)`."""
        waiting = self.state in (State.CONNECTING.value, State.RECONNECTING.value) and self.attempt
        return f"{source_id} {self.state}" + (f" (attempt {self.attempt})" if waiting else "")


@dataclass(frozen=True)
class Liveness:
    """Watchdog and reconnect settings of one source (defaults and meanings: `source:` in
    streamer.config)."""

    live: bool
    stall_timeout_s: float
    max_attempts: int | None  # reconnect attempts in a row; None = forever
    initial_delay_s: float
    max_delay_s: float
    healthy_after_s: float
    first_connect_s: float | None = None  # a source that never delivered a frame gives up after this; None = forever


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: attempt 0, 1, 2... waits about initial * 2**attempt, capped,
    drawn from [half, full] of that so that many cameras do not retry in lockstep."""
    ceiling = min(maximum, initial * 2 ** min(attempt, 30))
    return rng.uniform(ceiling / 2, ceiling)


def offer(frames: queue.Queue, frame: Frame, policy: BufferPolicy, control: ctl.Control, stats: ctl.Stats) -> bool:
    """Queue a frame under a concrete policy (not AUTO); False only when the pipeline aborts.

    BLOCK: wait for room. DROP_OLDEST: make room by dropping the oldest queued frame.
    LATEST: drop everything queued, keep only this frame.
    """
    if policy is BufferPolicy.BLOCK:
        return ctl.put(frames, frame, control)
    while True:
        if policy is BufferPolicy.LATEST:
            _drop_all(frames, stats, "latest")
        try:
            frames.put_nowait(frame)
            return True
        except queue.Full:
            _drop_one(frames, stats, "queue_full")


def _drop_one(frames: queue.Queue, stats: ctl.Stats, cause: str) -> None:
    try:
        frames.get_nowait()
        stats.dropped[cause] += 1
    except queue.Empty:
        pass


def _drop_all(frames: queue.Queue, stats: ctl.Stats, cause: str) -> None:
    while not frames.empty():
        _drop_one(frames, stats, cause)


class _ReadError:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _read_ahead(reader: Reader, handoff: queue.Queue, alive: threading.Event) -> None:
    """Helper thread: read frames into `handoff`, as (image, pts, arrival on the monotonic clock),
    until the source ends or this reader is abandoned."""
    try:
        while alive.is_set():
            read = reader.read()
            item = None if read is None else (*read, time.monotonic())
            while alive.is_set():
                try:
                    handoff.put(item, timeout=ctl.POLL_S)
                    break
                except queue.Full:
                    continue
            if item is None:
                return
    except Exception as exc:  # noqa: BLE001 - handed to the capture thread, which decides
        handoff.put(_ReadError(exc))
    finally:
        reader.close()


class Capture:
    """One source's capture thread body: connect, stream, and for live sources reconnect."""

    def __init__(
        self,
        open_reader: Callable[[], Reader],
        source_id: str,
        description: str,
        frames: queue.Queue,
        policy: BufferPolicy,
        liveness: Liveness,
        control: ctl.Control,
        stats: ctl.Stats,
        max_frames: int | None = None,
        seed: int | None = None,
        on_state: Callable[[str, str | None], None] | None = None,
    ):
        """`on_state(state, reason)`: told each state change (`reconnecting` with why: `ended`, `stalled`,
        `failed`), from this thread; its failures are logged, never the capture's."""
        self.open_reader = open_reader
        self.on_state = on_state
        self.source_id = source_id
        self.description = description
        self.frames = frames
        self.policy = policy
        self.liveness = liveness
        self.control = control
        self.stats = stats
        self.max_frames = max_frames
        self.state = State.CONNECTING
        self.attempt = 0  # connection attempts in a row that failed or did not last (status line, /healthz)
        self.last_error: str | None = None  # why the last one failed (credentials hidden)
        self.failure: str | None = None  # its kind (StreamerError.kind)
        self._streamed = False  # a frame has arrived since the start
        self._started = 0.0  # the first attempt (monotonic clock)
        self._rng = random.Random(seed)
        self._clock = LiveClock(source_id, time.monotonic())
        self._down_since: float | None = None

    def run(self) -> None:
        """Always ends by putting END on the queue."""
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - the run fails, but the frames already read are finished
            self.control.fail("capture", exc, abort=False)
        finally:
            self._set_state(State.ENDED)
            ctl.put(self.frames, ctl.END, self.control)
            self.control.done()

    def connection(self) -> Connection:
        return Connection(self.state.value, self.attempt, self.last_error, self.failure)

    def _stopping(self) -> bool:
        return self.control.stop.is_set() or self.control.abort.is_set() or self._enough()

    def _enough(self) -> bool:
        return self.max_frames is not None and self.stats.read >= self.max_frames

    def _run(self) -> None:
        self._started = time.monotonic()
        while not self._stopping():
            try:
                reader = self.open_reader()
            except StreamerError as exc:
                if not self.liveness.live:
                    raise
                self.last_error, self.failure = redact_uri(str(exc)), exc.kind
                if not self._wait_before_retry(exc):
                    return
                continue
            self._set_state(State.STREAMING)
            self._clock.new_connection()
            connected = time.monotonic()
            outcome = self._pump(reader)
            if outcome == "ended" and not self.liveness.live:
                log.info("%s: end of stream after %d frames", self.description, self.stats.read)
                return
            if outcome == "stopped":
                return
            if time.monotonic() - connected >= self.liveness.healthy_after_s:
                self.attempt = 0
            self._down_since = time.monotonic()
            self.stats.reconnects += 1
            self._set_state(State.RECONNECTING, outcome)
            if not self._wait_before_retry(None):
                return

    def _wait_before_retry(self, error: StreamerError | None) -> bool:
        """Sleep the backoff delay (interruptibly); False when we stop. Raises when the attempts are
        exhausted, or when a source that never delivered a frame has used its first-connect window:
        the last failure's error (its kind's exit code), or DataError for connections without frames."""
        if self._down_since is None:
            self._down_since = time.monotonic()
        attempt, self.attempt = self.attempt, self.attempt + 1
        limit = self.liveness.max_attempts
        if limit is not None and attempt >= limit:
            reason = f": {redact_uri(str(error))}" if error else ""
            raise StreamerError(f"{self.description}: gave up after {attempt} reconnect attempt(s){reason}")
        delay = backoff_delay(attempt, self.liveness.initial_delay_s, self.liveness.max_delay_s, self._rng)
        window = self.liveness.first_connect_s
        if window is not None and not self._streamed:
            waited = time.monotonic() - self._started
            if waited >= window:
                raise (type(error) if error else DataError)(
                    f"{self.source_id}: {redact_uri(str(error)) if error else 'connected, but no frame arrived'}; "
                    f"no frame within {window:g} s ({attempt + 1} attempts), giving up "
                    "(source.reconnect.first_connect_s: null retries forever)")
            delay = min(delay, window - waited)  # the last attempt at the window's end
        if error is not None:
            log.warning("%s: %s; retrying in %.1f s (attempt %d)", self.source_id, redact_uri(str(error)), delay, attempt + 1)
        else:
            log.info("%s: reconnecting in %.1f s (attempt %d)", self.source_id, delay, attempt + 1)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            self.control.beat()
            if self._stopping():
                return False
            time.sleep(min(ctl.POLL_S, max(0.0, deadline - time.monotonic())))
        return True

    def _pump(self, reader: Reader) -> str:
        """Move frames from a connected reader to the queue. Returns ended | stalled | failed | stopped."""
        handoff: queue.Queue = queue.Queue(maxsize=1)
        alive = threading.Event()
        alive.set()
        threading.Thread(target=_read_ahead, args=(reader, handoff, alive), name=f"read-{self.source_id}", daemon=True).start()
        try:
            last_frame = time.monotonic()
            while not self._stopping():
                self.control.beat()
                try:
                    item = handoff.get(timeout=ctl.POLL_S)
                except queue.Empty:
                    stalled_for = time.monotonic() - last_frame
                    if self.liveness.live and stalled_for > self.liveness.stall_timeout_s:
                        log.warning("%s: no frame for %.1f s: abandoning the stalled connection", self.source_id, stalled_for)
                        return "stalled"
                    continue
                if item is None:
                    if self.liveness.live:
                        log.warning("%s: the stream ended", self.source_id)
                    return "ended"
                if isinstance(item, _ReadError):
                    self.stats.decode_errors += 1
                    if not self.liveness.live:
                        raise item.exc
                    log.warning("%s: read failed: %s", self.source_id, redact_uri(str(item.exc)))
                    return "failed"
                last_frame = time.monotonic()
                if not self._emit(*item):
                    return "stopped"
            return "stopped"
        finally:
            alive.clear()  # the helper thread exits (and closes the reader) as soon as its read returns

    def _emit(self, image, stream_pts: float, captured_mono: float) -> bool:
        """Queue one frame; `captured_mono`: its arrival from the reader."""
        pts = self._clock.stamp(stream_pts, captured_mono) if self.liveness.live else stream_pts
        frame = Frame(self.source_id, self.stats.read, image, pts, time.time(), captured_mono, self.stats.reconnects)
        self.stats.read += 1
        self._streamed = True
        self.last_error = self.failure = None
        self.stats.last_frame_at, self.stats.last_frame_mono = frame.captured_at, captured_mono
        self.control.first_frame.set()
        return offer(self.frames, frame, self.policy, self.control, self.stats)

    def _set_state(self, state: State, reason: str | None = None) -> None:
        if state == self.state:
            return
        outage = ""
        if state == State.STREAMING and self._down_since is not None:
            outage = f" after an outage of {time.monotonic() - self._down_since:.1f} s"
            self._down_since = None
        log.info("%s: %s -> %s%s (%s)", self.source_id, self.state.value, state.value, outage, self.description)
        self.state = state
        if self.on_state is not None:
            try:
                self.on_state(state.value, reason)
            except Exception as exc:  # noqa: BLE001  telling others never stops the capture
                log.error("%s: the state change %s could not be told: %s", self.source_id, state.value, exc)
