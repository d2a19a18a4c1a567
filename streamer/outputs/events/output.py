"""EventsOutput: one source's frame results become events in the log, and its sinks deliver them.

`write` (the sink thread) only copies the few facts the events need into a bounded queue and never
waits; a writer thread derives the events (kinds.py), appends each batch to the log in one commit,
applies retention now and then, and wakes the sinks. Were the queue ever full (the disk stalled for
thousands of frames), the frame's facts are dropped, counted and logged, and the pipeline goes on.

Snapshots (snapshots.py), when on: `write` also keeps a reference to the frame's own picture and
panoptic map (never a copy: nothing changes a result once the sink has it; never the overlay, so
`needs_picture` stays False) for at most PICTURES_MB of frames at a time (a frame past that goes
without, and an event of it that wanted a picture is counted as a skipped snapshot). The writer
thread makes a Shot only for what needs one: the objects of the frame's track_start, line_crossing,
zone_entry, zone_exit and loitering events, and each track's best-scoring frame so far (its track_end's
picture; the frame scaled once to `snapshot_width` and shared). The snapshot writer draws, encodes
and writes them after the events are committed, on its own thread.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from streamer.boxes import Box, ground_points
from streamer.frames import Panoptic, Speed, Zone
from streamer.outputs.events.kinds import Events, FrameFacts, Seen, counts_fields
from streamer.outputs.events.log import EventLog, NewEvent, StoredEvent
from streamer.outputs.events.snapshots import Shot, SnapshotWriter, make_shot, scaled

log = logging.getLogger(__name__)

QUEUE_FRAMES = 4096  # frames' facts waiting for the writer
BATCH_FRAMES = 64  # at most this many frames per commit
POLL_S = 0.2
PRUNE_EVERY_S = 60.0
CLOSE_TIMEOUT_S = 10.0
PICTURES_MB = 256  # frames' pictures and panoptic maps the queue may reference at once (snapshots): 18 at 1080p
SHOT_KINDS = frozenset({"track_start", "line_crossing", "zone_entry", "zone_exit", "loitering"})  # pictured at their own frame

Derived = list[tuple[str, float | None, float, dict[str, Any]]]


def _kmh(speed: Speed | None) -> float | None:
    """A plausible speed in km/h, rounded; None when unknown or implausible."""
    return round(speed.kmh, 1) if speed is not None and speed.plausible else None


@dataclass(frozen=True)
class _Picture:
    """A frame's own picture for snapshots, by reference: its image (H x W x 3 uint8 BGR), panoptic
    map (H x W int) and, per track id, (segment id, box, label)."""

    image: np.ndarray
    panoptic_map: np.ndarray
    objects: dict[int, tuple[int, Box, str]]

    @property
    def nbytes(self) -> int:
        return self.image.nbytes + self.panoptic_map.nbytes


class Sink(Protocol):
    """What EventsOutput wakes after each append and closes at its end: the run's shared delivery
    (delivery.Delivery.source_waker: one per source; the MQTT connection and webhooks close with the run)."""

    def wake(self) -> None: ...

    def close(self) -> None: ...


class EventsOutput:
    stage = "events"
    needs_picture = False

    def __init__(self, source_id: str, events_log: EventLog, zones: Sequence[Zone], category_names: Mapping[int, str],
                 track_end_s: float, sinks: Sequence[Sink] = (), snapshot_width: int | None = None,
                 snapshot_quality: int = 85) -> None:
        """`snapshot_width`: snapshots on, their pictures at most this many pixels wide (None: off);
        `snapshot_quality`: their JPEG quality (1-100)."""
        self.source_id = source_id
        self.log = events_log
        self.category_names = dict(category_names)
        self.sinks = list(sinks)
        self._events = Events(zones, track_end_s)
        self._queue: queue.Queue[tuple[FrameFacts, _Picture | None] | None] = queue.Queue(QUEUE_FRAMES)
        self.snapshot_width = snapshot_width
        self.snapshots = None if snapshot_width is None else SnapshotWriter(events_log, snapshot_quality, f"snapshots-{source_id}")
        self._held = 0  # bytes of the pictures in the queue
        self._held_lock = threading.Lock()
        self._best: dict[int, tuple[float, Shot | None]] = {}  # track id -> its best score so far and that frame's shot
        self._connection: int | None = None
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
                       (float(p[0]), float(p[1])), _kmh(result.speeds.get(int(s.track_id)))) for s, p in zip(tracked, points)),  # type: ignore[arg-type]
            tuple(result.events), counts_fields(result.counts))
        picture = None
        if self.snapshots is not None and tracked and self._hold(frame.image.nbytes + result.panoptic_map.nbytes):
            picture = _Picture(frame.image, result.panoptic_map, {
                int(s.track_id): (s.id, s.box, f"{seen.category} {s.track_id}") for s, seen in zip(tracked, facts.seen)})  # type: ignore[arg-type]
        try:
            self._queue.put_nowait((facts, picture))
        except queue.Full:
            if picture is not None:
                self._hold(-picture.nbytes)
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
                ended = self._events.close(time.time())
                self._log([(ended, self._shots(None, None, ended))])
        finally:
            if self.snapshots is not None:
                self.snapshots.close()
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
                batch: list[tuple[FrameFacts, _Picture | None]] = []
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
                frames = []
                for facts, picture in batch:
                    derived = self._events.frame(facts)
                    frames.append((derived, self._shots(facts, picture, derived) if self.snapshots is not None else []))
                    if picture is not None:
                        self._hold(-picture.nbytes)
                self._log(frames)
                if time.monotonic() - pruned > PRUNE_EVERY_S:
                    pruned = time.monotonic()
                    self.log.prune()
                if end:
                    return
        except Exception as exc:  # noqa: BLE001  the disk: logged, and the pipeline goes on without events
            self._failed = exc
            log.error("%s: events: cannot write the event log %s: %s; no more events are logged", self.source_id, self.log.path, exc)

    def _hold(self, nbytes: int) -> bool:
        """Count `nbytes` more of pictures held (negative: given back); False (nothing counted) past PICTURES_MB."""
        with self._held_lock:
            if nbytes > 0 and self._held + nbytes > PICTURES_MB * 1e6:
                return False
            self._held += nbytes
            return True

    def _log(self, frames: list[tuple[Derived, list[tuple[list[int], Shot]]]]) -> None:
        """Append the frames' events in one commit, wake the sinks, then queue their snapshots (the
        shots name events by their index in their frame's list)."""
        stored = self._append([e for derived, _ in frames for e in derived])
        offset = 0
        for derived, shots in frames:
            for indices, shot in shots:
                assert self.snapshots is not None
                self.snapshots.submit(tuple(stored[offset + i].id for i in indices), shot)
            offset += len(derived)

    def _append(self, derived: Derived) -> list[StoredEvent]:
        if not derived:
            return []
        stored = self.log.append(NewEvent(kind, self.source_id, pts_s, wall, fields) for kind, pts_s, wall, fields in derived)
        for sink in self.sinks:
            sink.wake()
        return stored

    def _shots(self, facts: FrameFacts | None, picture: _Picture | None, derived: Derived) -> list[tuple[list[int], Shot]]:
        """The shots of one frame's events (`facts` None: the source's end), one per object with the
        indices of its events; keeps each track's best-scoring shot for its track_end."""
        if self.snapshots is None:
            return []
        small: list[tuple[np.ndarray, float]] = []  # the frame scaled, once

        def shot(track_id: int) -> Shot | None:
            if picture is None or track_id not in picture.objects:
                return None
            if not small:
                small.append(scaled(picture.image, self.snapshot_width or 1))
            return make_shot(small[0], picture.panoptic_map, *picture.objects[track_id])

        ending = {}
        if facts is not None:
            if self._connection is not None and facts.connection != self._connection:
                ending, self._best = self._best, {}  # a reconnect: the old tracks end in this frame, new ids begin
            self._connection = facts.connection
            for seen in facts.seen:
                best = self._best.get(seen.track_id)
                if seen.score is not None and (best is None or seen.score > best[0]):  # kinds.Events' rule for best_frame
                    self._best[seen.track_id] = (seen.score, shot(seen.track_id))
        wanted: dict[int, list[int]] = {}
        out: list[tuple[list[int], Shot]] = []
        missing = 0
        for i, (kind, _, _, fields) in enumerate(derived):
            if kind in SHOT_KINDS and fields.get("position") is not None:
                wanted.setdefault(fields["track_id"], []).append(i)
            elif kind == "track_end":
                tid = fields["track_id"]
                kept = (ending if tid in ending else self._best).pop(tid, None)
                if kept is not None and kept[1] is not None:
                    out.append(([i], kept[1]))
                else:
                    missing += 1
        for tid, indices in wanted.items():
            made = shot(tid)
            if made is None:
                missing += len(indices)
            else:
                out.append((indices, made))
        if missing:
            self.snapshots.skip(missing, "no picture of an event's object was kept (the events writer was behind)")
        return out
