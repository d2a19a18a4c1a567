"""Counter: unique objects, line crossings (direction, ties, once per track), zone entries, reset, memory.
Hand-made tracks, and the synthetic street's exact ground truth against a plain reference computed here."""
from __future__ import annotations

import collections
import itertools

import pytest

from streamer.frames import Counts, Event, Line, Segment, Zone
from streamer.inference.counting import Counter
from streamer.inputs.synthetic import CAR, PERSON, StreetScene

NAMES = {CAR: "car", PERSON: "person"}
NORTH = Line("north", (0, 100), (200, 100))  # horizontal, a -> b to the right: moving down on screen is "in"


def at(track_id: int | None, x: float, y: float, category: int = CAR) -> Segment:
    """A thing whose anchor (bottom-centre of its 10 x 20 box) is (x, y)."""
    return Segment(1, category, True, 0.9, 200, (x - 5, y - 20, x + 5, y), track_id)


def run(counter: Counter, frames: list[list[Segment]], fps: float = 10.0) -> list[Event]:
    """Feeds the frames (None: a reset instead); returns all events."""
    events = []
    for i, segments in enumerate(frames):
        if segments is None:
            counter.reset()
        else:
            events += counter.update(tuple(segments), i / fps)
    return events


def path(track_id: int | None, points: list[tuple[float, float]], category: int = CAR) -> list[list[Segment]]:
    return [[at(track_id, x, y, category)] for x, y in points]


# --------------------------------------------------------------------------------------------
# lines


def test_moving_down_crosses_in_and_up_out():
    counter = Counter([NORTH], [], NAMES)
    events = run(counter, path(1, [(50, 80), (50, 90), (50, 110), (50, 120)]))
    assert events == [Event("line", "north", 1, "car", "in", 0.2)]
    counter = Counter([NORTH], [], NAMES)
    assert run(counter, path(1, [(50, 120), (50, 110), (60, 90)])) == [Event("line", "north", 1, "car", "out", 0.2)]
    assert counter.counts().line_crossings == {("north", "car", "out"): 1}


def test_direction_follows_a_to_b():
    reversed_line = Line("south", (200, 100), (0, 100))
    assert [e.direction for e in run(Counter([reversed_line], [], NAMES), path(1, [(50, 90), (50, 110)]))] == ["out"]
    down = Line("down", (100, 0), (100, 200))  # looking down the screen, its right-hand side is x < 100
    assert [e.direction for e in run(Counter([down], [], NAMES), path(1, [(90, 50), (110, 50)]))] == ["out"]
    assert [e.direction for e in run(Counter([down], [], NAMES), path(2, [(110, 50), (90, 50)]))] == ["in"]


def test_jitter_counts_once_in_the_first_direction():
    counter = Counter([NORTH], [], NAMES)
    events = run(counter, path(7, [(50, 110), (50, 90), (50, 110), (50, 90), (50, 105), (50, 95)]))
    assert [(e.track_id, e.direction, e.pts_s) for e in events] == [(7, "out", 0.1)]
    assert counter.counts().to_dict()["lines"] == {"north": {"car": {"in": 0, "out": 1}}}


def test_touching_the_line_is_no_crossing():
    assert run(Counter([NORTH], [], NAMES), path(1, [(50, 90), (50, 100), (50, 100), (50, 90)])) == []
    # on the line it keeps the side it came from: the crossing is when it leaves on the other side
    assert [e.pts_s for e in run(Counter([NORTH], [], NAMES), path(1, [(50, 90), (50, 100), (50, 110)]))] == [0.2]
    # first seen on the line: no side yet, so leaving it is no crossing; coming back across is
    assert run(Counter([NORTH], [], NAMES), path(1, [(50, 100), (50, 110), (50, 100), (50, 120)])) == []
    events = run(Counter([NORTH], [], NAMES), path(1, [(50, 100), (50, 110), (50, 90)]))
    assert [(e.direction, e.pts_s) for e in events] == [("out", 0.2)]


def test_only_the_segment_a_b_counts():
    counter = Counter([NORTH], [], NAMES)
    assert run(counter, path(1, [(250, 80), (250, 120)])) == []  # straight down beside the end
    assert run(counter, path(2, [(190, 50), (260, 150)])) == []  # meets y = 100 at x = 225
    assert run(counter, path(3, [(-10, 90), (-1, 110)])) == []  # before the start
    assert [e.track_id for e in run(counter, path(4, [(150, 50), (250, 150)]))] == [4]  # meets it at b exactly
    assert [e.track_id for e in run(counter, path(5, [(0, 90), (0, 110)]))] == [5]  # at a exactly
    assert [e.track_id for e in run(counter, path(6, [(230, 60), (170, 140)]))] == [6]  # slanted, meets it at x = 200


def test_a_gap_in_a_track_still_crosses():
    counter = Counter([NORTH], [], NAMES)
    frames = path(1, [(50, 80)]) + [[]] * 5 + path(1, [(55, 130)])
    assert [e.pts_s for e in run(counter, frames)] == [0.6]


def test_untracked_things_and_stuff_are_ignored():
    counter = Counter([NORTH], [Zone("all", ((0, 0), (300, 0), (300, 300), (0, 300)))], NAMES)
    stuff = Segment(1000, 1, False, None, 5000, (0, 0, 200, 200), 99)  # a track id on stuff is ignored too
    frames = [[at(None, 50, 80), stuff], [at(None, 50, 120), stuff]]
    assert run(counter, frames) == []
    counts = counter.counts()
    assert counts.objects_total == {} and counts.visible == {} and counts.line_crossings == {} and counts.zone_entries == {}


def test_categories_are_counted_separately():
    counter = Counter([NORTH], [], {CAR: "car"})  # PERSON has no name: called by its id
    frames = [[at(1, 50, 90), at(2, 60, 90, PERSON), at(3, 70, 110)],
              [at(1, 50, 110), at(2, 60, 110, PERSON), at(3, 70, 90)]]
    events = run(counter, frames)
    got = {(e.track_id, e.category, e.direction) for e in events}
    assert got == {(1, "car", "in"), (2, str(PERSON), "in"), (3, "car", "out")}
    counts = counter.counts()
    assert counts.line_crossings == {("north", "car", "in"): 1, ("north", str(PERSON), "in"): 1, ("north", "car", "out"): 1}
    assert counts.objects_total == {"car": 2, str(PERSON): 1}


def test_reset_breaks_the_path_but_keeps_totals_and_counted_tracks():
    counter = Counter([NORTH], [], NAMES)
    assert run(counter, path(1, [(50, 90)]) + [None] + path(1, [(50, 110)])) == []  # no crossing across the reset
    assert counter.counts().objects_total == {"car": 1}  # the same track after a reset is no new object
    counter = Counter([NORTH], [], NAMES)
    assert run(counter, path(1, [(50, 90)]) + [None] + path(1, [(50, 100), (50, 110)])) == []  # its side is gone too
    counter = Counter([NORTH], [], NAMES)
    frames = path(1, [(50, 90), (50, 110)]) + [None] + path(1, [(50, 90), (50, 110)])
    assert [e.direction for e in run(counter, frames)] == ["in"]  # counted once, before the reset
    counter = Counter([NORTH], [], NAMES)
    frames = path(1, [(50, 90)]) + [None] + path(1, [(50, 110), (50, 90)])
    assert [(e.direction, e.pts_s) for e in run(counter, frames)] == [("out", 0.3)]  # after a reset, moves count again


# --------------------------------------------------------------------------------------------
# zones

SQUARE = Zone("square", ((100, 100), (200, 100), (200, 200), (100, 200)))


def test_zone_entered_once_even_after_leaving():
    counter = Counter([], [SQUARE], NAMES)
    events = run(counter, path(1, [(50, 150), (150, 150), (250, 150), (150, 150), (150, 160)]))
    assert events == [Event("zone", "square", 1, "car", None, 0.1)]
    assert counter.counts().zone_entries == {("square", "car"): 1}


def test_zone_first_seen_inside_counts_outside_never():
    counter = Counter([], [SQUARE], NAMES)
    assert run(counter, path(1, [(150, 150), (160, 150)])) == [Event("zone", "square", 1, "car", None, 0.0)]
    around = [(50, 50), (150, 50), (250, 50), (250, 150), (250, 250), (150, 250), (50, 250), (50, 150)]
    assert run(Counter([], [SQUARE], NAMES), path(2, around)) == []


def test_concave_zone():
    u_shape = Zone("u", ((0, 0), (30, 0), (30, 60), (70, 60), (70, 0), (100, 0), (100, 100), (0, 100)))
    counter = Counter([], [u_shape], NAMES)
    notch = [[at(1, 50, 10)], [at(1, 50, 30)], [at(1, 50, 59)]]
    assert run(counter, notch) == []
    frames = [[at(2, 15, 10), at(3, 85, 50), at(4, 50, 80), at(5, 50, 150), at(6, 50, 40)]]
    assert sorted(e.track_id for e in run(counter, frames)) == [2, 3, 4]


@pytest.mark.parametrize("points", [SQUARE.points, SQUARE.points[::-1]])
def test_zone_boundary_rule(points):
    counter = Counter([], [Zone("z", points)], NAMES)
    frames = [[at(1, 100, 150), at(2, 150, 100), at(3, 100, 100), at(4, 200, 150), at(5, 150, 200), at(6, 200, 200)]]
    assert sorted(e.track_id for e in run(counter, frames)) == [1, 2, 3]  # left and top edges inside, right and bottom not


def test_several_zones_and_lines_in_one_frame():
    left = Zone("left", ((0, 0), (100, 0), (100, 300), (0, 300)))
    counter = Counter([NORTH, Line("west", (60, 0), (60, 300))], [left, SQUARE], NAMES)
    events = run(counter, [[at(1, 50, 90)], [at(1, 150, 150)]])
    assert [(e.kind, e.name) for e in events] == [("zone", "left"), ("line", "north"), ("line", "west"), ("zone", "square")]


# --------------------------------------------------------------------------------------------
# totals, snapshot, JSON form, validation


def test_counts_objects_visible_and_json_form():
    counter = Counter([NORTH, Line("empty", (0, 0), (1, 0))], [SQUARE], NAMES)
    assert counter.counts().to_dict() == {"objects_total": {}, "visible": {}, "lines": {"north": {}, "empty": {}},
                                          "zones": {"square": {}}}
    run(counter, [[at(1, 50, 90), at(2, 150, 150, PERSON)], [at(1, 50, 110), at(3, 60, 10)], [at(3, 60, 20)]])
    counts = counter.counts()
    assert counts.objects_total == {"car": 2, "person": 1}
    assert counts.visible == {"car": 1, "person": 0}
    assert counts.to_dict() == {"objects_total": {"car": 2, "person": 1}, "visible": {"car": 1, "person": 0},
                                "lines": {"north": {"car": {"in": 1, "out": 0}}, "empty": {}},
                                "zones": {"square": {"person": 1}}}
    counter.update((at(1, 50, 90), at(2, 150, 150, PERSON)), 1.0)
    assert counts.objects_total == {"car": 2, "person": 1} and counts.visible == {"car": 1, "person": 0}  # a snapshot
    assert counter.counts().visible == {"car": 1, "person": 1}
    assert isinstance(counts, Counts)


def test_invalid_configuration():
    with pytest.raises(ValueError):
        Line("dot", (1, 1), (1, 1))
    with pytest.raises(ValueError):
        Zone("flat", ((0, 0), (1, 1)))
    with pytest.raises(ValueError):
        Counter([NORTH, NORTH], [], NAMES)
    with pytest.raises(ValueError):
        Counter([], [SQUARE, SQUARE], NAMES)
    with pytest.raises(ValueError):
        Counter([], [], NAMES, forget_after_s=0)
    assert Line("l", [0, 1], [2, 3]) == Line("l", (0.0, 1.0), (2.0, 3.0))  # as read from a config file
    assert Zone("z", [[0, 0], [1, 0], [0, 1]]).points == ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0))
    assert Counter([], [], NAMES).update((at(1, 5, 5),), 0.0) == []  # nothing configured: objects are still counted


# --------------------------------------------------------------------------------------------
# memory


def test_state_stays_bounded_over_a_long_stream():
    counter = Counter([NORTH], [SQUARE], NAMES, forget_after_s=5.0)
    fps, new_every = 10.0, 20  # ten new tracks every 2 s, each living 2 s: 10 000 tracks over 33 min of stream
    sizes = []
    for i in range(20_000):
        base = (i // new_every) * 10
        step = i % new_every
        counter.update(tuple(at(base + j, 20 * j, 50 + 5 * step) for j in range(10)), i / fps)
        sizes.append((len(counter._rows), len(counter._used)))
    assert counter.counts().objects_total == {"car": 10_000}
    assert counter.counts().line_crossings == {("north", "car", "in"): 10_000}
    assert max(rows for rows, _ in sizes) <= 10 * (5 / 2 + 2)  # tracks seen within the last 5 s (and a bit)
    assert sizes[-1][1] == sizes[1000][1] <= 128  # the arrays stopped growing early


def test_forgotten_track_counts_as_new_when_it_comes_back():
    counter = Counter([NORTH], [], NAMES, forget_after_s=5.0)
    counter.update((at(1, 50, 90),), 0.0)
    counter.update((at(1, 50, 110),), 4.0)  # within forget_after_s: a continuation
    assert counter.counts().line_crossings == {("north", "car", "in"): 1}
    counter.update((at(1, 50, 90),), 10.0)  # forgotten, so a new object without a previous position
    counter.update((at(1, 50, 110),), 10.1)
    assert counter.counts().objects_total == {"car": 2}
    assert counter.counts().line_crossings == {("north", "car", "in"): 2}


# --------------------------------------------------------------------------------------------
# the synthetic street's exact ground truth

SIZE, FPS, FRAMES = (320, 180), 15.0, 300
# (line, axis the crossing is along, where, extent on the other axis, direction of a move towards + on that axis);
# no anchor (integer or half-integer pixels) can lie on one of these
GT_LINES = (
    (Line("across", (0, 120.5), (320, 120.5)), 1, 120.5, (0, 320), "in"),  # cars driving down the screen: "in"
    (Line("middle", (160.25, 0), (160.25, 180)), 0, 160.25, (0, 180), "out"),  # moving right: "out"
    (Line("short", (190.7, 100.5), (150.3, 100.5)), 1, 100.5, (150.3, 190.7), "out"),  # b left of a: down is "out"
)
GT_ZONES = (
    (Zone("box", ((100.5, 90.5), (220.5, 90.5), (220.5, 140.5), (100.5, 140.5))), (100.5, 220.5, 90.5, 140.5)),
)


@pytest.fixture(scope="module", params=[2, 9])
def street(request) -> list[tuple[Segment, ...]]:
    scene = StreetScene(request.param, size=SIZE, fps=FPS)
    return [scene.render(i).segments for i in range(FRAMES)]


def anchors(frames) -> dict[tuple[int, str], list[tuple[int, float, float]]]:
    """(track id, category) -> [(frame index, x, y)] over the frames it appears in."""
    tracks = collections.defaultdict(list)
    for i, segments in enumerate(frames):
        for s in segments:
            if s.isthing:
                x0, _, x1, y1 = s.box
                tracks[(s.track_id, NAMES[s.category_id])].append((i, (x0 + x1) / 2, y1))
    return tracks


def reference_crossings(tracks, axis: int, value: float, extent: tuple[float, float], plus: str) -> set[tuple]:
    """Per track, its first move between consecutive appearances that takes the anchor's coordinate `axis` across
    `value` where the other coordinate, interpolated at the crossing, is within `extent`."""
    out = set()
    for (track_id, category), seq in tracks.items():
        for (_, *p), (i, *q) in itertools.pairwise(seq):
            if (p[axis] < value) != (q[axis] < value):
                other = p[1 - axis] + (value - p[axis]) / (q[axis] - p[axis]) * (q[1 - axis] - p[1 - axis])
                if extent[0] <= other <= extent[1]:
                    direction = plus if q[axis] > value else {"in": "out", "out": "in"}[plus]
                    out.add((track_id, category, direction, i))
                    break
    return out


def test_counts_match_the_street_ground_truth(street):
    tracks = anchors(street)
    counter = Counter([spec[0] for spec in GT_LINES], [spec[0] for spec in GT_ZONES], NAMES)
    events = []
    for i, segments in enumerate(street):
        events += counter.update(segments, i / FPS)
        visible = collections.Counter(NAMES[s.category_id] for s in segments if s.isthing)
        assert {k: v for k, v in counter.counts().visible.items() if v} == dict(visible)
    for line, axis, value, extent, plus in GT_LINES:
        expected = reference_crossings(tracks, axis, value, extent, plus)
        got = {(e.track_id, e.category, e.direction, round(e.pts_s * FPS)) for e in events if e.name == line.name}
        assert got == expected, line.name
    across = reference_crossings(tracks, *GT_LINES[0][1:])
    assert {d for _, category, d, _ in across if category == "car"} == {"in", "out"}  # cars both ways: not vacuous
    assert any(category == "person" for spec in GT_LINES for _, category, _, _ in reference_crossings(tracks, *spec[1:]))
    for zone, (x0, x1, y0, y1) in GT_ZONES:
        expected = set()
        for (track_id, category), seq in tracks.items():
            first = next((i for i, x, y in seq if x0 < x < x1 and y0 < y < y1), None)
            if first is not None:
                expected.add((track_id, category, first))
        assert len(expected) > 0
        assert {(e.track_id, e.category, round(e.pts_s * FPS)) for e in events if e.name == zone.name} == expected
    totals = collections.Counter(category for _, category in tracks)
    assert counter.counts().objects_total == dict(totals)
    counts = counter.counts()
    assert sum(counts.line_crossings.values()) + sum(counts.zone_entries.values()) == len(events)
