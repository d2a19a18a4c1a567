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

import collections
import math
from collections.abc import Iterable, Mapping

import numpy as np

from streamer.analytics.calibration import GroundPlane
from streamer.boxes import window
from streamer.frames import Segment, Speed

MIN_POINTS = 3  # a fit needs at least this many ground points in its window


def ground_contact(panoptic: np.ndarray, segment: Segment, things: set[int]) -> tuple[float, float] | None:
    """Where a thing's mask touches the ground, (u, v) in pixels (pixel centres at integers, as
    OpenCV), or None when that point is out of view.

    panoptic: H x W int map holding the segment's pixels as `segment.id`; things: the ids of every
    thing segment of the frame. u is the mean column of the mask's lowest row, v that row's lower
    edge (row + 0.5). None when the mask is empty, reaches the bottom row of the frame, or any pixel
    right under its lowest pixels belongs to another thing.
    """
    box = window(segment.box)
    mask = panoptic[box] == segment.id
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    row = int(rows[-1])
    cols = np.flatnonzero(mask[row])
    y = box[0].start + row
    x0 = box[1].start
    if y + 1 >= panoptic.shape[0]:
        return None
    below = panoptic[y + 1, x0 + cols]
    if np.isin(below, list(things - {segment.id})).any():
        return None
    return float(x0 + cols.mean()), y + 0.5


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
    """

    def __init__(self, plane: GroundPlane, window_s: float, min_span: float, default_cap_mps: float,
                 caps_mps: Mapping[int, float] | None = None, max_error: float = math.inf) -> None:
        if not window_s > 0 or not 0 <= min_span <= 1 or not default_cap_mps > 0:
            raise ValueError(f"need window_s > 0, 0 <= min_span <= 1, a cap > 0; got {window_s}, {min_span}, {default_cap_mps}")
        self.plane, self.window_s, self.min_span = plane, float(window_s), float(min_span)
        self.default_cap_mps, self.caps_mps = float(default_cap_mps), dict(caps_mps or {})
        self.max_error = float(max_error)
        self._points: dict[int, collections.deque] = {}  # track id -> (pts_s, x, y, metres per pixel) within the window
        self._seen: dict[int, float] = {}  # track id -> last pts_s it was in a frame

    def reset(self) -> None:
        """Forget every track (a reconnect)."""
        self._points.clear()
        self._seen.clear()

    def update(self, panoptic: np.ndarray, segments: Iterable[Segment], pts_s: float) -> dict[int, Speed]:
        """track id -> its Speed on this frame, for the tracked things with enough ground points in
        the window (implausible ones included, marked). panoptic: H x W int map of the segments."""
        segments = tuple(segments)
        things = {s.id for s in segments if s.isthing}
        tracked = [s for s in segments if s.isthing and s.track_id is not None]
        contacts = [(s, ground_contact(panoptic, s, things)) for s in tracked]
        seen = [(s, c) for s, c in contacts if c is not None]
        pixels = np.array([c for _, c in seen], np.float64).reshape(-1, 2)
        metres = self.plane.to_ground(pixels)
        step = np.linalg.norm(self.plane.to_ground(pixels + [0.0, 1.0]) - metres, axis=1)  # metres per pixel down the frame
        out: dict[int, Speed] = {}
        for (segment, _), (x, y), resolution in zip(seen, metres, step):
            track = segment.track_id
            assert track is not None
            points = self._points.setdefault(track, collections.deque())
            if np.isfinite(x) and np.isfinite(y) and np.isfinite(resolution):
                points.append((pts_s, float(x), float(y), float(resolution)))
            while points and points[0][0] < pts_s - self.window_s - 1e-9:
                points.popleft()
            if points:
                data = np.array(points, np.float64)
                speed = window_speed(data[:, 0], data[:, 1:3], self.window_s, self.min_span,
                                     self.caps_mps.get(segment.category_id, self.default_cap_mps), data[:, 3], self.max_error)
                if speed is not None:
                    out[track] = speed
        for segment in tracked:
            assert segment.track_id is not None
            self._seen[segment.track_id] = pts_s
        for track in [t for t, last in self._seen.items() if last < pts_s - self.window_s]:
            del self._seen[track]
            self._points.pop(track, None)
        return out
