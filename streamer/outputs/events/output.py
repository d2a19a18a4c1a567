"""EventsOutput: one source's frame results become events in the log, and its sinks deliver them.

`write` (the sink thread) only copies the few facts the events need into a bounded queue and never
waits; a writer thread derives the events (kinds.py), appends each batch to the log in one commit,
applies retention now and then, and wakes the sinks. Were the queue ever full (the disk stalled for
thousands of frames), the frame's facts are dropped, counted and logged, and the pipeline goes on.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from streamer.boxes import ground_points
from streamer.frames import Panoptic, Zone
from streamer.outputs.events.kinds import Events, FrameFacts, Seen, counts_fields
from streamer.outputs.events.log import EventLog, NewEvent

log = logging.getLogger(__name__)

QUEUE_FRAMES = 4096  # frames' facts waiting for the writer
BATCH_FRAMES = 64  # at most this many frames per commit
POLL_S = 0.2
PRUNE_EVERY_S = 60.0
CLOSE_TIMEOUT_S = 10.0


class Sink(Protocol):
    """What EventsOutput stops beside itself (mqtt.MqttSink): `wake()` after each append, `close()` at its end."""

    def wake(self) -> None: ...

    def close(self) -> None: ...


class EventsOutput:
    stage = "events"
    needs_picture = False

    def __init__(self, source_id: str, events_log: EventLog, zones: Sequence[Zone], category_names: Mapping[int, str],
                 track_end_s: float, sinks: Sequence[Sink] = ()) -> None:
        self.source_id = source_id
        self.log = events_log
        self.category_names = dict(category_names)
        self.sinks = list(sinks)
        self._events = Events(zones, track_end_s)
        self._queue: queue.Queue[FrameFacts | None] = queue.Queue(QUEUE_FRAMES)
        self.dropped_frames = 0
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"events-{source_id}", daemon=True)
        self._thread.start()

    def write(self, result: Panoptic, rendered: np.ndarray | None) -> None:
        tracked = [s for s in result.segments if s.isthing and s.track_id is not None]
        points = ground_points(np.array([s.box for s in tracked], np.float64).reshape(-1, 4))
        frame = result.frame
        facts = FrameFacts(
            frame.index, frame.pts_ms / 1000.0, frame.captured_at, frame.connection,
            tuple(Seen(int(s.track_id), self.category_names.get(s.category_id, str(s.category_id)), s.score,  # type: ignore[arg-type]
                       (float(p[0]), float(p[1]))) for s, p in zip(tracked, points)),
            tuple(result.events), counts_fields(result.counts))
        try:
            self._queue.put_nowait(facts)
        except queue.Full:
            self.dropped_frames += 1
            if self.dropped_frames == 1 or self.dropped_frames % 1000 == 0:
                log.warning("%s: events: the log falls behind; %d frames' events dropped so far", self.source_id, self.dropped_frames)

    def close(self) -> None:
        """Log what is queued and the source's end, then stop the sinks and close the log."""
        try:
            self._queue.put(None, timeout=CLOSE_TIMEOUT_S)
        except queue.Full:
            log.warning("%s: events: the writer did not take the end in %g s", self.source_id, CLOSE_TIMEOUT_S)
        self._thread.join(CLOSE_TIMEOUT_S)
        try:
            if not self._thread.is_alive() and self._failed is None:
                self._append(self._events.close(time.time()))
        finally:
            for sink in self.sinks:
                sink.close()
            if not self._thread.is_alive():
                self.log.close()
        if self._failed is not None:
            raise RuntimeError(f"events: the log failed: {self._failed}") from self._failed

    def _run(self) -> None:
        pruned = 0.0
        try:
            while True:
                try:
                    item = self._queue.get(timeout=POLL_S)
                except queue.Empty:
                    continue
                batch: list[FrameFacts] = []
                end = item is None
                if item is not None:
                    batch.append(item)
                while not end and len(batch) < BATCH_FRAMES:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        end = True
                    else:
                        batch.append(more)
                derived = [e for facts in batch for e in self._events.frame(facts)]
                self._append(derived)
                if time.monotonic() - pruned > PRUNE_EVERY_S:
                    pruned = time.monotonic()
                    self.log.prune()
                if end:
                    return
        except Exception as exc:  # noqa: BLE001  the disk: logged, and the pipeline goes on without events
            self._failed = exc
            log.error("%s: events: cannot write the event log %s: %s; no more events are logged", self.source_id, self.log.path, exc)

    def _append(self, derived: list) -> None:
        if not derived:
            return
        self.log.append(NewEvent(kind, self.source_id, pts_s, wall, fields) for kind, pts_s, wall, fields in derived)
        for sink in self.sinks:
            sink.wake()
