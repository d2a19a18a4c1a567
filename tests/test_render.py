"""Renderer.overlay and its helpers as pure functions: hand-made panoptic maps, exact pixel checks."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from helpers import mask_bbox

from streamer.frames import Category, Segment
from streamer.outputs.render import CONTOUR_COLOR, Renderer, instance_boundaries

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
        out.append(Segment(int(value), category, instance > 0, 0.87 if instance else None, int(mask.sum()), mask_bbox(mask)))
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


def renderer(alpha: float = 0.5, contours: bool = True, labels: bool = True) -> Renderer:
    return Renderer(CATEGORIES, DIVISOR, alpha, contours, labels)


def expected_boundaries(panoptic: np.ndarray) -> np.ndarray:
    """Thing pixels with a 4-neighbour (inside the image) of another id, computed pixel by pixel."""
    height, width = panoptic.shape
    out = np.zeros(panoptic.shape, bool)
    for y, x in itertools.product(range(height), range(width)):
        if panoptic[y, x] % DIVISOR == 0:
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
    image, panoptic = scene()
    out = renderer(0.0, contours=True, labels=False).overlay(image, panoptic, segments_of(panoptic))
    changed = (out != image).any(axis=-1)
    edges = expected_boundaries(panoptic)
    assert not (changed & ~edges).any(), "pixels off the instance boundaries changed"
    assert (out[edges] == CONTOUR_COLOR).all()


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


def test_contours_are_drawn_exactly_on_instance_boundaries():
    image, panoptic = scene()
    segments = segments_of(panoptic)
    with_contours = renderer(0.5, contours=True, labels=False).overlay(image, panoptic, segments)
    without = renderer(0.5, contours=False, labels=False).overlay(image, panoptic, segments)
    edges = expected_boundaries(panoptic)
    changed = (with_contours != without).any(axis=-1)
    assert not (changed & ~edges).any()
    assert (with_contours[edges] == CONTOUR_COLOR).all()
    assert changed.sum() >= 0.9 * edges.sum()  # (a blended pixel may already be white)


def near_things(segments: tuple[Segment, ...], shape: tuple[int, int]) -> np.ndarray:
    """Where a label may go: a band above each thing's box (and into it), as wide as a short text."""
    near = np.zeros(shape, bool)
    for segment in segments:
        if segment.isthing:
            x, y, w, h = segment.bbox
            near[max(0, y - 20): y + h, max(0, x - 4): x + max(w, 110)] = True
    return near


def test_labels_change_only_pixels_near_things():
    image, panoptic = scene()
    segments = segments_of(panoptic)
    on = renderer(0.5, contours=True, labels=True).overlay(image, panoptic, segments)
    off = renderer(0.5, contours=True, labels=False).overlay(image, panoptic, segments)
    changed = (on != off).any(axis=-1)
    assert not (changed & ~near_things(segments, panoptic.shape)).any(), "a label was drawn away from every thing"
    for segment in segments:
        x, y, w, h = segment.bbox
        if segment.isthing:
            assert changed[max(0, y - 20): y + h, max(0, x - 4): x + w].sum() > 20, f"no label for {segment.id}"
    # stuff gets no label
    stuff = tuple(s for s in segments if not s.isthing)
    assert len(stuff) == 2
    assert np.array_equal(renderer(0.5, contours=True, labels=True).overlay(image, panoptic, stuff), off)


def test_labels_for_things_without_score_and_at_the_top_edge():
    image = np.full((60, 120, 3), 90, np.uint8)
    panoptic = np.zeros((60, 120), np.int32)
    panoptic[0:20, 10:40] = CAR + 1
    segment = Segment(CAR + 1, 3, True, None, 600, (10, 0, 30, 20))
    on = renderer(0.0, contours=False, labels=True).overlay(image, panoptic, (segment,))
    changed = (on != image).any(axis=-1)
    assert changed.sum() > 20, "a thing at the top edge should still get a readable label"
    assert not changed[30:].any()


@pytest.mark.parametrize("alpha, contours", [(0.5, True), (0.3, False), (0.77, True), (1.0, True)])
def test_the_device_overlay_draws_what_the_host_draws(alpha, contours):
    """DeviceOverlay is the GPU path; its tensor code runs on the CPU here. It gives the host's frame
    (labels aside: the host draws them afterwards), except that where the exact blend is a tie
    (k + 0.5) the two may round apart by 1; at the default alpha of 0.5 every pixel is the same."""
    image, panoptic = scene()
    host = renderer(alpha, contours, labels=False).overlay(image, panoptic, ())
    overlay = renderer(alpha, contours).device_overlay(torch.device("cpu"))
    drawn = overlay(torch.from_numpy(image), torch.from_numpy(panoptic)).numpy()
    assert drawn.dtype == np.uint8 and drawn.shape == host.shape
    apart = drawn != host
    if alpha == 0.5:
        assert not apart.any()
    assert np.abs(drawn.astype(int) - host).max() <= 1
    colors = renderer().colorize(panoptic)
    exact = image * (1 - alpha) + colors * alpha
    assert np.allclose(exact[apart] % 1, 0.5, atol=1e-4)
    assert apart.sum() < 0.01 * apart.size


def test_labels_drawn_after_the_device_overlay_match_the_host_overlay():
    image, panoptic = scene()
    segments = segments_of(panoptic)
    draw = renderer()
    drawn = draw.device_overlay(torch.device("cpu"))(torch.from_numpy(image), torch.from_numpy(panoptic)).numpy()
    assert np.array_equal(draw.draw_labels(drawn, segments), draw.overlay(image, panoptic, segments))


def test_no_device_overlay_when_the_colour_table_would_be_too_big():
    assert Renderer(CATEGORIES, 10**7, 0.5, True, True).device_overlay(torch.device("cpu")) is None
