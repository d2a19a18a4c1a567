"""The procedural street scene: determinism, exact ground truth, alignment, motion, URI parsing."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from helpers import mask_box

from streamer.frames import LABEL_DIVISOR
from streamer.inputs.synthetic import (
    CATEGORIES,
    MIN_VISIBLE_PIXELS,
    SceneFrame,
    StreetScene,
    SyntheticReader,
    parse_synthetic_uri,
)

SMALL = (160, 96)
ROAD, SIDEWALK, BUILDING, SKY, CAR, PERSON = 1, 2, 3, 4, 5, 6


@pytest.fixture(scope="module")
def scene() -> StreetScene:
    return StreetScene(seed=3, size=(640, 360))


def same(a: SceneFrame, b: SceneFrame) -> bool:
    return (a.image.tobytes() == b.image.tobytes() and a.panoptic.tobytes() == b.panoptic.tobytes()
            and a.segments == b.segments)


# ---------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_frames():
    a, b = StreetScene(7, SMALL), StreetScene(7, SMALL)
    for index in (0, 1, 123):
        assert same(a.render(index), b.render(index))


def test_random_access_does_not_depend_on_render_order():
    indices = [0, 1, 2, 450, 451, 9000, 30]
    a, b = StreetScene(11, SMALL), StreetScene(11, SMALL)
    forward = {i: a.render(i) for i in indices}
    backward = {i: b.render(i) for i in reversed(indices)}
    for i in indices:
        assert same(forward[i], backward[i]), i
    assert same(a.render(450), forward[450])  # and again, from a warm cache


def test_different_seeds_differ():
    a, b = StreetScene(1, SMALL).render(10), StreetScene(2, SMALL).render(10)
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.panoptic, b.panoptic)


def test_frames_of_one_sequence_differ_in_noise_but_not_in_static_labels():
    s = StreetScene(5, SMALL)
    a, b = s.render(0), s.render(1)
    assert not np.array_equal(a.image, b.image)
    sky = (a.panoptic == SKY * LABEL_DIVISOR) & (b.panoptic == SKY * LABEL_DIVISOR)
    assert sky.sum() > 0


# ---------------------------------------------------------------------------- ground truth


def check_ground_truth(frame: SceneFrame) -> None:
    h, w = frame.panoptic.shape
    assert frame.image.shape == (h, w, 3) and frame.image.dtype == np.uint8
    assert frame.panoptic.dtype == np.int32
    categories = {c.id: c for c in CATEGORIES}
    ids, counts = np.unique(frame.panoptic, return_counts=True)
    assert 0 not in ids, "void pixels"
    by_id = {s.id: s for s in frame.segments}
    assert len(by_id) == len(frame.segments), "duplicate segment ids"
    assert set(by_id) == set(ids.tolist())
    instances: dict[int, list[int]] = {}
    for seg_id, count in zip(ids.tolist(), counts.tolist()):
        seg = by_id[seg_id]
        cat, inst = divmod(seg_id, LABEL_DIVISOR)
        assert seg.category_id == cat and cat in categories
        assert seg.isthing == categories[cat].isthing
        assert seg.area == count
        assert seg.box == mask_box(frame.panoptic == seg_id)
        assert seg.score is None
        if seg.isthing:
            assert isinstance(seg.track_id, int) and seg.track_id > 0
            assert count >= MIN_VISIBLE_PIXELS
            instances.setdefault(cat, []).append(inst)
        else:
            assert inst == 0 and seg.track_id is None
    for cat, insts in instances.items():
        assert sorted(insts) == list(range(1, len(insts) + 1)), (cat, insts)
    tracks = [s.track_id for s in frame.segments if s.isthing]
    assert len(tracks) == len(set(tracks))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_ground_truth_is_consistent_small(seed):
    s = StreetScene(seed, SMALL)
    for index in (0, 17, 300, 2000):
        check_ground_truth(s.render(index))


def test_ground_truth_is_consistent_full_size(scene):
    for index in (0, 100, 101, 1000):
        check_ground_truth(scene.render(index))


def test_there_are_cars_and_people(scene):
    frames = [scene.render(i) for i in range(0, 600, 30)]
    cars = [sum(s.category_id == CAR for s in f.segments) for f in frames]
    people = [sum(s.category_id == PERSON for s in f.segments) for f in frames]
    assert max(cars) >= 2 and max(people) >= 1
    assert np.mean(cars) <= 12 and np.mean(people) <= 10


def masks(frame: SceneFrame) -> dict[int, np.ndarray]:
    """track id -> pixel mask."""
    return {s.track_id: frame.panoptic == s.id for s in frame.segments if s.isthing}


def test_track_ids_are_stable_while_visible(scene):
    checked = 0
    for start in (0, 200, 777):
        prev = scene.render(start)
        for index in range(start + 1, start + 6):
            cur = scene.render(index)
            old = masks(prev)
            for track, mask in masks(cur).items():
                if mask.sum() < 200:
                    continue
                # The object of the previous frame that overlaps it most must carry the same id.
                ious = {t: (m & mask).sum() / (m | mask).sum() for t, m in old.items()}
                best = max(ious, key=ious.get, default=None)
                assert best is not None and ious[best] > 0.3, (index, track)
                assert best == track, (index, track, best)
                checked += 1
            for s in cur.segments:
                for p in prev.segments:
                    if s.isthing and p.track_id == s.track_id:
                        assert p.category_id == s.category_id
            prev = cur
    assert checked >= 10, "too few objects large enough to follow"


def test_objects_move(scene):
    a, b = scene.render(300), scene.render(305)
    boxes_a = {s.track_id: s.box for s in a.segments if s.isthing}
    boxes_b = {s.track_id: s.box for s in b.segments if s.isthing}
    common = set(boxes_a) & set(boxes_b)
    assert common
    assert sum(boxes_a[t] != boxes_b[t] for t in common) >= len(common) / 2
    assert not np.array_equal(a.panoptic, b.panoptic)


# ---------------------------------------------------------------------------- alignment


def test_stuff_is_where_it_belongs():
    for seed in range(6):
        f = StreetScene(seed, SMALL).render(50)
        rows = np.arange(f.panoptic.shape[0])[:, None]
        sky = f.panoptic == SKY * LABEL_DIVISOR
        ground = np.isin(f.panoptic, (ROAD * LABEL_DIVISOR, SIDEWALK * LABEL_DIVISOR))
        assert sky.any() and ground.any()
        # The sky is above the horizon and the ground below it.
        assert np.broadcast_to(rows, sky.shape)[sky].max() < np.broadcast_to(rows, ground.shape)[ground].min()
        assert sky[0].any(), "no sky in the top row"
        assert (f.panoptic[-1] // LABEL_DIVISOR != SKY).all()


def test_car_pixels_look_different_from_the_road_around_them(scene):
    checked = differ = 0
    for index in range(0, 900, 45):
        f = scene.render(index)
        road = f.panoptic == ROAD * LABEL_DIVISOR
        img = f.image.astype(np.float64)
        for s in f.segments:
            if s.category_id != CAR or s.area < 300:
                continue
            car = f.panoptic == s.id
            ring = cv2.dilate(car.view(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & road
            if ring.sum() < 50:
                continue
            checked += 1
            differ += np.abs(img[car].mean(0) - img[ring].mean(0)).sum() > 15
    assert checked >= 3
    assert differ >= 0.8 * checked


def test_image_edges_follow_label_edges(scene):
    """Strong image gradients sit on (or next to) label boundaries more often than elsewhere."""
    f = scene.render(60)
    pan = f.panoptic
    edge = np.zeros(pan.shape, bool)
    edge[:, 1:] |= pan[:, 1:] != pan[:, :-1]
    edge[1:] |= pan[1:] != pan[:-1]
    near_edge = cv2.dilate(edge.view(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    grey = cv2.cvtColor(f.image, cv2.COLOR_BGR2GRAY).astype(np.float64)
    grad = np.hypot(cv2.Sobel(grey, cv2.CV_64F, 1, 0), cv2.Sobel(grey, cv2.CV_64F, 0, 1))
    assert grad[near_edge].mean() > 1.5 * grad[~near_edge].mean()


def test_geometry_scales_with_the_size():
    small, big = StreetScene(4, (160, 90)).render(20), StreetScene(4, (640, 360)).render(20)
    cats_big = (big.panoptic // LABEL_DIVISOR).astype(np.uint8)
    down = cv2.resize(cats_big, (160, 90), interpolation=cv2.INTER_NEAREST)
    assert (down == small.panoptic // LABEL_DIVISOR).mean() > 0.9


# ---------------------------------------------------------------------------- arguments


def test_bad_arguments():
    with pytest.raises(ValueError, match="frame index must be >= 0, got -1"):
        StreetScene(0, SMALL).render(-1)
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        StreetScene(-1)
    with pytest.raises(ValueError, match=r"size must be \(width, height\) with positive ints, got \(0, 10\)"):
        StreetScene(0, (0, 10))
    with pytest.raises(ValueError, match="fps must be positive, got 0"):
        StreetScene(0, fps=0)


def test_uri_defaults():
    expected = {"seed": 0, "frames": None, "size": (640, 360), "fps": 15.0, "realtime": False}
    assert parse_synthetic_uri("synthetic:street") == expected
    assert parse_synthetic_uri("synthetic:street?") == expected


def test_uri_all_keys():
    got = parse_synthetic_uri("synthetic:street?seed=42&frames=300&size=320X180&fps=7.5&realtime=1")
    assert got == {"seed": 42, "frames": 300, "size": (320, 180), "fps": 7.5, "realtime": True}
    assert isinstance(got["seed"], int) and isinstance(got["fps"], float)
    assert parse_synthetic_uri("synthetic:street?fps=30")["fps"] == 30.0


@pytest.mark.parametrize("uri", [
    "street?seed=1",
    "synthetic:",
    "synthetic:highway",
    "synthetic:street?colour=red",
    "synthetic:street?seed",
    "synthetic:street?seed=x",
    "synthetic:street?seed=-1",
    "synthetic:street?seed=1&seed=2",
    "synthetic:street?frames=0",
    "synthetic:street?frames=1.5",
    "synthetic:street?fps=0",
    "synthetic:street?fps=nan",
    "synthetic:street?fps=fast",
    "synthetic:street?size=640",
    "synthetic:street?size=640x",
    "synthetic:street?size=0x360",
    "synthetic:street?size=640x-360",
    "synthetic:street?size=axb",
    "synthetic:street?size=100000x100000",  # validation accepts only what a run can use
    "synthetic:street?fps=1e300",
    "synthetic:street?fps=1e-300",
    "synthetic:street?frames=99999999999999999999",
])
def test_uri_errors(uri):
    with pytest.raises(ValueError) as err:
        parse_synthetic_uri(uri)
    message = str(err.value)
    assert "\n" not in message and message.startswith("bad synthetic URI: ")


def test_reader_plays_the_uri():
    reader = SyntheticReader.from_uri("synthetic:street?seed=3&frames=3&size=160x96&fps=10")
    assert (reader.live, reader.fps, reader.frame_count) == (False, 10.0, 3)
    frames = [reader.read() for _ in range(4)]
    assert frames[3] is None
    assert [pts for _, pts in frames[:3]] == [0.0, 100.0, 200.0]
    assert np.array_equal(frames[1][0], StreetScene(3, SMALL, 10.0).render(1).image)
    assert SyntheticReader.from_uri("synthetic:street", fps=30).fps == 30.0
    with pytest.raises(ValueError, match="^bad synthetic URI: .*size must be WxH, got 'big'"):
        SyntheticReader.from_uri("synthetic:street?size=big")
