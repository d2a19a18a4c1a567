"""Time in zones (streamer.analytics.zone_time) on hand-made tracks, and loitering events."""
from __future__ import annotations

import numpy as np
import pytest

from streamer.analytics.zone_time import ZoneTimes, hold_times
from streamer.analytics.zones import ZoneTest
from streamer.frames import Segment, Zone
from streamer.outputs.events.kinds import Events, FrameFacts, Seen

SQUARE = Zone("square", ((0, 0), (10, 0), (10, 10), (0, 10)))
BAND = Zone("band", ((0, 5), (100, 5), (100, 8), (0, 8)), loitering_s=0.3)


def thing(track_id: int, x: float, y: float) -> Segment:
    """A 2 x 2 thing whose ground point (bottom centre of its box) is (x, y)."""
    return Segment(1000 + track_id, 1, True, 0.9, 4, (x - 1, y - 2, x + 1, y), track_id)


def test_enter_exit_reenter_adds_both_visits_and_reports_each_end():
    times = ZoneTimes([SQUARE], {1: "car"})
    path = [(0.0, 20), (0.1, 5), (0.2, 5), (0.3, 20), (0.4, 5), (0.5, 5), (0.6, 5), (0.7, 20)]  # (t, x) at y = 5
    ended, seen = [], {}
    for t, x in path:
        visits = times.update([thing(7, x, 5)], t)
        ended += visits.ended
        seen[t] = dict(visits.of(7))
    assert seen[0.0] == {}  # never inside yet: no entry for the zone
    assert seen[0.2] == {"square": pytest.approx(0.1)}  # inside at 0.1 and 0.2: 0.1 s so far
    assert [(zone, cat) for zone, cat, _ in ended] == [("square", "car"), ("square", "car")]
    assert [s for _, _, s in ended] == pytest.approx([0.2, 0.3])  # first frame out - first frame in
    assert seen[0.7] == {"square": pytest.approx(0.5)}


def test_a_gap_holds_the_state_before_it():
    times = ZoneTimes([SQUARE], {})
    for t in (0.0, 0.1, 1.0):  # missed between 0.1 and 1.0 while inside
        visits = times.update([thing(3, 5, 5)], t)
    assert visits.of(3)["square"] == pytest.approx(1.0)
    visits = times.update([thing(3, 50, 5)], 2.0)  # gone out while unseen: the whole gap held
    assert visits.of(3)["square"] == pytest.approx(2.0) and visits.ended[0][2] == pytest.approx(2.0)


def test_the_incremental_rule_equals_the_reference_on_random_tracks():
    rng = np.random.default_rng(0)
    zones = [SQUARE, Zone("tri", ((0, 0), (20, 0), (0, 20)))]
    times = ZoneTimes(zones, {})
    t = np.cumsum(rng.uniform(0.01, 0.2, 60))
    xy = rng.uniform(-5, 25, (60, 2))
    for k in range(60):
        out = times.update([thing(1, *xy[k])], float(t[k]))
    expected = hold_times(t, ZoneTest(zones)(xy))
    assert [out.of(1).get(z.name, 0.0) for z in zones] == pytest.approx(expected.tolist())


def test_boundaries_follow_the_counters_half_open_rule():
    times = ZoneTimes([SQUARE], {})
    times.update([thing(1, 0, 0), thing(2, 10, 5)], 0.0)  # top-left corner inside, right edge outside
    visits = times.update([thing(1, 0, 0), thing(2, 10, 5)], 0.5)
    assert visits.of(1) == {"square": 0.5} and visits.of(2) == {}


def test_forgotten_and_reset_tracks_end_their_visits():
    times = ZoneTimes([SQUARE], {1: "car"}, forget_after_s=1.0)
    times.update([thing(1, 5, 5)], 0.0)
    times.update([thing(1, 5, 5)], 0.2)
    visits = times.update([], 5.0)
    assert visits.ended == (("square", "car", pytest.approx(0.2)),)
    times.update([thing(2, 5, 5)], 5.0)
    times.update([thing(2, 5, 5)], 5.4)
    assert times.reset() == [("square", "car", pytest.approx(0.4))]


def test_untracked_things_and_stuff_have_no_time():
    times = ZoneTimes([SQUARE], {})
    stuff = Segment(1000, 2, False, None, 100, (0, 0, 10, 10))
    untracked = Segment(1001, 1, True, 0.5, 4, (4, 3, 6, 5))
    assert times.update([stuff, untracked], 0.0).tracks == ()


def test_hold_times_refuses_mismatched_shapes():
    with pytest.raises(ValueError):
        hold_times([0.0, 1.0], np.zeros((3, 1), bool))
    assert hold_times([0.0], np.ones((1, 2), bool)).tolist() == [0.0, 0.0]


def _loitering(events: list) -> list[tuple[float, dict]]:
    return [(t, fields) for kind, t, _, fields in events if kind == "loitering"]


def test_loitering_fires_once_per_visit_when_the_threshold_is_reached():
    events = Events([BAND, SQUARE], track_end_s=5.0)
    out = []
    for i, (t, y) in enumerate([(0.0, 6), (0.1, 6), (0.2, 6), (0.3, 6), (0.4, 6), (0.5, 20), (0.6, 6), (0.8, 6), (1.0, 6)]):
        out += events.frame(FrameFacts(i, t, 100.0 + t, 0, (Seen(4, "person", 0.9, (50.0, y)),), (), None))
    fired = _loitering(out)
    assert [t for t, _ in fired] == pytest.approx([0.3, 1.0])  # 0.3 s into the first visit, then 0.4 s into the second (>= 0.3)
    assert fired[0][1] == {"zone": "band", "category": "person", "track_id": 4, "position": [50.0, 6.0], "inside_s": pytest.approx(0.3)}
    assert all(f["zone"] == "band" for _, f in fired)  # the square has no threshold


def test_loitering_comes_after_the_entry_in_its_frame():
    events = Events([Zone("now", ((0, 0), (10, 0), (10, 10), (0, 10)), loitering_s=0.0)], track_end_s=5.0)
    out = events.frame(FrameFacts(0, 0.0, 1.0, 0, (Seen(1, "car", 0.9, (5.0, 5.0)),), (), None))
    assert [kind for kind, *_ in out] == ["source_state", "track_start", "zone_entry", "loitering"]


def test_a_zone_refuses_a_negative_threshold():
    with pytest.raises(ValueError, match="loitering_s"):
        Zone("z", ((0, 0), (1, 0), (0, 1)), loitering_s=-1.0)
