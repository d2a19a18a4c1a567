"""Counting for street monitoring: unique objects, line crossings and zone entries, from tracked segments.

Only thing segments with a `track_id` count (stuff, and things whose track is still too new, are
ignored). All coordinates are pixels of the frame, (x, y) with y down. An object's position is its
*anchor*, the bottom-centre of its box, ((x0 + x1) / 2, y1): the point where it stands on the ground,
which is what street cameras count (supervision's default for zones too).

Lines. The side of a point p of a Line a->b is the sign of the 2-D cross product
(b - a) x (p - a) = (bx - ax)(py - ay) - (by - ay)(px - ax). A track crosses "in" when it goes from
the negative to the positive side, "out" the other way. On screen (y down) the positive side is on
the right looking from a towards b: for a=(0, 100), b=(200, 100), an object moving down (y growing)
crosses "in", one moving up crosses "out". A crossing needs the motion between the anchor of the
previous frame the track was seen in and its anchor now to meet the segment a-b (its ends included);
passing beside an end does not count. Ties: a point exactly on the line keeps the side the track
came from, so touching the line and going back is no crossing, and a track first seen on the line
has no side until it leaves it. Each track counts at most once per line, in the direction of its
first crossing, so jitter about the line counts once.

Zones. A track enters a zone the first frame its anchor is inside the polygon, including when it is
first seen there; it counts once per zone however often it leaves and comes back. Inside is the
even-odd (crossing number) rule; points on the boundary follow its half-open convention: on an
axis-parallel rectangle, the left and top edges (smallest x, smallest y) are inside, the right and
bottom ones outside (exact for axis-parallel edges; on slanted ones within rounding either way).

Memory: a track not seen for `forget_after_s` seconds of stream time is forgotten, its anchor and
its "already counted" flags too; were it to come back, it would count as a new object. Track ids
end with the tracker's `max_lost_s`, far shorter, so that does not happen with the default.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from streamer.analytics.zones import ZoneTest
from streamer.boxes import ground_points
from streamer.frames import Counts, Event, Line, Segment, Zone

_STATE = ("_track", "_used", "_seen", "_anchor", "_side", "_line_done", "_zone_done")


class Counter:
    """The counts of one source. `update` takes each frame's segments in stream order.

    Per-track state lives in numpy rows (reused once a track is forgotten), so one update is a few
    vector operations over N tracked things x L lines and N x (edges of all zones).
    """

    def __init__(self, lines: Sequence[Line], zones: Sequence[Zone], category_names: Mapping[int, str],
                 forget_after_s: float = 60.0) -> None:
        for kind, items in (("line", lines), ("zone", zones)):
            names = [item.name for item in items]
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} names must be unique, got {names}")
        if not forget_after_s > 0:
            raise ValueError(f"forget_after_s must be > 0, got {forget_after_s}")
        self.lines, self.zones, self.forget_after_s = tuple(lines), tuple(zones), float(forget_after_s)
        self.category_names = dict(category_names)  # a category without a name is called by its id
        ends = np.array([(line.a, line.b) for line in self.lines], np.float64).reshape(-1, 2, 2)
        self._a, self._b = ends[:, 0], ends[:, 1]  # L x 2 each
        self._ab = self._b - self._a
        self.inside = ZoneTest(self.zones)
        self._rows: dict[int, int] = {}  # track id -> its row in the arrays below
        self._free: list[int] = []
        self._track = np.zeros(0, np.int64)  # row -> track id
        self._used = np.zeros(0, bool)
        self._seen = np.zeros(0)  # stream time the track was last seen, s
        self._anchor = np.zeros((0, 2))  # its last anchor; NaN when none (new, or after reset)
        self._side = np.zeros((0, len(self.lines)), np.int8)  # its side of each line: -1, +1; 0 = none yet
        self._line_done = np.zeros((0, len(self.lines)), bool)
        self._zone_done = np.zeros((0, len(self.zones)), bool)
        self._totals: dict[str, int] = {}  # the Counts fields, kept up to date
        self._visible: dict[str, int] = {}
        self._crossings: dict[tuple[str, str, str], int] = {}
        self._entries: dict[tuple[str, str], int] = {}

    def reset(self) -> None:
        """Forget the tracks' last positions (a reconnect: what comes next is no continuation). Totals and
        "already counted" flags stay."""
        self._anchor[:] = np.nan
        self._side[:] = 0

    def counts(self) -> Counts:
        """The totals so far, and what the last frame showed."""
        return Counts(dict(self._totals), dict(self._visible), dict(self._crossings), dict(self._entries), self.lines, self.zones)

    def update(self, segments: Sequence[Segment], pts_s: float) -> list[Event]:
        """Counts one frame; returns its events, lines first (in configured order), then zones. `pts_s`: the
        frame's stream time in seconds, increasing (a jump back by more than forget_after_s forgets every track)."""
        self._forget(pts_s)
        tracked: dict[int, Segment] = {}
        for s in segments:
            if s.isthing and s.track_id is not None:
                tracked.setdefault(s.track_id, s)  # one segment per track; a duplicate would be a tracker bug
        events: list[Event] = []
        ids = list(tracked)
        names = [self.category_names.get(s.category_id, str(s.category_id)) for s in tracked.values()]
        rows = np.empty(len(tracked), np.intp)
        for i, (track_id, name) in enumerate(zip(ids, names)):
            row = self._rows.get(track_id)
            if row is None:
                row = self._new_row(track_id)
                self._totals[name] = self._totals.get(name, 0) + 1
            rows[i] = row
        self._visible = dict.fromkeys(self._totals, 0)
        for name in names:
            self._visible[name] += 1
        if not tracked:
            return events
        q = ground_points(np.array([s.box for s in tracked.values()], np.float64))  # N x 2 anchors now
        if self.lines:
            before = self._side[rows]  # N x L
            cross = self._ab[:, 0] * (q[:, 1:] - self._a[:, 1]) - self._ab[:, 1] * (q[:, :1] - self._a[:, 0])
            side = np.sign(cross).astype(np.int8)
            side = np.where(side == 0, before, side)  # on the line: the side it came from
            flipped = (before * side < 0) & ~self._line_done[rows]  # a known side before implies a previous anchor
            if flipped.any():
                p = self._anchor[rows]
                d = q - p  # the motion; a crossing when a and b are not strictly on one side of it
                ca = d[:, :1] * (self._a[:, 1] - p[:, 1:]) - d[:, 1:] * (self._a[:, 0] - p[:, :1])
                cb = d[:, :1] * (self._b[:, 1] - p[:, 1:]) - d[:, 1:] * (self._b[:, 0] - p[:, :1])
                hit = flipped & (ca * cb <= 0)
                self._line_done[rows] |= hit
                for j, i in zip(*np.nonzero(hit.T)):
                    key = (self.lines[j].name, names[i], "in" if side[i, j] > 0 else "out")
                    self._crossings[key] = self._crossings.get(key, 0) + 1
                    events.append(Event("line", key[0], ids[i], key[1], key[2], pts_s))
            self._side[rows] = side
        if self.zones:
            inside = self.inside(q)  # N x Z
            new = inside & ~self._zone_done[rows]
            self._zone_done[rows] |= inside
            for j, i in zip(*np.nonzero(new.T)):
                entry = (self.zones[j].name, names[i])
                self._entries[entry] = self._entries.get(entry, 0) + 1
                events.append(Event("zone", entry[0], ids[i], entry[1], None, pts_s))
        self._anchor[rows] = q
        self._seen[rows] = pts_s
        return events

    def _new_row(self, track_id: int) -> int:
        if not self._free:  # grow every array twofold
            old = len(self._used)
            for attr in _STATE:
                a = getattr(self, attr)
                grown = np.zeros((max(64, 2 * old), *a.shape[1:]), a.dtype)
                grown[:old] = a
                setattr(self, attr, grown)
            self._free = list(range(len(self._used) - 1, old - 1, -1))
        row = self._free.pop()
        self._rows[track_id] = row
        self._track[row], self._used[row], self._anchor[row], self._side[row] = track_id, True, np.nan, 0
        self._line_done[row] = self._zone_done[row] = False
        return row

    def _forget(self, pts_s: float) -> None:
        stale = np.flatnonzero(self._used & (np.abs(pts_s - self._seen) > self.forget_after_s))
        for row in stale:
            del self._rows[int(self._track[row])]
        self._used[stale] = False
        self._free.extend(stale.tolist())
