"""Tracks across frames: every thing segment of a source gets a `track_id` that stays while the object
is visible and across short occlusions.

The association is the `trackers` library's (roboflow/trackers, Apache-2.0): ByteTrack (Zhang et
al. 2022), OC-SORT (Cao et al. 2023) or SORT (Bewley et al. 2016) on the segments' boxes, one
tracker per category so that a car never continues a person's track. Lost tracks are kept for
`max_lost_s` seconds of stream time (the frames' PTS), whatever the frame rate.

This module also keeps the panoptic map's instance ids stable: a track holds the same instance id
(its "slot", the smallest free one of its category) for its whole life, so that the overlay, whose
colour follows the instance id, keeps each object's colour. Track ids only grow; slots are reused
once their track has ended.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from streamer.boxes import window
from streamer.config import TRACKERS  # the names tracking.tracker may take, defined once there
from streamer.frames import Segment

NOMINAL_FPS = 30.0  # `trackers` counts its lost-track buffer in frames at 30 fps; with timestamps, seconds = frames / 30


@dataclass(frozen=True)
class TrackingParams:
    """The `tracking:` section (defaults and meanings: streamer.config)."""

    enabled: bool
    tracker: str  # one of TRACKERS (an other name: ValueError)
    max_lost_s: float  # a track not seen for this long (stream time) ends
    min_hits: int  # frames a new track needs before it gets an id


def _make_tracker(params: TrackingParams):
    import trackers  # imported when a run tracks: the library and supervision take ~0.6 s to load

    lost = max(1, round(params.max_lost_s * NOMINAL_FPS))
    confirm = max(1, params.min_hits - 1)  # the library names a track one update after this many; min_hits 1: see SourceTracker
    if params.tracker == "bytetrack":
        return trackers.ByteTrackTracker(lost_track_buffer=lost, frame_rate=NOMINAL_FPS, minimum_consecutive_frames=confirm,
                                         track_activation_threshold=0.0, high_conf_det_threshold=0.0)
    if params.tracker == "ocsort":
        return trackers.OCSORTTracker(lost_track_buffer=lost, frame_rate=NOMINAL_FPS, minimum_consecutive_frames=confirm,
                                      high_conf_det_threshold=0.0)
    if params.tracker == "sort":
        return trackers.SORTTracker(lost_track_buffer=lost, frame_rate=NOMINAL_FPS, minimum_consecutive_frames=confirm)
    raise ValueError(f"unknown tracker {params.tracker!r} (known: {', '.join(TRACKERS)})")  # the config refuses it first


class SourceTracker:
    """The tracks of one source. `update` takes each frame's fused result in stream order.

    The libraries name a track from its second frame on. With min_hits 1 an object gets its track id
    on its first frame: the tracklet the library spawned for it carries that id (held here by
    identity) until the library names it, and from then on the library's id maps to it.
    """

    def __init__(self, params: TrackingParams, label_divisor: int):
        self.params = params
        self.divisor = label_divisor
        self._trackers: dict[int, Any] = {}  # category id -> its tracker (the library's classes share no typed base with .tracks)
        self._ids: dict[tuple[int, int], int] = {}  # (category, the library's id) -> our track id
        self._slots: dict[int, int] = {}  # track id -> instance id in the map
        self._early: dict[int, tuple[object, int]] = {}  # id() of a tracklet not yet named -> (it, our track id)
        self._next_id = 1

    def reset(self) -> None:
        """Forget every track (a reconnect: what comes next is not a continuation). Ids keep growing."""
        self._trackers.clear()
        self._ids.clear()
        self._slots.clear()
        self._early.clear()

    def update(self, panoptic: np.ndarray, segments: tuple[Segment, ...], pts_s: float) -> tuple[np.ndarray, tuple[Segment, ...]]:
        """(panoptic map, segments) with each thing's `track_id` set (None while its track is too new,
        `min_hits`) and its instance id replaced by its track's slot. `panoptic`: H x W int32, see
        frames.LABEL_DIVISOR, relabelled in place (only inside the boxes of things whose id changes;
        copying a 1080p map would cost more than the rest of tracking) and returned; `pts_s`: the
        frame's stream time in seconds, increasing."""
        import supervision as sv

        things = [s for s in segments if s.isthing]
        tracks: dict[int, int] = {}  # segment id -> track id
        for category in sorted({s.category_id for s in things}):
            members = [s for s in things if s.category_id == category]
            boxes = np.array([s.box for s in members], dtype=np.float64)
            scores = np.array([1.0 if s.score is None else s.score for s in members])
            detections = sv.Detections(xyxy=boxes, confidence=scores, data={"segment": np.array([s.id for s in members])})
            if category not in self._trackers:
                self._trackers[category] = _make_tracker(self.params)
            tracker = self._trackers[category]
            # the tracklets before, held (not only their id()s): one the update frees could hand its
            # address to a new one, which would then pass for old
            before = {id(t): t for t in tracker.tracks}
            result = tracker.update(detections, timestamp=pts_s)
            born = [t for t in tracker.tracks if id(t) not in before]
            del before
            for segment_id, library_id, box in zip(result.data["segment"], result.tracker_id, result.xyxy):
                if library_id >= 0:
                    tracks[int(segment_id)] = self._track_id(category, int(library_id), tracker.tracks)
                elif self.params.min_hits <= 1 and (tracklet := _spawned_for(box, born)) is not None:
                    born.remove(tracklet)
                    tracks[int(segment_id)] = track = self._new_id()
                    self._early[id(tracklet)] = (tracklet, track)  # replaces a dead tracklet's entry whose id() was reused
        for category in set(self._trackers) - {s.category_id for s in things}:  # unseen this frame: time passes for them too
            self._trackers[category].update(sv.Detections.empty(), timestamp=pts_s)
        alive = {id(t) for tracker in self._trackers.values() for t in tracker.tracks if t.tracker_id == -1}
        self._early = {key: value for key, value in self._early.items() if key in alive}
        return self._relabel(panoptic, segments, tracks)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _track_id(self, category: int, library_id: int, tracklets: list) -> int:
        """Our track id for a track the library names: the one its tracklet got on its first frame, else a new one."""
        key = (category, library_id)
        if key not in self._ids:
            named = next((t for t in tracklets if t.tracker_id == library_id), None)
            early = self._early.pop(id(named), None) if named is not None else None
            self._ids[key] = early[1] if early else self._new_id()
        return self._ids[key]

    def _relabel(self, panoptic: np.ndarray, segments: tuple[Segment, ...], tracks: dict[int, int]):
        """Instance ids: a track's slot; a thing without a track, a slot free in this frame."""
        kept = set(tracks.values()) | self._lingering()
        self._slots = {track: slot for track, slot in self._slots.items() if track in kept}
        taken: dict[int, set[int]] = {}
        for slot in self._slots.values():
            taken.setdefault(slot // self.divisor, set()).add(slot)
        new_ids: dict[int, int] = {}
        for segment in sorted((s for s in segments if s.isthing), key=lambda s: s.id):
            track = tracks.get(segment.id)
            if track in self._slots:
                new_ids[segment.id] = self._slots[track]
                continue
            used = taken.setdefault(segment.category_id, set())
            base = segment.category_id * self.divisor
            value = next(base + i for i in range(1, self.divisor) if base + i not in used)
            used.add(value)
            new_ids[segment.id] = value
            if track is not None:
                self._slots[track] = value
        changed = [(s, new_ids[s.id]) for s in segments if s.isthing and new_ids[s.id] != s.id]
        masks = [(value, window(s.box), panoptic[window(s.box)] == s.id) for s, value in changed]  # all read before any write
        for value, box, mask in masks:
            panoptic[box][mask] = value
        relabelled = tuple(replace(s, id=new_ids[s.id], track_id=tracks.get(s.id)) if s.isthing else s for s in segments)
        return panoptic, relabelled

    def _lingering(self) -> set[int]:
        """Tracks the trackers still remember (lost, but within max_lost_s, or not yet named): their slots stay reserved."""
        remembered = {track for _, track in self._early.values()}
        for category, tracker in self._trackers.items():
            for tracklet in tracker.tracks:
                key = (category, int(tracklet.tracker_id))
                if key in self._ids:
                    remembered.add(self._ids[key])
        return remembered


def _spawned_for(box: np.ndarray, born: list) -> object | None:
    """The tracklet among those just spawned that starts at `box` (x0, y0, x1, y1), if any."""
    return next((t for t in born if np.allclose(t.get_state_bbox(), box, atol=1e-3)), None)
