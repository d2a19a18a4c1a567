"""What the pipeline's threads share: stop/abort events, the end-of-stream marker, timed queue
operations (no put or get ever blocks without a timeout) and the counters the status line reads."""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamer.errors import EXIT_FAILURE, EXIT_OK, StreamerError
from streamer.uris import redact_uri

if TYPE_CHECKING:
    from streamer.frames import Counts

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a blocked thread looks at the stop/abort events


class EndOfStream:
    """Put after a stage's last item so the next stage knows to finish."""

    def __repr__(self) -> str:
        return "END"


END = EndOfStream()


class Control:
    """Graceful stop (finish what is queued) and abort (leave now, still closing files)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.abort = threading.Event()
        self.failure: BaseException | None = None
        self.first_frame = threading.Event()  # set by the first frame any source delivers
        self._lock = threading.Lock()
        self._beats: dict[str, float] = {}  # thread name -> last time its loop came round

    def beat(self) -> None:
        """Called from every stage's loop: the thread is not stuck in a call that never returns."""
        self._beats[threading.current_thread().name] = time.monotonic()

    def done(self) -> None:
        """A stage that finished normally is no longer watched."""
        self._beats.pop(threading.current_thread().name, None)

    def stalled_stages(self, limit_s: float) -> list[str]:
        """Stages whose loop has not come round for `limit_s` seconds."""
        now = time.monotonic()
        return sorted(name for name, at in list(self._beats.items()) if now - at > limit_s)

    def fail(self, stage: str, exc: BaseException, abort: bool = True) -> None:
        """Record the first failure and log it once; abort every stage unless told the stage can end
        cleanly instead (a source that fails still lets the frames already read be finished)."""
        with self._lock:
            first = self.failure is None
            if first:
                self.failure = exc
        if first:
            if isinstance(exc, StreamerError):
                log.error("%s", redact_uri(str(exc)))
            else:
                log.error("%s stopped: %s: %s", stage, type(exc).__name__, redact_uri(str(exc)))
                log.debug("%s traceback", stage, exc_info=exc)
        if abort:
            self.abort.set()

    @property
    def exit_code(self) -> int:
        if self.failure is None:
            return EXIT_OK
        return self.failure.exit_code if isinstance(self.failure, StreamerError) else EXIT_FAILURE


def put(q: queue.Queue, item: Any, control: Control) -> bool:
    """Blocking put that gives up (False) when the pipeline aborts."""
    while not control.abort.is_set():
        control.beat()
        try:
            q.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False


def get(q: queue.Queue, control: Control) -> Any | None:
    """Blocking get that gives up (None) when the pipeline aborts."""
    while not control.abort.is_set():
        control.beat()
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            continue
    return None


@dataclass
class Stats:
    """Counters for one run. Each field is written by one thread only."""

    read: int = 0
    processed: int = 0
    reconnects: int = 0
    decode_errors: int = 0  # reads that failed (a live source reconnects after one)
    last_frame_at: float | None = None  # wall clock of the newest frame read
    last_frame_mono: float | None = None  # the same, monotonic, for stall checks
    dropped: collections.Counter = field(default_factory=collections.Counter)  # cause -> frames
    latencies: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1000))  # capture -> sink, s
    model_times: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1000))  # inference + fusion, s
    counts: Counts | None = None  # the newest counts of the source (zones, lines, objects), when it counts
    capped: int = 0  # frames whose detections reached the instance model's detections_per_image
    expected: int | None = None  # frames this run will take from it (a file's count, capped); None: no end known


def latency_summary(latencies) -> tuple[float, float, float] | None:
    """p50, p95 and max of end-to-end latencies (seconds)."""
    values = sorted(latencies)
    if not values:
        return None
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return pick(0.5), pick(0.95), values[-1]
