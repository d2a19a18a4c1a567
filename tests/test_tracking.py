"""SourceTracker: track ids that stay with an object across frames and short occlusions, instance ids
(and so colours) that stay with its track, one tracker per category. Hand-made maps, and the
synthetic street's exact ground truth (its objects carry their true track)."""
from __future__ import annotations

import collections
import random

import numpy as np
import pytest
from helpers import boxes_frame as frame_of

from streamer.boxes import window
from streamer.frames import LABEL_DIVISOR, Segment
from streamer.inference.tracking import TRACKERS, SourceTracker, TrackingParams
from streamer.inputs.synthetic import StreetScene

CAR, PERSON = 3, 4
FPS = 10.0


def params(tracker: str = "bytetrack", max_lost_s: float = 1.0, min_hits: int = 1) -> TrackingParams:
    return TrackingParams(True, tracker, max_lost_s, min_hits)


def things(segments) -> list[Segment]:
    return sorted((s for s in segments if s.isthing), key=lambda s: s.box[0])


@pytest.mark.parametrize("tracker", TRACKERS)
def test_two_cars_keep_their_track_and_instance_id_while_their_rank_changes(tracker):
    source = SourceTracker(params(tracker), LABEL_DIVISOR)
    seen: dict[int, set] = collections.defaultdict(set)  # left-to-right position -> (track, value)
    for index in range(12):
        boxes = [(CAR, 10 + 2 * index, 20, 30, 20), (CAR, 120 - 2 * index, 70, 30, 20)]
        if index % 2:
            boxes.reverse()  # the fusion's rank order changes: per-frame ids would swap
        panoptic, segments = frame_of(boxes)
        relabelled, out = source.update(panoptic, segments, index / FPS)
        ids = [s.id for s in out]
        assert len(ids) == len(set(ids)) and set(np.unique(relabelled)) == set(ids), "ids unique and the map agrees"
        for s in things(out):
            assert (relabelled[window(s.box)] == s.id).all()
        if index >= 2:  # from the second frame on, every object has a track
            for position, segment in enumerate(sorted(things(out), key=lambda s: s.box[1])):
                assert segment.track_id is not None
                seen[position].add((segment.track_id, segment.id))
    assert all(len(pairs) == 1 for pairs in seen.values()), seen
    assert seen[0] != seen[1]


def test_a_short_occlusion_keeps_the_track_and_a_long_one_ends_it():
    source = SourceTracker(params(max_lost_s=1.0), LABEL_DIVISOR)
    time, track = 0.0, None
    for index in range(5):
        _, out = source.update(*frame_of([(CAR, 10 + 3 * index, 30, 30, 20)]), time)
        time += 1 / FPS
        track = things(out)[0].track_id or track
    time += 0.6  # hidden for 0.6 s: within max_lost_s
    _, out = source.update(*frame_of([(CAR, 10 + 3 * 11, 30, 30, 20)]), time)
    assert things(out)[0].track_id == track
    time += 2.0  # hidden for 2 s: the track has ended
    source.update(*frame_of([(CAR, 10 + 3 * 31, 30, 30, 20)]), time)
    _, out = source.update(*frame_of([(CAR, 10 + 3 * 32, 30, 30, 20)]), time + 1 / FPS)
    assert things(out)[0].track_id not in (None, track)


def test_a_person_never_continues_a_cars_track_and_reset_starts_afresh():
    source = SourceTracker(params(), LABEL_DIVISOR)
    for index in range(3):
        _, out = source.update(*frame_of([(CAR, 40, 30, 30, 40)]), index / FPS)
    car = things(out)[0]
    _, out = source.update(*frame_of([(PERSON, 40, 30, 30, 40)]), 3 / FPS)
    _, out = source.update(*frame_of([(PERSON, 40, 30, 30, 40)]), 4 / FPS)
    person = things(out)[0]
    assert person.category_id == PERSON and person.track_id not in (None, car.track_id)
    source.reset()
    _, out = source.update(*frame_of([(PERSON, 40, 30, 30, 40)]), 5 / FPS)
    _, out = source.update(*frame_of([(PERSON, 40, 30, 30, 40)]), 6 / FPS)
    assert things(out)[0].track_id not in (None, car.track_id, person.track_id), "ids keep growing after a reset"


def test_the_synthetic_streets_true_tracks_keep_one_id_each():
    """The ground truth's own masks as detections, their ids by rank per frame: every true track
    gets one track id for its whole life (no switch), and no id serves two true tracks."""
    scene = StreetScene(1001, (640, 360), 15.0)
    source = SourceTracker(params(max_lost_s=1.0), LABEL_DIVISOR)
    ours: dict[int, set] = collections.defaultdict(set)
    for index in range(300):
        rendered = scene.render(index)
        truth = {s.id: s.track_id for s in rendered.segments if s.isthing}
        segments = tuple(Segment(s.id, s.category_id, s.isthing, 0.9 if s.isthing else None, s.area, s.box)
                         for s in rendered.segments)  # no track ids: those are what is tested
        _, out = source.update(rendered.panoptic, segments, index / 15.0)
        relabelled = {s.box: s for s in out if s.isthing}
        for segment in rendered.segments:
            if segment.isthing and segment.area >= 100 and relabelled[segment.box].track_id is not None:
                ours[truth[segment.id]].add(relabelled[segment.box].track_id)
    assert len(ours) >= 5, "the scene has objects to follow"
    switches = sum(len(ids) - 1 for ids in ours.values())
    assert switches <= 1, dict(ours)
    owners = collections.Counter(track for ids in ours.values() for track in ids)
    assert max(owners.values()) == 1, "an id given to two true tracks"


@pytest.mark.parametrize("tracker", TRACKERS)
def test_every_new_object_gets_its_id_on_its_first_frame_whatever_memory_the_library_reuses(tracker):
    """With min_hits 1 a thing has a track id from its first frame. The library frees a lost tracklet
    and makes a new one in the same update, and the new one often lands at the freed address: a new
    tracklet must be told from the old ones by identity, not by id(), or the new object's id would
    depend on the allocator (and differ between two runs of the same input)."""
    rng = random.Random(0)
    source = SourceTracker(TrackingParams(True, tracker, 0.1, 1), LABEL_DIVISOR)
    objects: dict[int, tuple[float, float]] = {}
    panoptic = np.zeros((200, 400), np.int32)
    missing = 0
    for index in range(1500):
        if rng.random() < 0.3:
            objects[index] = (rng.uniform(0, 380), rng.uniform(0, 180))
        objects = {key: place for key, place in objects.items() if rng.random() >= 0.2}
        segments = tuple(Segment(5 * LABEL_DIVISOR + n + 1, 5, True, 0.9, 100, (x, y, x + 10, y + 10))
                         for n, (x, y) in enumerate(objects.values()))
        _, out = source.update(panoptic, segments, index / 30)
        missing += sum(s.track_id is None for s in out)
    assert missing == 0
