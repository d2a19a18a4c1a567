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

from streamer.boxes import ground_points
from streamer.frames import Segment, Zone, ZoneVisits
from streamer.inference.counting import ZoneTest


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
    """

    def __init__(self, zones: Sequence[Zone], category_names: Mapping[int, str], forget_after_s: float = 60.0) -> None:
        if not forget_after_s > 0:
            raise ValueError(f"forget_after_s must be > 0, got {forget_after_s}")
        self.zones = tuple(zones)
        self.names = tuple(zone.name for zone in self.zones)
        self.category_names = dict(category_names)
        self.forget_after_s = float(forget_after_s)
        self._test = ZoneTest(self.zones)
        self._last: dict[int, tuple[float, np.ndarray, str]] = {}  # track -> (time, inside per zone, category) of its last sample
        self._total: dict[int, np.ndarray] = {}  # track -> seconds per zone, closed intervals only
        self._since: dict[int, np.ndarray] = {}  # track -> seconds per zone of its open visit (0 where outside)
        self._been: dict[int, np.ndarray] = {}  # track -> whether it has ever been inside each zone

    def reset(self) -> list[tuple[str, str, float]]:
        """End every open visit and forget every track's last sample; returns the visits ended."""
        ended = [visit for track in list(self._last) for visit in self._end(track)]
        self._last.clear()
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
        ended: list[tuple[str, str, float]] = []
        for track in [tid for tid, (t, _, _) in self._last.items() if pts_s - t > self.forget_after_s]:
            ended += self._end(track)
            for state in (self._total, self._since, self._been):
                state.pop(track, None)
            del self._last[track]
        held = np.asarray(inside, bool).reshape(len(track_ids), len(self.zones))
        out: dict[int, dict[str, float]] = {}
        for n, track in enumerate(track_ids):
            category = categories[n] if categories is not None else ""
            now = held[n]
            zero = np.zeros(len(self.zones))
            total, since, been = self._total.setdefault(track, zero), self._since.setdefault(track, zero.copy()), \
                self._been.setdefault(track, np.zeros(len(self.zones), bool))
            last = self._last.get(track)
            if last is not None:
                step = max(pts_s - last[0], 0.0)
                was = last[1]
                since[was] += step  # the interval since the last sample held its state
                for z in np.flatnonzero(was & ~now):  # a visit ends: it left between the two samples
                    ended.append((self.names[z], category, float(since[z])))
                    total[z] += since[z]
                    since[z] = 0.0
            been |= now
            self._last[track] = (pts_s, now.copy(), category)
            out[track] = {self.names[z]: float(total[z] + since[z]) for z in np.flatnonzero(been)}
        return ZoneVisits(out, tuple(ended))

    def _end(self, track: int) -> list[tuple[str, str, float]]:
        """Close the track's open visits at its last sample."""
        last = self._last.get(track)
        if last is None:
            return []
        since, total = self._since[track], self._total[track]
        ended = [(self.names[z], last[2], float(since[z])) for z in np.flatnonzero(last[1])]
        total += since
        since[:] = 0.0
        return ended
