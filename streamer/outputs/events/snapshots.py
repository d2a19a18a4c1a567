"""Snapshots: the picture of an event that concerns an object (track start and end, line crossing,
zone entry and exit, loitering): the frame with the object's outline (from its mask) and label, and a crop around it.

Files, beside the log (log.snapshot_paths): `snapshots/<event id>.jpg` (the frame, at most
`max_width` pixels wide) and `snapshots/<event id>-crop.jpg` (the object's box, widened by
CROP_MARGIN of its larger side and CROP_PAD_PX, at least CROP_MIN_PX, from that picture). Each is written to a temporary
file, fsynced and renamed (export.write_atomic), after its size is counted in the log (retention
removes the files with their event, and counts them against events.max_mb).

`Shot` is what the events writer keeps of an object in a frame (the scaled frame, the object's mask
in its box, its box and label); `SnapshotWriter` draws, encodes (OpenCV JPEG) and writes them on its
own thread from a bounded queue: when it falls behind, a snapshot is skipped and counted, never the
event, and the pipeline never waits.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from streamer.outputs.events.log import SNAPSHOTS, EventLog, snapshot_paths
from streamer.outputs.export import write_atomic

log = logging.getLogger(__name__)

QUEUE_SHOTS = 32  # shots waiting to be drawn and written
CROP_MARGIN = 0.25  # the crop: the box widened by this share of its larger side on each side...
CROP_PAD_PX = 8  # ...and by this many pixels
CROP_MIN_PX = 64  # ...and to at least this many pixels each way (within the picture)
OUTLINE = (0, 255, 255)  # BGR yellow, over a black line for contrast on any background
CLOSE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Shot:
    """One object in one frame, ready to draw. `image`: the frame scaled by `scale` (<= 1), H x W x 3
    uint8 BGR, shared and never written to; `mask`: the object's pixels within `box`, h x w bool at
    the frame's own resolution; `box`: (x0, y0, x1, y1) whole pixels of the frame, x1/y1 exclusive."""

    image: np.ndarray
    scale: float
    mask: np.ndarray
    box: tuple[int, int, int, int]
    label: str


def scaled(image: np.ndarray, max_width: int) -> tuple[np.ndarray, float]:
    """(`image` at most `max_width` wide, the scale applied); the image itself when it is narrow enough."""
    height, width = image.shape[:2]
    if width <= max_width:
        return image, 1.0
    scale = max_width / width
    return cv2.resize(image, (max_width, max(1, round(height * scale))), interpolation=cv2.INTER_AREA), scale


def make_shot(picture: tuple[np.ndarray, float], panoptic_map: np.ndarray, segment_id: int, box: tuple[float, float, float, float],
              label: str) -> Shot:
    """The Shot of segment `segment_id` (its pixels in `panoptic_map`, H x W int) whose box is `box`
    (x0, y0, x1, y1 float pixels), on `picture` (the frame as `scaled` returns it)."""
    height, width = panoptic_map.shape[:2]
    x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
    x1, y1 = min(width, max(x0 + 1, int(np.ceil(box[2])))), min(height, max(y0 + 1, int(np.ceil(box[3]))))
    mask = panoptic_map[y0:y1, x0:x1] == segment_id
    return Shot(picture[0], picture[1], mask, (x0, y0, x1, y1), label)


def draw(shot: Shot) -> tuple[np.ndarray, np.ndarray]:
    """(the picture with the object's outline and label, the crop around the object), both uint8 BGR."""
    out = shot.image.copy()
    x0, y0, x1, y1 = shot.box
    contours, _ = cv2.findContours(shot.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outline = [np.round((c.reshape(-1, 2) + (x0, y0)) * shot.scale).astype(np.int32) for c in contours]
    cv2.polylines(out, outline, True, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.polylines(out, outline, True, OUTLINE, 1, cv2.LINE_AA)
    sx0, sy0, sx1, sy1 = (round(v * shot.scale) for v in shot.box)
    font, size = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    (tw, th), base = cv2.getTextSize(shot.label, font, size, 1)
    ty = sy0 - 3 if sy0 - th - base - 3 >= 0 else min(out.shape[0] - base - 1, sy1 + th + 3)
    cv2.rectangle(out, (sx0, ty - th - 2), (sx0 + tw + 2, ty + base), (0, 0, 0), -1)
    cv2.putText(out, shot.label, (sx0 + 1, ty), font, size, OUTLINE, 1, cv2.LINE_AA)
    margin = CROP_MARGIN * max(sx1 - sx0, sy1 - sy0) + CROP_PAD_PX
    mx = max(margin, (CROP_MIN_PX - (sx1 - sx0)) / 2)  # a small object's crop is still CROP_MIN_PX wide and high
    my = max(margin, (CROP_MIN_PX - (sy1 - sy0)) / 2)
    height, width = out.shape[:2]
    cx0, cy0 = max(0, int(sx0 - mx)), max(0, int(sy0 - my))
    cx1, cy1 = min(width, max(cx0 + 1, int(sx1 + mx))), min(height, max(cy0 + 1, int(sy1 + my)))
    return out, out[cy0:cy1, cx0:cx1]


def encode(image: np.ndarray, quality: int) -> bytes:
    """JPEG of a uint8 BGR image at `quality` (1-100). Raises ValueError when OpenCV cannot encode it."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"cannot encode a {image.shape} picture as JPEG")
    return data.tobytes()


class SnapshotWriter:
    """Draws and writes snapshots on its own thread. `submit` never waits; close() once."""

    def __init__(self, events_log: EventLog, quality: int, name: str = "snapshots") -> None:
        self.log = events_log
        self.quality = quality
        self.skipped = 0  # snapshots not made: the queue was full, or the disk failed
        self.written = 0
        self._queue: queue.Queue[tuple[tuple[str, ...], Shot] | None] = queue.Queue(QUEUE_SHOTS)
        (events_log.folder / SNAPSHOTS).mkdir(exist_ok=True)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, event_ids: tuple[str, ...], shot: Shot) -> bool:
        """Queue the snapshot of the events `event_ids` (one object in one frame); False (counted) when full."""
        try:
            self._queue.put_nowait((event_ids, shot))
            return True
        except queue.Full:
            self.skip(len(event_ids), "the snapshot writer falls behind")
            return False

    def skip(self, n: int, why: str) -> None:
        """Count `n` snapshots not made (logged the first time and every 100th)."""
        before, self.skipped = self.skipped, self.skipped + n
        if before == 0 or before // 100 != self.skipped // 100:
            log.warning("events: %s; %d snapshots skipped so far (their events are logged)", why, self.skipped)

    def close(self) -> None:
        """Write what is queued (at most CLOSE_TIMEOUT_S), then stop."""
        try:
            self._queue.put(None, timeout=CLOSE_TIMEOUT_S)
        except queue.Full:
            pass
        self._thread.join(CLOSE_TIMEOUT_S)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            event_ids, shot = item
            try:
                picture, crop = draw(shot)
                files = (encode(picture, self.quality), encode(crop, self.quality))
                for event_id in event_ids:
                    if self.log.record_snapshot(event_id, sum(map(len, files))):  # counted before written
                        for path, data in zip(snapshot_paths(self.log.folder, event_id), files):
                            write_atomic(path, data)
                        self.written += 1
            except Exception as exc:  # noqa: BLE001  a full disk: the events go on without pictures
                self.skip(len(event_ids), f"cannot write a snapshot in {self.log.folder}: {exc}")
