"""The events of one source, from what each frame result already carries: its tracked segments, its
counting events (streamer.inference.counting) and its counts. Pure: no threads, no I/O.

Kinds and their fields (besides every event's id, seq, kind, source, pts_s, wall):

- `source_state`: `state` ("connected" at the first frame, "reconnected" when the frame's connection
  number changes, "ended" when the source's output closes), `connection`. (A live source whose
  connection drops also logs `state` "reconnecting" with `reason` at once, from its capture thread:
  delivery.Delivery.source_state.)
- `track_start`: `track_id`, `category`, `first_seen` (stream s), `position` (its ground point [x, y]).
- `line_crossing`: `line`, `direction` ("in" / "out"), `category`, `track_id`, `position`, `speed_kmh`.
- `zone_entry`: `zone`, `category`, `track_id`, `position`, `counted` (true the first time: what the
  zone's count counts; a track that leaves and comes back enters again with false), `occupancy`, `speed_kmh`.
- `zone_exit`: `zone`, `category`, `track_id`, `position` (null when its track ended inside), `inside_s`,
  `occupancy`, `speed_kmh`. (`occupancy`: the tracks inside the zone once the frame's events are done;
  `speed_kmh`: the track's plausible speed on that frame, streamer.analytics.speed, null when unknown.)
- `loitering`: `zone`, `category`, `track_id`, `position`, `inside_s`: the first frame of a visit whose time
  inside (stream time since its zone_entry) reaches the zone's `loitering_s`; once per track and visit.
- `track_end`: `track_id`, `category`, `first_seen`, `last_seen`, `duration_s`, `best_score`,
  `best_frame` (the frame index of its best score), `best_pts_s`.
- `counts`: `objects_total`, `lines`, `zones` as Counts.to_dict gives them (without `visible`), whenever
  one of them changes.

Within a frame: source_state, track_start, line_crossing, zone_entry, loitering, zone_exit, track_end, counts.
A track ends when it has not been seen for `track_end_s` of stream time (the tracker's max_lost_s), at a
reconnect (its ids do not continue) or at close.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.analytics.zones import ZoneTest
from streamer.frames import Counts, Event, Zone

Position = tuple[float, float]


@dataclass(frozen=True)
class Seen:
    """One tracked thing in a frame: what the events need of its segment."""

    track_id: int
    category: str
    score: float | None
    position: Position  # its ground point, (x, y) pixels: the bottom centre of its box
    speed_kmh: float | None = None  # its plausible speed on this frame (streamer.analytics.speed), None: unknown


@dataclass(frozen=True)
class FrameFacts:
    """What one frame result tells the events (EventsOutput builds it in the sink thread)."""

    index: int
    pts_s: float
    wall: float
    connection: int
    seen: tuple[Seen, ...]
    events: tuple[Event, ...]
    counts: dict[str, Any] | None  # Counts.to_dict() without "visible"; None: not counting


@dataclass
class _Track:
    category: str
    first_seen: float
    last_seen: float
    best_score: float = -1.0
    best_frame: int = -1
    best_pts_s: float = 0.0
    inside: dict[str, float] = field(default_factory=dict)  # zone -> stream time it entered
    loitered: set[str] = field(default_factory=set)  # zones whose loitering event this visit has had


def counts_fields(counts: Counts | None) -> dict[str, Any] | None:
    if counts is None:
        return None
    fields = counts.to_dict()
    fields.pop("visible", None)
    return fields


def inside(point: Position, polygon: Sequence[Position]) -> bool:
    """One point against one polygon by streamer.inference.counting.ZoneTest, the counter's rule."""
    return bool(ZoneTest([Zone("", tuple(polygon))])(np.array([point]))[0, 0])


class Events:
    """The events of one source; `frame` per frame result in order, `close` at its end. Each returns
    a list of (kind, pts_s, wall, fields)."""

    def __init__(self, zones: Sequence[Zone], track_end_s: float) -> None:
        self.zones = tuple(zones)
        self._inside = ZoneTest(self.zones)
        self.track_end_s = float(track_end_s)
        self._tracks: dict[int, _Track] = {}
        self._connection: int | None = None
        self._counts: dict[str, Any] | None = None
        self._pts_s = 0.0

    def frame(self, facts: FrameFacts) -> list[tuple[str, float | None, float, dict[str, Any]]]:
        out: list[tuple[str, float | None, float, dict[str, Any]]] = []
        t, wall = facts.pts_s, facts.wall
        self._pts_s = t

        def add(kind: str, fields: dict[str, Any]) -> None:
            out.append((kind, t, wall, fields))

        ending: list[tuple[int, _Track, Position | None]] = []
        if self._connection is None:
            add("source_state", {"state": "connected", "connection": facts.connection})
        elif facts.connection != self._connection:
            add("source_state", {"state": "reconnected", "connection": facts.connection})
            ending.extend((tid, track, None) for tid, track in self._tracks.items())
            self._tracks = {}
        self._connection = facts.connection

        for s in facts.seen:
            if s.track_id not in self._tracks:
                self._tracks[s.track_id] = _Track(s.category, t, t)
                add("track_start", {"track_id": s.track_id, "category": s.category, "first_seen": t, "position": list(s.position)})
            track = self._tracks[s.track_id]
            track.last_seen = t
            if s.score is not None and s.score > track.best_score:
                track.best_score, track.best_frame, track.best_pts_s = s.score, facts.index, t

        positions = {s.track_id: s.position for s in facts.seen}
        speeds = {s.track_id: s.speed_kmh for s in facts.seen}
        counted = {(e.name, e.track_id) for e in facts.events if e.kind == "zone"}
        for e in facts.events:
            if e.kind == "line":
                add("line_crossing", {"line": e.name, "direction": e.direction, "category": e.category, "track_id": e.track_id,
                                      "position": _listed(positions.get(e.track_id)), "speed_kmh": speeds.get(e.track_id)})
        entries, loiters, exits = self._zones(facts, counted)
        out.extend((kind, t, wall, fields) for kind, fields in (*entries, *loiters, *exits))

        for tid, track in list(self._tracks.items()):
            if t - track.last_seen > self.track_end_s:
                ending.append((tid, track, None))
                del self._tracks[tid]
        out.extend(self._ends(ending, t, wall))
        self._occupancy(out)

        if facts.counts is not None and facts.counts != self._counts:
            self._counts = facts.counts
            add("counts", facts.counts)
        return out

    def _zones(self, facts: FrameFacts, counted: set[tuple[str, int]]) -> tuple[list, list, list]:
        """The frame's zone entries, loitering events and zone exits, each as (kind, fields)."""
        t = facts.pts_s
        entries: list[tuple[str, dict[str, Any]]] = []
        exits: list[tuple[str, dict[str, Any]]] = []
        loiters: list[tuple[str, dict[str, Any]]] = []
        held = self._inside(np.array([s.position for s in facts.seen], np.float64))  # N x Z
        for n, s in enumerate(facts.seen):
            track = self._tracks[s.track_id]
            for z, zone in enumerate(self.zones):
                now = (zone.name, s.track_id) in counted or bool(held[n, z])
                if now and zone.name not in track.inside:
                    track.inside[zone.name] = t
                    entries.append(("zone_entry", {"zone": zone.name, "category": s.category, "track_id": s.track_id,
                                                   "position": list(s.position), "counted": (zone.name, s.track_id) in counted,
                                                   "speed_kmh": s.speed_kmh}))
                elif not now and zone.name in track.inside:
                    entered = track.inside.pop(zone.name)
                    track.loitered.discard(zone.name)
                    exits.append(("zone_exit", {"zone": zone.name, "category": s.category, "track_id": s.track_id,
                                                "position": list(s.position), "inside_s": t - entered, "speed_kmh": s.speed_kmh}))
                if (now and zone.loitering_s is not None and zone.name not in track.loitered
                        and t - track.inside[zone.name] >= zone.loitering_s):
                    track.loitered.add(zone.name)
                    loiters.append(("loitering", {"zone": zone.name, "category": s.category, "track_id": s.track_id,
                                                  "position": list(s.position), "inside_s": t - track.inside[zone.name]}))
        return entries, loiters, exits

    def close(self, wall: float) -> list[tuple[str, float | None, float, dict[str, Any]]]:
        """The source ended: every track ends, then the source."""
        out = self._ends([(tid, track, None) for tid, track in self._tracks.items()], self._pts_s, wall)
        self._tracks = {}
        self._occupancy(out)
        if self._connection is not None:
            out.append(("source_state", self._pts_s, wall, {"state": "ended", "connection": self._connection}))
        return out

    def _occupancy(self, out: list[tuple[str, float | None, float, dict[str, Any]]]) -> None:
        """Each zone entry and exit in `out` gets the zone's occupancy once they are all done."""
        for kind, _, _, fields in out:
            if kind in ("zone_entry", "zone_exit"):
                fields["occupancy"] = sum(fields["zone"] in track.inside for track in self._tracks.values())

    def _ends(self, ending: list[tuple[int, _Track, Position | None]], t: float, wall: float
              ) -> list[tuple[str, float | None, float, dict[str, Any]]]:
        out: list[tuple[str, float | None, float, dict[str, Any]]] = []
        for tid, track, _ in ending:
            for zone, entered in track.inside.items():
                out.append(("zone_exit", t, wall, {"zone": zone, "category": track.category, "track_id": tid, "position": None,
                                                   "inside_s": track.last_seen - entered, "speed_kmh": None}))
            best = track.best_frame >= 0
            out.append(("track_end", t, wall, {
                "track_id": tid, "category": track.category, "first_seen": track.first_seen, "last_seen": track.last_seen,
                "duration_s": track.last_seen - track.first_seen, "best_score": track.best_score if best else None,
                "best_frame": track.best_frame if best else None, "best_pts_s": track.best_pts_s if best else None}))
        return out


def _listed(position: Position | None) -> list[float] | None:
    return None if position is None else list(position)


def names(categories: Mapping[int, str], category_id: int) -> str:
    return categories.get(category_id, str(category_id))
