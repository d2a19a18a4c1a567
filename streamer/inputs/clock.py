"""Timestamps for live sources: a stream's own PTS are used only once they prove to be real time.

A network stream's PTS can be invented. A container without timestamps (MJPEG over HTTP, a raw H.264
elementary stream) gets them from a nominal rate: FFmpeg assumes 25 fps and OpenCV reports frame N
at N x 40 ms, whatever pace the frames really come at. So frames are stamped by arrival until, over
CHECK_S of arrival after the connection settles, the PTS advance at real time (within
RATE_TOLERANCE). From then on the PTS are used, anchored to arrival: smooth, free of network jitter.
PTS that fail the check, are missing, or drift from arrival more than once are not trusted for the
rest of the connection. Within a session the output never goes back, so an outage shows as a gap.
"""
from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)

SETTLE_S = 0.5  # a connection may start with a burst (a server's buffered keyframe interval)
CHECK_S = 2.0  # of arrival time over which the PTS must keep pace
RATE_TOLERANCE = 0.15  # PTS seconds per arrival second: within 1 +- this
DRIFT_LIMIT_MS = 2000.0  # trusted PTS further than this from arrival are re-anchored (a stall, a burst)


class LiveClock:
    """Stamps the frames of one live source across its connections, in ms since the session began.

    `stamp(stream_pts, arrival_s)`: the stream's PTS in ms (NaN when it has none) and the frame's
    arrival on the monotonic clock in seconds; returns its PTS in ms, strictly increasing.
    """

    def __init__(self, name: str, session_start_s: float):
        self.name = name  # for the log line when a stream's PTS are not trusted
        self._session_start = session_start_s
        self._last = -math.inf
        self._warned = False
        self.new_connection()

    def new_connection(self) -> None:
        self._first: float | None = None  # arrival (ms) of the connection's first frame
        self._check: tuple[float, float] | None = None  # (PTS, arrival) where the check began
        self._offset: float | None = None  # PTS -> session time, once trusted
        self._drifts = 0
        self.trusted: bool | None = None  # None: not yet decided for this connection

    def stamp(self, stream_pts: float, arrival_s: float) -> float:
        arrival = (arrival_s - self._session_start) * 1000.0
        pts = self._from_stream(stream_pts, arrival) if math.isfinite(stream_pts) and self.trusted is not False else None
        if pts is None:
            pts = arrival
        pts = max(pts, self._last + 1.0)
        self._last = pts
        return pts

    def _from_stream(self, stream_pts: float, arrival: float) -> float | None:
        """The frame's time from its PTS, or None while they are unproven (stamped by arrival)."""
        if self.trusted and self._offset is not None:  # trusted: the offset is known
            pts = stream_pts + self._offset
            if pts > self._last and abs(pts - arrival) <= DRIFT_LIMIT_MS:
                return pts
            self._drifts += 1  # went back, or drifted: once is a stall or a burst, twice is a clock
            if self._drifts > 1:
                self._distrust("they keep drifting from the frames' arrival")
                return None
            self._offset = arrival - stream_pts
            return arrival
        if self._first is None:
            self._first = arrival
        if self._check is None:
            if arrival - self._first >= SETTLE_S * 1000:
                self._check = (stream_pts, arrival)
            return None
        start_pts, start_arrival = self._check
        if arrival - start_arrival < CHECK_S * 1000:
            return None
        rate = (stream_pts - start_pts) / (arrival - start_arrival)
        if abs(rate - 1.0) > RATE_TOLERANCE:
            self._distrust(f"they advance {rate:.2f} s per second of arrival (invented from a nominal frame rate?)")
            return None
        self.trusted, self._offset = True, arrival - stream_pts
        return arrival

    def _distrust(self, why: str) -> None:
        self.trusted, self._offset = False, None
        if not self._warned:
            self._warned = True
            log.info("%s: the stream's timestamps are not used, %s: frames are stamped by arrival", self.name, why)
