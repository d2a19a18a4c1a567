"""Which zones hold which points: the one definition of "inside" for counting (streamer.inference.
counting), the events (streamer.outputs.events.kinds) and the time in zones (zone_time).

Inside is the even-odd (crossing number) rule; points on the boundary follow its half-open
convention: on an axis-parallel rectangle, the left and top edges (smallest x, smallest y) are
inside, the right and bottom ones outside (exact for axis-parallel edges; on slanted ones within
rounding either way).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streamer.frames import Zone


class ZoneTest:
    """Which zones hold which points: the one definition of "inside" (module docstring), for counting,
    the events and the time in zones. Each zone's edges are laid out once; a call is a few vector
    operations over N points x E edges (every zone's together)."""

    def __init__(self, zones: Sequence[Zone]) -> None:
        polys = [np.array(zone.points, np.float64) for zone in zones]
        self._starts = np.cumsum([0] + [len(p) for p in polys[:-1]], dtype=np.intp)  # each zone's first edge
        self._e0 = e0 = np.concatenate(polys or [np.zeros((0, 2))])  # E x 2: every zone's edges, zone after zone
        self._e1 = e1 = np.concatenate([np.roll(p, -1, axis=0) for p in polys] or [np.zeros((0, 2))])
        dy = e1[:, 1] - e0[:, 1]
        self._slope = np.divide(e1[:, 0] - e0[:, 0], dy, out=np.zeros(len(dy)), where=dy != 0)  # dx/dy; unused when flat
        self.size = len(polys)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """N x 2 points (x, y), pixels -> N x Z bool: point n is inside zone z (even-odd rule, half-open)."""
        q = np.asarray(points, np.float64).reshape(-1, 2)
        if not self.size:
            return np.zeros((len(q), 0), bool)
        y0, y1 = self._e0[:, 1], self._e1[:, 1]
        straddles = (y0 > q[:, 1:]) != (y1 > q[:, 1:])  # N x E: the edge spans the point's y (half-open)
        odd = straddles & (q[:, :1] < self._e0[:, 0] + (q[:, 1:] - y0) * self._slope)  # ... and lies to its right
        return (np.add.reduceat(odd.astype(np.int32), self._starts, axis=1) & 1).astype(bool)
