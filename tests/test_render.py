"""Renderer.overlay and its helpers as pure functions: hand-made panoptic maps, exact pixel checks;
label placement on a crowded frame; label size and stuff tint against the frame size and the image."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from helpers import mask_box

from streamer.boxes import of_xywh
from streamer.config import Render
from streamer.frames import Category, Counts, Line, Segment, Zone
from streamer.outputs.render import (
    CONTOUR_COLOR,
    COUNT_COLOR,
    Renderer,
    draw_counting,
    instance_boundaries,
    label_patch,
    label_style,
    label_text,
    outline_colors,
    place_labels,
)

DIVISOR = 1000
CATEGORIES = (
    Category(1, "road", False, (128, 64, 128)),
    Category(2, "sky", False, (70, 130, 180)),
    Category(3, "car", True, (0, 0, 142)),
    Category(4, "person", True, (220, 20, 60)),
)
ROAD, SKY, CAR, PERSON = 1000, 2000, 3000, 4000
WIDTH, HEIGHT = 240, 160


def segments_of(panoptic: np.ndarray) -> tuple[Segment, ...]:
    out = []
    for value in np.unique(panoptic):
        if value == 0:
            continue
        mask = panoptic == value
        category, instance = divmod(int(value), DIVISOR)
        out.append(Segment(int(value), category, instance > 0, 0.87 if instance else None, int(mask.sum()), mask_box(mask)))
    return tuple(out)


def scene() -> tuple[np.ndarray, np.ndarray]:
    """A textured frame and a map with road, sky, a void band, two touching cars and a person at the edge."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    panoptic = np.full((HEIGHT, WIDTH), ROAD, np.int32)
    panoptic[:40] = SKY
    panoptic[40:50] = 0  # void band
    panoptic[120:, :60] = SKY  # a second sky region, far from every thing
    panoptic[60:80, 20:50] = CAR + 1
    panoptic[60:80, 50:70] = CAR + 2  # touches car 1
    panoptic[45:60, 30:40] = CAR + 1  # reaches into the void band
    panoptic[90:160, 200:240] = PERSON + 1  # touches the right and bottom borders
    return image, panoptic


def renderer(alpha: float = 0.5, contours: bool = True, labels: bool = True, stuff_alpha: float | None = None) -> Renderer:
    """A renderer for CATEGORIES; stuff at `alpha` too unless `stuff_alpha` says otherwise."""
    return Renderer(CATEGORIES, DIVISOR, alpha, contours, labels, stuff_alpha=alpha if stuff_alpha is None else stuff_alpha)


def expected_boundaries(panoptic: np.ndarray, things: bool = True) -> np.ndarray:
    """Thing pixels (or with things=False: stuff pixels) with a 4-neighbour (inside the image) of
    another value, computed pixel by pixel."""
    height, width = panoptic.shape
    out = np.zeros(panoptic.shape, bool)
    for y, x in itertools.product(range(height), range(width)):
        if panoptic[y, x] == 0 or (panoptic[y, x] % DIVISOR > 0) != things:
            continue
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            ny, nx = y + dy, x + dx
            if 0 <= ny < height and 0 <= nx < width and panoptic[ny, nx] != panoptic[y, x]:
                out[y, x] = True
    return out


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_void_pixels_keep_the_original_image(alpha):
    image, panoptic = scene()
    out = renderer(alpha, contours=True, labels=False).overlay(image, panoptic, segments_of(panoptic))
    void = panoptic == 0
    assert void.sum() > 1000
    assert np.array_equal(out[void], image[void])


def test_overlay_does_not_modify_its_input():
    image, panoptic = scene()
    image_before, panoptic_before = image.copy(), panoptic.copy()
    renderer(0.5).overlay(image, panoptic, segments_of(panoptic))
    assert np.array_equal(image, image_before) and np.array_equal(panoptic, panoptic_before)


def test_alpha_zero_without_contours_and_labels_is_the_image():
    image, panoptic = scene()
    out = renderer(0.0, contours=False, labels=False).overlay(image, panoptic, segments_of(panoptic))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out, image)


def test_alpha_zero_with_contours_changes_only_the_contours():
    """Things are outlined in white, stuff regions in their colour halfway to white; nothing else changes."""
    image, panoptic = scene()
    out = renderer(0.0, contours=True, labels=False).overlay(image, panoptic, segments_of(panoptic))
    changed = (out != image).any(axis=-1)
    thing_edges, stuff_edges = expected_boundaries(panoptic), expected_boundaries(panoptic, things=False)
    assert not (changed & ~thing_edges & ~stuff_edges).any(), "pixels off the segment boundaries changed"
    assert (out[thing_edges] == CONTOUR_COLOR).all()
    light = outline_colors(renderer().colorize(panoptic))
    assert stuff_edges.sum() > 300 and np.array_equal(out[stuff_edges], light[stuff_edges])
    assert stuff_edges[39, 100] and stuff_edges[50, 100] and stuff_edges[119, 10] and not stuff_edges[100, 100]
    assert tuple(light[39, 100]) == (180 // 2 + 128, 130 // 2 + 128, 70 // 2 + 128)  # sky (70, 130, 180) lightened, BGR


def test_alpha_one_paints_the_palette_colours():
    image, panoptic = scene()
    segments = segments_of(panoptic)
    draw = renderer(1.0, contours=False, labels=False)
    out = draw.overlay(image, panoptic, segments)
    # stuff: exactly the category colour, RGB -> BGR
    for category in CATEGORIES:
        if not category.isthing:
            pixels = out[panoptic == category.id * DIVISOR]
            assert len(pixels) and (pixels == category.color[::-1]).all(), category.name
    # things: one solid, visible colour per instance; the image does not show through
    other = draw.overlay(255 - image, panoptic, segments)
    colours = {}
    for value in (CAR + 1, CAR + 2, PERSON + 1):
        pixels = out[panoptic == value]
        assert (pixels == pixels[0]).all(), f"instance {value} is not one colour"
        assert pixels[0].any(), f"instance {value} is black (the void colour)"
        assert np.array_equal(other[panoptic == value], pixels)
        colours[value] = tuple(int(c) for c in pixels[0])
    assert len(set(colours.values())) == 3
    stuff_colours = {tuple(c.color[::-1]) for c in CATEGORIES if not c.isthing}
    assert not stuff_colours & set(colours.values())


def test_half_alpha_is_the_average_of_image_and_colour():
    image, panoptic = scene()
    segments = segments_of(panoptic)
    plain = renderer(1.0, contours=False, labels=False).overlay(image, panoptic, segments)
    half = renderer(0.5, contours=False, labels=False).overlay(image, panoptic, segments)
    labelled = panoptic > 0
    average = (image[labelled].astype(int) + plain[labelled].astype(int)) / 2
    assert np.abs(half[labelled] - average).max() <= 1


def instance_colour(draw: Renderer, category: int, instance: int, size=(12, 16), at=(3, 5)) -> tuple[int, ...]:
    """Colour an instance gets at alpha 1, drawn as a small box in an otherwise void map."""
    panoptic = np.zeros(size, np.int32)
    panoptic[at[0]:at[0] + 4, at[1]:at[1] + 5] = category * DIVISOR + instance
    image = np.full((*size, 3), 77, np.uint8)
    out = draw.overlay(image, panoptic, ())
    return tuple(int(c) for c in out[at[0] + 1, at[1] + 1])


def test_the_same_instance_keeps_its_colour():
    first = renderer(1.0, contours=False, labels=False)
    second = renderer(1.0, contours=False, labels=False)
    for instance in (1, 2, 7, 42):
        colours = {
            instance_colour(first, 3, instance),
            instance_colour(first, 3, instance, size=(30, 40), at=(20, 30)),  # another frame, another place
            instance_colour(second, 3, instance),  # another renderer
        }
        assert len(colours) == 1, f"car {instance} changes colour: {colours}"


@pytest.mark.parametrize("category", [3, 4])
def test_instances_of_one_category_get_clearly_different_colours(category):
    draw = renderer(1.0, contours=False, labels=False)
    colours = np.array([instance_colour(draw, category, instance) for instance in range(1, 51)], float)
    distance = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    assert distance.min() >= 15, "two of ids 1..50 share (almost) the same colour"
    assert distance[:10, :10].min() >= 30, "ids 1..10 (the usual crowd of one frame) are hard to tell apart"
    assert np.diagonal(distance, 1).min() >= 60, "consecutive ids are hard to tell apart"


def test_instance_boundaries_on_a_hand_made_map():
    _, panoptic = scene()
    edges = instance_boundaries(panoptic, DIVISOR)
    assert edges.dtype == bool and edges.shape == panoptic.shape
    assert np.array_equal(edges, expected_boundaries(panoptic))
    # spot checks: the seam between the two cars is drawn on both sides, stuff and the image border are not
    assert edges[70, 49] and edges[70, 50]
    assert not edges[70, 30]  # inside car 1
    assert not edges[100, 100]  # road
    assert not edges[100, 239] and not edges[159, 220]  # person pixels on the image border only
    assert edges[90, 220] and edges[100, 200]


def test_tiny_map_boundaries():
    panoptic = np.array([
        [0, 0, 0, 0, 0],
        [0, 3001, 3001, 1000, 0],
        [0, 3001, 3001, 3002, 0],
        [0, 3001, 3001, 3002, 0],
    ], np.int32)
    expected = np.array([
        [0, 0, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 1, 1, 1, 0],
    ], bool)
    assert np.array_equal(instance_boundaries(panoptic, DIVISOR), expected)


def test_contours_are_drawn_exactly_on_segment_boundaries():
    image, panoptic = scene()
    segments = segments_of(panoptic)
    with_contours = renderer(0.6, contours=True, labels=False, stuff_alpha=0.4).overlay(image, panoptic, segments)
    without = renderer(0.6, contours=False, labels=False, stuff_alpha=0.4).overlay(image, panoptic, segments)
    edges = expected_boundaries(panoptic) | expected_boundaries(panoptic, things=False)
    changed = (with_contours != without).any(axis=-1)
    assert not (changed & ~edges).any()
    assert (with_contours[expected_boundaries(panoptic)] == CONTOUR_COLOR).all()
    assert changed.sum() >= 0.9 * edges.sum()  # (a blended pixel may already have the outline's colour)


NAMES = {c.id: c for c in CATEGORIES}


def placed(segments: tuple[Segment, ...], width: int, height: int) -> tuple[list[Segment], list[tuple[int, tuple[int, ...]]]]:
    """(things, placements): the label placement the renderer makes on a width x height frame."""
    style = label_style(width, height)
    things = [s for s in segments if s.isthing]
    sizes = [label_patch(label_text(s, NAMES), style)[0].shape[::-1] for s in things]
    return things, place_labels(things, sizes, (width, height), style.min_area, style.gap)


def label_pixels(image: np.ndarray, panoptic: np.ndarray, segments: tuple[Segment, ...]) -> np.ndarray:
    """H x W bool: the pixels the labels change (the overlay with labels against the one without)."""
    on = renderer(0.5, contours=True, labels=True).overlay(image, panoptic, segments)
    off = renderer(0.5, contours=True, labels=False).overlay(image, panoptic, segments)
    return (on != off).any(axis=-1)


def inside(rects, shape: tuple[int, int]) -> np.ndarray:
    covered = np.zeros(shape, bool)
    for x0, y0, x1, y1 in rects:
        covered[y0:y1, x0:x1] = True
    return covered


def test_labels_are_drawn_inside_their_placed_rectangles_and_only_for_things():
    image, panoptic = scene()
    segments = segments_of(panoptic)
    things, placements = placed(segments, WIDTH, HEIGHT)
    assert sorted(i for i, _ in placements) == [0, 1, 2], "every thing of the scene should get its label"
    changed = label_pixels(image, panoptic, segments)
    rects = [rect for _, rect in placements]
    assert not (changed & ~inside(rects, panoptic.shape)).any(), "a label drew outside its rectangle"
    for x0, y0, x1, y1 in rects:
        assert changed[y0:y1, x0:x1].sum() > 0.2 * (x1 - x0) * (y1 - y0), "a placed label was not drawn"
    stuff = tuple(s for s in segments if not s.isthing)
    assert len(stuff) == 2 and not label_pixels(image, panoptic, stuff).any(), "stuff got a label"


def test_label_positions_above_inside_below():
    frame = (200, 100)
    size = [(40, 10)]

    def where(bbox, others=()):  # boxes written as x, y, width, height
        segment = Segment(1, 3, True, 0.5, 400, of_xywh(bbox))
        blockers = [Segment(2 + i, 3, True, 0.9, 400, of_xywh(b)) for i, b in enumerate(others)]
        result = dict(place_labels([*blockers, segment], size * (len(blockers) + 1), frame, 1, 2))
        return result.get(len(blockers))

    assert where((50, 40, 30, 20)) == (50, 28, 90, 38)  # above, `gap` 2 over the box
    assert where((50, 5, 30, 20)) == (50, 7, 90, 17)  # no room above: inside the box's top
    assert where((50, 40, 30, 20), others=[(50, 40, 30, 20)]) == (50, 42, 90, 52)  # a better one is above: inside
    assert where((50, 40, 30, 20), others=[(50, 40, 30, 20)] * 2) == (50, 62, 90, 72)  # ... and inside: below
    assert where((50, 40, 30, 20), others=[(50, 40, 30, 20)] * 3) is None  # nowhere left: no label
    assert where((50, 40, 30, 55), others=[(50, 40, 30, 55)] * 2) is None  # below would leave the frame
    assert where((180, 40, 20, 20)) == (160, 28, 200, 38)  # pushed left to stay in the frame
    assert where((-5, 40, 20, 20))[0] == 0


def crowd(width: int, height: int, count: int, seed: int) -> tuple[np.ndarray, tuple[Segment, ...]]:
    """A street-like map crowded towards a vanishing point: `count` cars and people, the nearer the
    point the smaller (far ones drawn first, near ones over them), each with a random score."""
    rng = np.random.default_rng(seed)
    panoptic = np.full((height, width), ROAD, np.int32)
    panoptic[: int(0.45 * height)] = SKY
    for index, depth in enumerate(np.sort(rng.uniform(0.0, 1.0, count) ** 2), 1):  # most of them far away
        w = max(2, int(depth * rng.uniform(0.08, 0.2) * width))
        h = max(3, int(depth * rng.uniform(0.1, 0.3) * height))
        x = int(width / 2 + depth * rng.uniform(-0.5, 0.5) * width - w / 2)
        y = int(0.45 * height + depth * rng.uniform(0.0, 0.4) * height)
        panoptic[max(y, 0):y + h, max(x, 0):x + w] = rng.choice([CAR, PERSON]) + index
    scores = {}
    for value in np.unique(panoptic):
        scores[int(value)] = round(float(rng.uniform(0.5, 1.0)), 4)
    segments = tuple(Segment(s.id, s.category_id, s.isthing, scores[s.id] if s.isthing else None, s.area, s.box)
                     for s in segments_of(panoptic))
    return panoptic, segments


def check_placement(things: list[Segment], placements, width: int, height: int) -> None:
    style = label_style(width, height)
    rects = [rect for _, rect in placements]
    for a, b in itertools.combinations(rects, 2):
        assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), f"labels {a} and {b} overlap"
    for x0, y0, x1, y1 in rects:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, f"label {(x0, y0, x1, y1)} leaves the frame"
    labelled = [things[i] for i, _ in placements]
    assert all(s.area >= style.min_area for s in labelled), "a tiny object got a label"
    eligible = sorted((s for s in things if s.area >= style.min_area), key=lambda s: (s.score, s.area), reverse=True)
    assert eligible and labelled[0] == eligible[0], "the most confident object did not get its label first"
    scores = [s.score for s in labelled]
    assert scores == sorted(scores, reverse=True), "labels not placed most confident first"


@pytest.mark.parametrize("width, height", [(640, 360), (1920, 1080)])
def test_a_crowded_frame_gets_labels_that_never_overlap(width, height):
    panoptic, segments = crowd(width, height, 70, seed=1)
    things, placements = placed(segments, width, height)
    style = label_style(width, height)
    check_placement(things, placements, width, height)
    tiny = [s for s in things if s.area < style.min_area]
    eligible = [s for s in things if s.area >= style.min_area]
    assert len(tiny) >= 10 and len(eligible) >= 20 and len(things) >= 50, "the crowd is not crowded"
    assert 5 <= len(placements) < len(eligible), "the crowd should leave some labels without room"
    # the drawn frame: labels only inside those rectangles, so never on top of each other
    image = np.full((height, width, 3), 100, np.uint8)
    changed = label_pixels(image, panoptic, segments)
    assert not (changed & ~inside([rect for _, rect in placements], panoptic.shape)).any()


@pytest.mark.parametrize("seed", range(40))
def test_placement_rules_hold_on_random_boxes(seed):
    rng = np.random.default_rng(seed)
    width, height = 320, 180
    things = []
    for index in range(int(rng.integers(1, 60))):
        w, h = (int(v) for v in rng.integers(1, 80, 2))
        x, y = int(rng.integers(-20, width)), int(rng.integers(-20, height))
        score = None if rng.random() < 0.1 else float(rng.uniform(0.3, 1.0))
        things.append(Segment(CAR + index + 1, 3, True, score, w * h, (x, y, w, h)))
    sizes = [(int(rng.integers(20, 90)), int(rng.integers(8, 20))) for _ in things]
    placements = place_labels(things, sizes, (width, height), 100, 2)
    rects = [rect for _, rect in placements]
    assert [(r[2] - r[0], r[3] - r[1]) for r in rects] == [sizes[i] for i, _ in placements]
    for a, b in itertools.combinations(rects, 2):
        assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])
    assert all(0 <= r[0] and 0 <= r[1] and r[2] <= width and r[3] <= height for r in rects)
    assert all(things[i].area >= 100 for i, _ in placements)
    confidence = [(1.0 if things[i].score is None else things[i].score, things[i].area) for i, _ in placements]
    assert confidence == sorted(confidence, reverse=True)
    best = max((s for s in things if s.area >= 100), key=lambda s: (1.0 if s.score is None else s.score, s.area), default=None)
    if best is not None and sizes[things.index(best)][0] <= width:
        assert placements[0][0] == things.index(best)


def test_tiny_objects_get_no_label():
    for width, height in ((640, 360), (1920, 1080)):
        side = round(min(width, height) / 36)  # MIN_LABEL_SIDE: a square this side is just big enough
        for square, expected in ((side - 1, False), (side, True)):
            panoptic = np.zeros((height, width), np.int32)
            panoptic[200:200 + square, 300:300 + square] = CAR + 1
            segment = Segment(CAR + 1, 3, True, 0.99, square * square, (300, 200, square, square))
            image = np.full((height, width, 3), 100, np.uint8)
            assert label_pixels(image, panoptic, (segment,)).any() == expected, (width, height, square)


def label_height(width: int, height: int) -> int:
    """Rows the label of one big car covers on a width x height frame."""
    panoptic = np.zeros((height, width), np.int32)
    box = (width // 4, height // 3, width // 4, height // 3)
    panoptic[box[1]:box[1] + box[3], box[0]:box[0] + box[2]] = CAR + 1
    changed = label_pixels(np.full((height, width, 3), 100, np.uint8), panoptic, (Segment(CAR + 1, 3, True, 0.87, box[2] * box[3], box),))
    return int(changed.any(axis=1).sum())


def test_labels_scale_with_the_frame():
    small, full_hd = label_height(640, 360), label_height(1920, 1080)
    assert small >= 14, "a label at 640x360 should be readable (the old 0.4 scale gave about 12 rows)"
    assert 2.5 <= full_hd / small <= 3.5, f"1920x1080 label {full_hd} rows against {small} at 640x360"
    assert label_height(160, 96) >= 12, "small frames keep a legible floor"
    assert label_height(1080, 1920) == full_hd, "sized by the shorter side"
    assert label_style(1920, 1080).halo > label_style(640, 360).halo  # the black outline grows too


def test_stuff_is_clearly_tinted_and_things_more_strongly():
    defaults = Render()
    assert defaults.alpha >= defaults.stuff_alpha + 0.1, "things should be drawn more strongly than stuff"
    draw = Renderer(CATEGORIES, DIVISOR, defaults.alpha, True, False, stuff_alpha=defaults.stuff_alpha)
    image, panoptic = scene()
    out = draw.overlay(image, panoptic, ())
    interior = ~(expected_boundaries(panoptic) | expected_boundaries(panoptic, things=False))
    for value in (ROAD, SKY):
        pixels = (panoptic == value) & interior
        assert np.abs(out[pixels].astype(int) - image[pixels]).mean() >= 30, f"stuff {value} is barely tinted"
    # a pixel moves towards its palette colour by alpha for things, by stuff_alpha for stuff
    grey = np.full_like(image, 30)
    out = draw.overlay(grey, panoptic, ())
    colors = draw.colorize(panoptic).astype(float)
    for value, alpha in ((ROAD, defaults.stuff_alpha), (CAR + 1, defaults.alpha)):
        y, x = np.argwhere((panoptic == value) & interior)[0]
        far = np.abs(colors[y, x] - 30) >= 50  # channels where rounding hardly shows
        moved = (out[y, x].astype(float) - 30)[far] / (colors[y, x] - 30)[far]
        assert far.any() and np.allclose(moved, alpha, atol=0.02), (value, moved)
    # a region painted in its own category colour shows no tint; its outline still marks it, clearly
    same = draw.colorize(panoptic)
    out = draw.overlay(same, panoptic, ())
    stuff_edges = expected_boundaries(panoptic, things=False)
    assert np.array_equal(out[interior & (panoptic > 0) & (panoptic % DIVISOR == 0)], same[interior & (panoptic > 0) & (panoptic % DIVISOR == 0)])
    assert (np.abs(out[stuff_edges].astype(int) - same[stuff_edges]).max(axis=-1) >= 35).all()


def test_labels_for_things_without_score_and_at_the_top_edge():
    image = np.full((60, 120, 3), 90, np.uint8)
    panoptic = np.zeros((60, 120), np.int32)
    panoptic[0:20, 10:40] = CAR + 1
    segment = Segment(CAR + 1, 3, True, None, 600, (10, 0, 30, 20))
    on = renderer(0.0, contours=False, labels=True).overlay(image, panoptic, (segment,))
    changed = (on != image).any(axis=-1)
    assert changed.sum() > 20, "a thing at the top edge should still get a readable label"
    assert not changed[30:].any()
    assert label_text(segment, NAMES) == "car" and label_text(Segment(1, 3, True, 0.866, 1, (0, 0, 1, 1)), NAMES) == "car 0.87"


# Opacities for which the host and the device round every pixel alike: 0, 0.5 and 1 blend exactly (a tie
# k + 0.5 is exact, and both round it to even), 0.4 and 0.6 give fifths, never near a tie.
EXACT = {0.0, 0.4, 0.5, 0.6, 1.0}


@pytest.mark.parametrize("alpha, stuff_alpha, contours", [
    (0.6, 0.5, True),  # the defaults
    (0.5, 0.5, True), (0.6, 0.4, True), (1.0, 0.0, True), (0.3, 0.77, False), (0.77, 0.3, True),
])
def test_the_device_overlay_draws_what_the_host_draws(alpha, stuff_alpha, contours):
    """DeviceOverlay is the GPU path; its tensor code runs on the CPU here. It gives the host's frame
    (labels aside: the host draws them afterwards), except that where the exact blend is a tie
    (k + 0.5) the two may round apart by 1; at the default opacities every pixel is the same."""
    image, panoptic = scene()
    host = renderer(alpha, contours, labels=False, stuff_alpha=stuff_alpha).overlay(image, panoptic, ())
    overlay = renderer(alpha, contours, stuff_alpha=stuff_alpha).device_overlay(torch.device("cpu"))
    drawn = overlay(torch.from_numpy(image), torch.from_numpy(panoptic)).numpy()
    assert drawn.dtype == np.uint8 and drawn.shape == host.shape
    apart = drawn != host
    if {alpha, stuff_alpha} <= EXACT:
        assert not apart.any()
    assert np.abs(drawn.astype(int) - host).max() <= 1
    opacity = np.where(panoptic % DIVISOR > 0, alpha, stuff_alpha)[..., None]
    exact = image * (1 - opacity) + renderer().colorize(panoptic) * opacity
    assert np.allclose(exact[apart] % 1, 0.5, atol=1e-4)
    assert apart.sum() < 0.01 * apart.size


def test_labels_drawn_after_the_device_overlay_match_the_host_overlay():
    image, panoptic = scene()
    segments = segments_of(panoptic)
    draw = renderer(0.6, stuff_alpha=0.4)
    drawn = draw.device_overlay(torch.device("cpu"))(torch.from_numpy(image), torch.from_numpy(panoptic)).numpy()
    assert np.array_equal(draw.draw_labels(drawn, segments), draw.overlay(image, panoptic, segments))


def test_no_device_overlay_when_the_colour_table_would_be_too_big():
    assert Renderer(CATEGORIES, 10**7, 0.5, True, True, 0.5).device_overlay(torch.device("cpu")) is None


def test_without_a_value_table_the_host_draws_the_same():
    """A huge label_divisor has no value table: the plain path must draw what the strip-wise one does."""
    image, panoptic = scene()
    divisor = 10**7
    category, instance = np.divmod(panoptic, DIVISOR)
    wide = (category * divisor + instance).astype(np.int64)
    segments = segments_of(panoptic)
    for contours in (True, False):
        table = Renderer(CATEGORIES, DIVISOR, 0.6, contours, True, stuff_alpha=0.4).overlay(image, panoptic, segments)
        plain = Renderer(CATEGORIES, divisor, 0.6, contours, True, stuff_alpha=0.4).overlay(image, wide, segments)
        assert np.array_equal(table, plain)


def test_a_tracked_things_label_names_its_track():
    assert label_text(Segment(CAR + 1, 3, True, 0.866, 1, (0, 0, 1, 1), track_id=12), NAMES) == "car 12"


def test_counting_lines_point_to_their_in_side_and_zones_are_outlined_with_their_totals():
    image = np.full((240, 320, 3), 90, np.uint8)
    line = Line("north", (20, 120), (300, 120))  # pointing right: "in" is downwards
    zone = Zone("walk", ((40, 20), (120, 20), (120, 80), (40, 80)))
    counts = Counts({}, {}, {("north", "car", "in"): 3, ("north", "car", "out"): 1}, {("walk", "person"): 4}, (line,), (zone,))
    drawn = draw_counting(image.copy(), counts)
    amber = np.all(drawn == COUNT_COLOR, axis=-1)
    assert amber[120, 20:300].all(), "the line"
    assert amber[20, 40:121].all() and amber[20:81, 40].all() and amber[80, 40:121].all() and amber[20:81, 120].all(), "the zone"
    assert amber[124:140, 150:170].any() and not amber[100:117, 150:170].any(), "the arrow points down, to the in side"
    assert not amber[25:76, 45:116].any(), "a zone is outlined, not filled"
    white = np.all(drawn == 255, axis=-1)
    assert white[90:118, 120:200].any(), "the line's totals sit on its out side"
    assert white[:20, 40:120].any(), "the zone's total above it"
    assert not white[130:].any(), "no text on the in side"
    flipped = draw_counting(image.copy(), Counts({}, {}, {}, {}, (Line("north", (300, 120), (20, 120)),)))
    arrow = np.all(flipped == COUNT_COLOR, axis=-1)
    assert arrow[100:117, 150:170].any() and not arrow[124:140, 150:170].any(), "b to a: in is upwards"
