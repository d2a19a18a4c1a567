"""Time in zones: per track and zone, how long its ground point was inside, in stream time (PTS).

"Inside" is the counter's rule (streamer.inference.counting.ZoneTest on the bottom centre of the
box), so a zone's time, its entries and its events never disagree. Between two observations of a
track the state it had at the first holds ("sample and hold"): the interval [t_k, t_k+1) counts as
inside when the track was inside at t_k. So a visit seen from frame t_in to its first frame outside,
t_out, lasts t_out - t_in, the same figure as the zone_exit event's `inside_s` (frame-accurate: the
true time in the zone is within one frame interval of it); a track missed for a few frames keeps the
state it had before the gap; the last observation of a track adds nothing (when it left is unknown).
This is Frigate's `loitering_time` and Roboflow's time-in-zone, counted in stream time, not wall time.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from streamer.analytics.zones import ZoneTest
from streamer.boxes import ground_points
from streamer.frames import Segment, Zone, ZoneVisits


def hold_times(times: Sequence[float], inside: np.ndarray) -> np.ndarray:
    """The reference rule on one track's whole history. `times`: K increasing stream times (s);
    `inside`: K x Z bool (inside each zone at each time). Returns Z float64 seconds: the sum of
    t[k+1] - t[k] over the k inside. Raises ValueError when the shapes disagree."""
    t = np.asarray(times, np.float64)
    held = np.asarray(inside, bool)
    if held.ndim != 2 or len(held) != len(t):
        raise ValueError(f"inside must be K x Z with K = {len(t)} times, got shape {held.shape}")
    return (np.diff(t)[:, None] * held[:-1]).sum(axis=0) if len(t) > 1 else np.zeros(held.shape[1])


class ZoneTimes:
    """The time in zones of one source's tracks, frame by frame (`update` in stream order).

    A track not seen for `forget_after_s` of stream time is forgotten (its open visits end at its
    last observation). `reset` (a reconnect) ends every visit: what comes next is no continuation.
    Per-track state lives in numpy rows (reused once a track is forgotten), so a frame is a few
    vector operations over its N tracks x Z zones.
    """

    def __init__(self, zones: Sequence[Zone], category_names: Mapping[int, str], forget_after_s: float = 60.0) -> None:
        if not forget_after_s > 0:
            raise ValueError(f"forget_after_s must be > 0, got {forget_after_s}")
        self.zones = tuple(zones)
        self.names = tuple(zone.name for zone in self.zones)
        self.category_names = dict(category_names)
        self.forget_after_s = float(forget_after_s)
        self._test = ZoneTest(self.zones)
        self._rows: dict[int, int] = {}  # track id -> its row below
        self._free: list[int] = []
        zones_n = len(self.zones)
        self._track = np.zeros(0, np.int64)
        self._used = np.zeros(0, bool)
        self._seen = np.zeros(0)  # the time it was last seen (kept through a reset), for forgetting
        self._category: list[str] = []
        self._last_t = np.zeros(0)  # the time of its last sample; NaN: none since a reset
        self._last_in = np.zeros((0, zones_n), bool)  # inside each zone at its last sample
        self._total = np.zeros((0, zones_n))  # seconds per zone of its closed visits
        self._since = np.zeros((0, zones_n))  # seconds per zone of its open visit
        self._been = np.zeros((0, zones_n), bool)  # ever inside each zone

    def reset(self) -> list[tuple[str, str, float]]:
        """End every open visit and forget every track's last sample; returns the visits ended."""
        used = np.flatnonzero(self._used)
        ended = self._end(used)
        self._last_t[used] = np.nan
        self._last_in[used] = False
        return ended

    def update(self, segments: Sequence[Segment], pts_s: float) -> ZoneVisits:
        """One frame's segments (things with a track_id count) at stream time `pts_s` (seconds)."""
        tracked: dict[int, Segment] = {}
        for s in segments:
            if s.isthing and s.track_id is not None:
                tracked.setdefault(s.track_id, s)
        ids = list(tracked)
        boxes = np.array([s.box for s in tracked.values()], np.float64).reshape(-1, 4)
        categories = [self.category_names.get(s.category_id, str(s.category_id)) for s in tracked.values()]
        return self.advance(ids, self._test(ground_points(boxes)), pts_s, categories)

    def advance(self, track_ids: Sequence[int], inside: np.ndarray, pts_s: float,
                categories: Sequence[str] | None = None) -> ZoneVisits:
        """The pure step: `track_ids` (N) seen at `pts_s` with `inside` (N x Z bool, this frame's test).
        Returns each seen track's seconds per zone it has been in, and the visits that ended."""
        ended = self._forget(np.flatnonzero(self._used & (np.abs(pts_s - self._seen) > self.forget_after_s)))
        now = np.asarray(inside, bool).reshape(len(track_ids), len(self.zones))
        rows = np.array([self._row(track, categories[n] if categories is not None else "") for n, track in enumerate(track_ids)],
                        np.intp)
        step = pts_s - self._last_t[rows]  # NaN for a track without a sample before
        was = self._last_in[rows] & ~np.isnan(step)[:, None]
        since = self._since[rows] + np.where(was, np.maximum(np.nan_to_num(step), 0.0)[:, None], 0.0)
        leaving = was & ~now  # a visit ends: it left between the two samples
        for n, z in zip(*np.nonzero(leaving)):
            ended.append((self.names[z], self._category[rows[n]], float(since[n, z])))
        total = self._total[rows] + np.where(leaving, since, 0.0)
        since[leaving] = 0.0
        been = self._been[rows] | now
        self._total[rows], self._since[rows], self._been[rows] = total, since, been
        self._last_t[rows], self._seen[rows], self._last_in[rows] = pts_s, pts_s, now
        return ZoneVisits(tuple(track_ids), self.names, np.where(been, total + since, np.nan), tuple(ended))

    def _row(self, track: int, category: str) -> int:
        row = self._rows.get(track)
        if row is not None:
            return row
        if not self._free:  # grow every array twofold
            old = len(self._track)
            for attr in ("_track", "_used", "_seen", "_last_t", "_last_in", "_total", "_since", "_been"):
                a = getattr(self, attr)
                grown = np.zeros((max(64, 2 * old), *a.shape[1:]), a.dtype)
                grown[:old] = a
                setattr(self, attr, grown)
            self._category += [""] * (len(self._track) - old)
            self._free = list(range(len(self._track) - 1, old - 1, -1))
        row = self._free.pop()
        self._rows[track] = row
        self._track[row], self._used[row], self._category[row], self._last_t[row] = track, True, category, np.nan
        self._last_in[row] = self._been[row] = False
        self._total[row] = self._since[row] = 0.0
        return row

    def _forget(self, rows: np.ndarray) -> list[tuple[str, str, float]]:
        ended = self._end(rows)
        for row in rows.tolist():
            del self._rows[int(self._track[row])]
        self._used[rows] = False
        self._free.extend(rows.tolist())
        return ended

    def _end(self, rows: np.ndarray) -> list[tuple[str, str, float]]:
        """Close the open visits of these rows at their last sample."""
        open_ = self._last_in[rows] & ~np.isnan(self._last_t[rows])[:, None]
        ended = [(self.names[z], self._category[rows[n]], float(self._since[rows[n], z])) for n, z in zip(*np.nonzero(open_))]
        self._total[rows] += self._since[rows]
        self._since[rows] = 0.0
        return ended
