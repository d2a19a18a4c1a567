"""Speed of tracked things from a calibrated ground plane.

Each tracked thing's ground point is where its mask touches the road: the lowest row of its mask
in the panoptic map, at the mean column of that row's pixels, on the row's lower edge. A box's
bottom edge is not that point at oblique views; the mask's is. Through the source's homography
(streamer.analytics.calibration) it becomes metres on the ground. Its velocity is the least-squares
slope of position against stream time (the frames' PTS, never wall time) over the last `window_s`
seconds, and its speed that velocity's length: a straight-line fit of every point in the window,
which averages the pixel steps of a mask's edge instead of differencing two of them (supervision's
speed example and Frigate's zones differentiate the same mapped point over a window).

A ground point is not taken when it cannot be seen: the mask reaches the frame's bottom border
(the car's contact is below the picture) or the pixel under its lowest pixels belongs to another
thing (hidden behind it). A speed is only given while its standard error is within `max_error` of
it (the fit's residuals, or half a pixel of each point mapped to metres if larger): far up the
street one pixel spans metres, and no speed is better than a wrong one there. An estimate above
the category's plausibility cap is marked implausible
and never reported as a measurement (Ultralytics' pixels-per-metre shortcut gave "1536 km/h",
ultralytics#20342, and gained a `max_speed` cap).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from streamer.analytics.calibration import GroundPlane
from streamer.boxes import window
from streamer.frames import Segment, Speed

MIN_POINTS = 3  # a fit needs at least this many ground points in its window


def ground_contact(panoptic: np.ndarray, segment: Segment, is_thing: np.ndarray) -> tuple[float, float] | None:
    """Where a thing's mask touches the ground, (u, v) in pixels (pixel centres at integers, as
    OpenCV), or None when that point is out of view.

    panoptic: H x W int map holding the segment's pixels as `segment.id`; is_thing: a bool lookup
    table, True at the ids of the frame's thing segments (`thing_table`). u is the mean column of the mask's lowest row, v that row's lower
    edge (row + 0.5). None when the mask is empty, reaches the bottom row of the frame, or any pixel
    right under its lowest pixels belongs to another thing.
    """
    rows, cols = window(segment.box)
    y = min(rows.stop, panoptic.shape[0]) - 1
    line = panoptic[y, cols] == segment.id  # a segment's box is that of its pixels: its last row holds some
    while not line.any() and y > rows.start:  # (any other box: search upwards)
        y -= 1
        line = panoptic[y, cols] == segment.id
    hit = np.flatnonzero(line)
    if hit.size == 0 or y + 1 >= panoptic.shape[0]:
        return None
    below = panoptic[y + 1, cols.start + hit]  # never the segment's own: no row under y holds it
    if is_thing[below[(below >= 0) & (below < len(is_thing))]].any():
        return None
    return float(cols.start + hit.sum() / hit.size), y + 0.5


def thing_table(segments: Iterable[Segment]) -> np.ndarray:
    """A bool lookup table over panoptic values: True at the ids of the thing segments."""
    ids = [s.id for s in segments if s.isthing]
    table = np.zeros(max(ids, default=0) + 1, bool)
    table[ids] = True
    return table


def fit_velocity(times: np.ndarray, points: np.ndarray) -> tuple[float, float]:
    """The least-squares slope of positions against time: (vx, vy) in units of `points` per unit
    of `times`. times: N (N >= 2, not all equal), points: N x 2. Raises ValueError otherwise."""
    t = np.asarray(times, np.float64)
    p = np.asarray(points, np.float64).reshape(-1, 2)
    if len(t) < 2 or len(t) != len(p):
        raise ValueError(f"a fit needs two or more times with a point each, got {len(t)} and {len(p)}")
    dt = t - t.mean()
    denominator = float(dt @ dt)
    if denominator <= 0:
        raise ValueError("a fit needs times that differ")
    slope = dt @ (p - p.mean(axis=0)) / denominator
    return float(slope[0]), float(slope[1])


def window_speed(times: np.ndarray, points: np.ndarray, window_s: float, min_span: float, cap_mps: float,
                 resolution: np.ndarray | None = None, max_error: float = math.inf) -> Speed | None:
    """The speed over the last `window_s` seconds of a track's ground points, or None when unknown.

    times: N seconds, increasing; points: N x 2 metres; resolution: N metres per pixel at each point
    (None: not known). None until the points kept span `min_span * window_s` seconds with MIN_POINTS
    or more, and while the speed's standard error exceeds `max_error` times the speed: the error is
    the larger of the fit's own (from its residuals) and what half a pixel of each point gives
    (far away one pixel spans metres). Implausible above `cap_mps` (metres per second).
    """
    t = np.asarray(times, np.float64)
    keep = t >= t[-1] - window_s - 1e-9 if len(t) else np.zeros(0, bool)
    t, p = t[keep], np.asarray(points, np.float64).reshape(-1, 2)[keep]
    if len(t) < MIN_POINTS or t[-1] - t[0] < min_span * window_s - 1e-9:
        return None
    velocity = fit_velocity(t, p)
    mps = float(np.hypot(*velocity))
    spread = float(np.sum((t - t.mean()) ** 2))
    residuals = p - p.mean(axis=0) - np.outer(t - t.mean(), velocity)
    error = math.sqrt(float(np.sum(residuals ** 2)) / (2 * (len(t) - 2)) / spread) if len(t) > 2 else math.inf
    if resolution is not None:
        error = max(error, 0.5 * float(np.sqrt(np.mean(np.asarray(resolution, np.float64)[keep] ** 2))) / math.sqrt(spread))
    if not error <= max_error * mps:
        return None
    return Speed(mps, mps <= cap_mps)


class SpeedEstimator:
    """The speeds of one source's tracks. `update` takes each frame's tracked segments in stream order.

    plane: the source's calibration; window_s, min_span, max_error: as `window_speed`; caps_mps:
    category id -> plausibility cap in metres per second, `default_cap_mps` for the others.
    Every track's ground points of the last `window_s` seconds are held in flat arrays and fitted
    all at once (per-track sums by np.bincount): the same fit as `window_speed`, without a Python
    loop over tracks.
    """

    def __init__(self, plane: GroundPlane, window_s: float, min_span: float, default_cap_mps: float,
                 caps_mps: Mapping[int, float] | None = None, max_error: float = math.inf) -> None:
        if not window_s > 0 or not 0 <= min_span <= 1 or not default_cap_mps > 0:
            raise ValueError(f"need window_s > 0, 0 <= min_span <= 1, a cap > 0; got {window_s}, {min_span}, {default_cap_mps}")
        self.plane, self.window_s, self.min_span = plane, float(window_s), float(min_span)
        self.default_cap_mps, self.caps_mps = float(default_cap_mps), dict(caps_mps or {})
        self.max_error = float(max_error)
        self.reset()

    def reset(self) -> None:
        """Forget every track (a reconnect)."""
        self._track = np.zeros(0, np.int64)  # per ground point within the window: its track id,
        self._t = np.zeros(0)  # stream time (s),
        self._xy = np.zeros((0, 2))  # position (metres)
        self._resolution = np.zeros(0)  # and metres per pixel there

    def update(self, panoptic: np.ndarray, segments: Iterable[Segment], pts_s: float) -> dict[int, Speed]:
        """track id -> its Speed on this frame, for the tracked things with enough ground points in
        the window (implausible ones included, marked). panoptic: H x W int map of the segments."""
        segments = tuple(segments)
        is_thing = thing_table(segments)
        tracked = [s for s in segments if s.isthing and s.track_id is not None]
        seen, pixels = [], []
        for segment in tracked:
            contact = ground_contact(panoptic, segment, is_thing)
            if contact is not None:
                seen.append(segment.track_id)
                pixels.append(contact)
        uv = np.array(pixels, np.float64).reshape(-1, 2)
        metres = self.plane.to_ground(uv)
        resolution = np.linalg.norm(self.plane.to_ground(uv + [0.0, 1.0]) - metres, axis=1)  # metres per pixel down the frame
        ok = np.isfinite(metres).all(axis=1) & np.isfinite(resolution)
        keep = self._t >= pts_s - self.window_s - 1e-9
        self._track = np.concatenate([self._track[keep], np.array(seen, np.int64)[ok]])
        self._t = np.concatenate([self._t[keep], np.full(int(ok.sum()), float(pts_s))])
        self._xy = np.concatenate([self._xy[keep], metres[ok]])
        self._resolution = np.concatenate([self._resolution[keep], resolution[ok]])
        if not tracked or not self._t.size:
            return {}
        ids, index = np.unique(self._track, return_inverse=True)
        n = np.bincount(index).astype(np.float64)
        t = self._t - pts_s
        mean_t = np.bincount(index, t) / n
        mean_xy = np.stack([np.bincount(index, self._xy[:, k]) / n for k in (0, 1)], axis=1)
        dt, dxy = t - mean_t[index], self._xy - mean_xy[index]
        stt = np.bincount(index, dt * dt)
        stx = np.stack([np.bincount(index, dt * dxy[:, k]) for k in (0, 1)], axis=1)
        sxx = np.stack([np.bincount(index, dxy[:, k] ** 2) for k in (0, 1)], axis=1)
        first, last = np.full(len(ids), np.inf), np.full(len(ids), -np.inf)
        np.minimum.at(first, index, t)
        np.maximum.at(last, index, t)
        span = last - first
        with np.errstate(divide="ignore", invalid="ignore"):
            velocity = stx / stt[:, None]
            rss = np.maximum((sxx - stx ** 2 / stt[:, None]).sum(axis=1), 0.0)
            error = np.where(n > 2, np.sqrt(rss / (2 * (n - 2)) / stt), np.inf)
            error = np.maximum(error, 0.5 * np.sqrt(np.bincount(index, self._resolution ** 2) / n / stt))
        mps = np.hypot(velocity[:, 0], velocity[:, 1])
        ready = (n >= MIN_POINTS) & (span >= self.min_span * self.window_s - 1e-9) & (stt > 0) & (error <= self.max_error * mps)
        row = {int(track): k for k, track in enumerate(ids)}
        out: dict[int, Speed] = {}
        for segment in tracked:
            k = row.get(segment.track_id)  # type: ignore[arg-type]  # tracked: never None
            if k is not None and ready[k] and last[k] == 0:  # a ground point on this frame: its contact is in view
                cap = self.caps_mps.get(segment.category_id, self.default_cap_mps)
                out[segment.track_id] = Speed(float(mps[k]), float(mps[k]) <= cap)  # type: ignore[index]
        return out
