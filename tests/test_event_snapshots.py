"""Event snapshots (streamer/outputs/events/snapshots.py, output.py) and the log's reading for
/api/events (query.py): pictures drawn from the object's mask, written beside the log, removed and
counted by retention, skipped (never the event) when the writer falls behind. Fast, no server."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from streamer.frames import Event, Frame, Panoptic, Segment, Zone
from streamer.outputs.events import snapshots
from streamer.outputs.events.log import EventLog, NewEvent, snapshot_paths
from streamer.outputs.events.output import EventsOutput
from streamer.outputs.events.query import BadQuery, parse_query, read_events, read_snapshot

W, H = 200, 120
BLUE = (255, 60, 0)  # BGR
STEP = 12  # pixels the object moves right per frame
BEST = 4  # the frame where its score is highest
SCORES = [0.5, 0.6, 0.55, 0.7, 0.95, 0.6, 0.8, 0.5, 0.6, 0.5]


def object_box(index: int) -> tuple[int, int, int, int]:
    x0 = 10 + STEP * index
    return x0, 50, x0 + 30, 90


def result(index: int, connection: int = 0) -> Panoptic:
    """A grey street with one blue ellipse (a car, track 3) moving right; it crosses line `h` at frame 6."""
    image = np.full((H, W, 3), 90, np.uint8)
    image[::7] = 110
    panoptic = np.zeros((H, W), np.int32)
    x0, y0, x1, y1 = object_box(index)
    mask = np.zeros((H, W), np.uint8)
    cv2.ellipse(mask, ((x0 + x1 - 1) // 2, (y0 + y1 - 1) // 2), ((x1 - x0) // 2 - 1, (y1 - y0) // 2 - 1), 0, 0, 360, 1, -1)
    image[mask > 0] = BLUE
    panoptic[mask > 0] = 1001
    segment = Segment(1001, 1, True, SCORES[index], int(mask.sum()), (float(x0), float(y0), float(x1), float(y1)), track_id=3)
    events = (Event("line", "v", 3, "car", "in", index / 10),) if index == 6 else ()
    frame = Frame("cam0", index, image, index * 100.0, 1_700_000_000.0 + index / 10, time.monotonic(), connection)
    return Panoptic(frame, panoptic, (segment,), events=events)


def yellow(image: np.ndarray) -> np.ndarray:
    b, g, r = (image[..., i].astype(int) for i in range(3))
    return (r > 170) & (g > 170) & (b < 110)


@pytest.fixture(scope="module")
def street(tmp_path_factory):
    """The street's events and snapshots, logged with snapshots at most 160 pixels wide (scale 0.8):
    the car enters the zone at frame 3, loiters from 5, crosses the line at 6, leaves the zone at 8."""
    folder = tmp_path_factory.mktemp("events")
    log = EventLog(folder, keep_days=None)
    output = EventsOutput("cam0", log, [Zone("middle", ((60, 0), (120, 0), (120, 120), (60, 120)), loitering_s=0.15)], {1: "car"}, 5.0,
                          snapshot_width=160, snapshot_quality=95)
    for index in range(len(SCORES)):
        output.write(result(index), None)
    output.close()
    reader = EventLog(folder)
    logged = reader.after(0, 1000)
    reader.close()
    return folder, logged, output


def decoded(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_every_event_about_the_object_has_its_picture_and_crop(street):
    folder, logged, output = street
    kinds = [e.kind for e in logged]
    assert kinds == ["source_state", "track_start", "zone_entry", "loitering", "line_crossing", "zone_exit", "track_end",
                     "source_state"]
    pictured = {e.kind: e for e in logged if e.kind not in ("source_state", "counts")}
    assert set(pictured) == {"track_start", "line_crossing", "zone_entry", "loitering", "zone_exit", "track_end"}
    for event in pictured.values():
        picture, crop = (decoded(path.read_bytes()) for path in snapshot_paths(folder, event.id))
        assert picture.shape == (96, 160, 3), "scaled to snapshot_width"
        assert 0 < crop.shape[0] < 96 and 0 < crop.shape[1] < 160
        assert yellow(crop).any(), "the outline is in the crop"
        assert read_snapshot(folder, event.id) == snapshot_paths(folder, event.id)[0].read_bytes()
        assert read_snapshot(folder, event.id, crop=True) == snapshot_paths(folder, event.id)[1].read_bytes()
    assert output.snapshots is not None and output.snapshots.skipped == 0 and output.snapshots.written == 6
    for event in (e for e in logged if e.kind == "source_state"):
        assert not any(p.exists() for p in snapshot_paths(folder, event.id)) and read_snapshot(folder, event.id) is None
    assert read_snapshot(folder, "not-an-id") is None and read_snapshot(folder, "../events.sqlite") is None


def blue_centre_x(picture: np.ndarray) -> float:
    b, g, r = (picture[..., i].astype(int) for i in range(3))
    xs = np.nonzero((b > 200) & (g < 120) & (r < 60))[1]
    return float(xs.mean())


def test_each_picture_shows_its_own_frame_and_track_end_the_best_scoring_one(street):
    folder, logged, _ = street
    frame_of = {e.kind: round(e.pts_s * 10) for e in logged}  # the frame each event happened in
    frame_of["track_end"] = BEST
    assert [e.payload["best_frame"] for e in logged if e.kind == "track_end"] == [BEST]
    for event in logged:
        if event.kind in frame_of and event.kind != "source_state":
            picture = decoded(snapshot_paths(folder, event.id)[0].read_bytes())
            x0, _, x1, _ = object_box(frame_of[event.kind])
            assert blue_centre_x(picture) == pytest.approx((x0 + x1) / 2 * 0.8, abs=2.5), event.kind


def test_the_outline_follows_the_mask_not_the_box():
    image = np.full((80, 100, 3), 90, np.uint8)
    mask = np.zeros((40, 60), bool)
    cv2.ellipse(mask.view(np.uint8), (30, 20), (28, 18), 0, 0, 360, 1, -1)
    picture, crop = snapshots.draw(snapshots.Shot(image, 1.0, mask, (20, 30, 80, 70), "car 3"))
    assert yellow(picture[48:53, 20:24]).any(), "the ellipse's leftmost point (x 22, y 50) is outlined"
    assert not yellow(picture[30:34, 20:24]).any() and not yellow(picture[66:70, 76:80]).any(), "the box's corners are not"
    assert (picture[50, 50] == 90).all(), "inside the object the frame is as it was"
    assert (image == 90).all(), "the shared frame is never drawn on"
    margin = snapshots.CROP_MARGIN * 60 + snapshots.CROP_PAD_PX
    assert crop.shape[:2] == (min(80, int(70 + margin)) - max(0, int(30 - margin)), min(100, int(80 + margin)) - max(0, int(20 - margin)))


def test_a_writer_that_falls_behind_skips_snapshots_and_counts_them_never_the_events(tmp_path, monkeypatch):
    log = EventLog(tmp_path)
    stored = log.append([NewEvent("track_start", "cam0", 0.0, time.time(), {"track_id": i}) for i in range(6)])
    started, release = threading.Event(), threading.Event()
    draw = snapshots.draw

    def held(shot):
        started.set()
        release.wait(10)
        return draw(shot)

    monkeypatch.setattr(snapshots, "QUEUE_SHOTS", 2)
    monkeypatch.setattr(snapshots, "draw", held)
    writer = snapshots.SnapshotWriter(log, 80)
    shot = snapshots.Shot(np.zeros((20, 30, 3), np.uint8), 1.0, np.ones((5, 5), bool), (2, 2, 7, 7), "car 1")
    assert writer.submit((stored[0].id,), shot)
    assert started.wait(10)  # the writer holds the first; two more fit in its queue
    accepted = [writer.submit((e.id,), shot) for e in stored[1:]]
    assert accepted == [True, True, False, False, False] and writer.skipped == 3
    release.set()
    writer.close()
    assert writer.written == 3 and log.count() == 6, "every event is logged"
    assert [snapshot_paths(tmp_path, e.id)[0].exists() for e in stored] == [True, True, True, False, False, False]
    log.close()


def test_retention_removes_an_events_snapshots_and_counts_them_in_the_size_cap(tmp_path):
    log = EventLog(tmp_path, keep_days=1.0, max_mb=None)
    old = log.append([NewEvent("track_start", "cam0", 0.0, time.time() - 3 * 86400, {"track_id": 1})])[0]
    new = log.append([NewEvent("track_start", "cam0", 0.0, time.time(), {"track_id": 2})])[0]
    for event in (old, new):
        assert log.record_snapshot(event.id, 300_000)
        for path in snapshot_paths(tmp_path, event.id):
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"x" * 150_000)
    assert log.used_bytes() > 600_000, "the snapshots' bytes count"
    assert log.prune() == (1, 0)
    assert not any(p.exists() for p in snapshot_paths(tmp_path, old.id)) and all(p.exists() for p in snapshot_paths(tmp_path, new.id))
    log.max_mb = 0.25  # the database alone is well under it; with the snapshot it is over
    assert log.prune() == (0, 1) and log.count() == 0 and log.dropped == 1
    assert not any(p.exists() for p in snapshot_paths(tmp_path, new.id))
    assert not log.record_snapshot(new.id, 10), "an event retention removed gets no snapshot"
    log.close()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """40 events: cam0 and cam1 in turn, cars and people, one second apart from wall 1000."""
    folder = tmp_path_factory.mktemp("query")
    log = EventLog(folder, keep_days=None)
    log.append([NewEvent("line_crossing" if i % 4 else "counts", f"cam{i % 2}", i / 10, 1000.0 + i,
                         {"category": "car" if i % 3 else "person", "i": i} if i % 4 else {"lines": {}}) for i in range(40)])
    log.close()
    return folder


def seqs(folder, **params) -> tuple[list[int], int | None]:
    answer = read_events(folder, parse_query({k: [str(v)] for k, v in params.items()}))
    return [e["seq"] for e in answer["events"]], answer["next"]


def test_the_newest_first_paged_back_with_before_and_followed_with_after(mixed):
    first, cursor = seqs(mixed, limit=15)
    assert first == list(range(40, 25, -1)) and cursor == 26
    second, cursor = seqs(mixed, limit=15, before=cursor)
    third, cursor = seqs(mixed, limit=15, before=cursor)
    assert second == list(range(25, 10, -1)) and third == list(range(10, 0, -1)) and cursor is None
    assert seqs(mixed, after=35) == ([36, 37, 38, 39, 40], 40)
    assert seqs(mixed, after=40) == ([], 40), "nothing new: follow on from the same place"
    assert seqs(mixed)[0] == list(range(40, 0, -1))[:50]


def test_filters_by_source_kind_category_and_wall_time(mixed):
    events = read_events(mixed, parse_query({"source": ["cam1"], "kind": ["line_crossing"], "category": ["person"]}))["events"]
    assert [e["i"] for e in events] == [i for i in range(39, -1, -1) if i % 2 and i % 4 and not i % 3]
    assert all(e["snapshot"] is False and e["source"] == "cam1" for e in events)
    assert seqs(mixed, since=1010, until=1013)[0] == [13, 12, 11]
    assert seqs(mixed, kind="counts,line_crossing", limit=3)[0] == [40, 39, 38]
    assert seqs(mixed, source="cam9")[0] == []


@pytest.mark.parametrize("params, line", [
    ({"limit": ["0"]}, "limit must be a whole number from 1 to 500; got '0'"),
    ({"limit": ["-5"]}, "limit must be a whole number"),
    ({"after": ["x"]}, "after must be a whole number"),
    ({"since": ["nan"]}, "since must be a time in Unix seconds"),
    ({"kind": ["car"]}, "unknown kind 'car'; known: source_state"),
    ({"colour": ["red"]}, "unknown parameter 'colour'"),
    ({"source": ["a", "b"]}, "source given 2 times"),
    ({"after": ["1"], "before": ["5"]}, "give after or before, not both"),
])
def test_a_bad_parameter_is_one_line(params, line):
    with pytest.raises(BadQuery) as caught:
        parse_query(params)
    assert line in str(caught.value) and "\n" not in str(caught.value)


def test_no_log_yet_is_no_events(tmp_path):
    assert read_events(tmp_path, parse_query({})) == {"events": [], "next": None}
    assert parse_query({"token": ["secret"]}).limit == 50, "the server's token is not a filter"
