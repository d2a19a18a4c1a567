"""`streamer eval`'s time-in-zone and heatmap scores against a synthetic scene's exact ground truth.

Zones. Unless the config names its own, a synthetic street is given two zones laid out on the road
in metres and projected into the image through the scene's exact camera (a homography maps the
straight edges of a ground polygon to straight edges, so the image polygon is exactly the ground
one): `crosswalk`, a 4 m band across the road (kerb to kerb) at 1.6 times the depth of the frame's
bottom row, and `lane`, the right half of the road from 1.3 to 2.5 times that depth. Both keep to
the road: a walker's ground point (the bottom of its box) swings with its stride by about 0.3 m,
a quarter of a second at walking pace, which the sidewalks would measure rather than the rule. Config zones (pixels) are
mapped to the ground through the inverse homography.

Time in zone. The pipeline's figure is streamer.analytics.zone_time over the tracked segments and
the image zones; the truth is the same rule over each object's exact ground position (metres) and
the ground zones, over the frames the object is drawn in. Each true object is paired with the
predicted track that matched it (same class, IoU >= 0.5) in most frames; `within_0_2s` is the
fraction of (object, zone) pairs, with a time > 0 in either, whose times differ by <= 0.2 s (an
object no track matched counts as wrong), leaving out visits the run cut (`cut`: the object was
inside at the run's first or last frame, so its entry or exit was never seen).

Heatmap. streamer.analytics.heatmap over the fused segmentation's things and over the ground
truth's, without decay, on the same grid; `correlation` is Pearson's r of the two occupancies,
every category's cells together.
"""
from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from streamer.analytics.heatmap import Heatmap
from streamer.analytics.zone_time import ZoneTimes
from streamer.analytics.zones import ZoneTest
from streamer.frames import Segment, Zone
from streamer.inputs.synthetic import GroundTruth, SceneFrame, StreetScene

WITHIN_S = 0.2
MIN_IOU = 0.5
HEATMAP_MAX_WIDTH = 160


def apply_homography(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """N x 2 points through a 3 x 3 homography -> N x 2 float64."""
    p = np.column_stack((np.asarray(points, np.float64), np.ones(len(points)))) @ np.asarray(matrix, np.float64).T
    return p[:, :2] / p[:, 2:]


def scene_zones(scene: StreetScene, image_zones: Sequence[Zone] = ()) -> tuple[list[Zone], list[Zone]]:
    """(image zones in pixels, the same zones on the ground in metres): `image_zones` when given, else
    the crosswalk and lane bands of the module docstring."""
    to_image = scene.ground_to_image()
    if image_zones:
        to_ground = np.linalg.inv(to_image)
        return list(image_zones), [Zone(z.name, tuple(map(tuple, apply_homography(to_ground, np.array(z.points))))) for z in image_zones]
    _, corners = scene.ground_calibration()
    half, near = float(corners[1, 0]), float(corners[0, 1]) / 1.2
    ground = [
        Zone("crosswalk", ((-half, 1.6 * near), (half, 1.6 * near), (half, 1.6 * near + 4.0), (-half, 1.6 * near + 4.0))),
        Zone("lane", ((0.0, 1.3 * near), (half, 1.3 * near), (half, 2.5 * near), (0.0, 2.5 * near))),
    ]
    image = [Zone(z.name, tuple(map(tuple, apply_homography(to_image, np.array(z.points))))) for z in ground]
    return image, ground


def match_tracks(predicted: np.ndarray, segments: Sequence[Segment], truth: np.ndarray, truth_segments: Sequence[Segment],
                 same_class: Mapping[int, int]) -> dict[int, int]:
    """Predicted track id -> true track id, for tracked things overlapping a true thing of the same class
    (`same_class`: true category id -> predicted category id) with IoU >= MIN_IOU. Maps: H x W segment ids."""
    true_things = {s.id: s for s in truth_segments if s.isthing and s.track_id is not None}
    out: dict[int, int] = {}
    for s in segments:
        if not s.isthing or s.track_id is None:
            continue
        x0, y0, x1, y1 = (int(v) for v in s.box)
        mine = predicted[y0:y1, x0:x1] == s.id
        values, counts = np.unique(truth[y0:y1, x0:x1][mine], return_counts=True)
        for value, inter in sorted(zip(values.tolist(), counts.tolist()), key=lambda vc: -vc[1]):
            other = true_things.get(value)
            if other is None or same_class.get(other.category_id) != s.category_id:
                continue
            if inter / (s.area + other.area - inter) >= MIN_IOU:
                out[s.track_id] = other.track_id  # type: ignore[assignment]  # tracked: never None here
            break
    return out


class ZoneTimeScore:
    """The time in zones of the predicted tracks against the truth, frame by frame (`add`), then `result`."""

    def __init__(self, image_zones: Sequence[Zone], ground_zones: Sequence[Zone], same_class: Mapping[int, int]) -> None:
        self.names = [z.name for z in image_zones]
        self.same_class = dict(same_class)
        self._predicted = ZoneTimes(image_zones, {}, forget_after_s=1e9)
        self._truth = ZoneTimes(ground_zones, {}, forget_after_s=1e9)
        self._ground_test = ZoneTest(ground_zones)
        self._est: dict[int, dict[str, float]] = {}  # predicted track -> zone -> seconds (through its last sample)
        self._true: dict[int, dict[str, float]] = {}
        self._pairs: collections.Counter[tuple[int, int]] = collections.Counter()  # (true, predicted) -> frames matched
        self._cut: set[tuple[int, str]] = set()  # (true object, zone) inside at the run's first frame
        self._inside_last: set[tuple[int, str]] = set()  # ... and at the latest frame
        self._frames = 0

    def add(self, pts_s: float, predicted: np.ndarray, segments: Sequence[Segment], truth: np.ndarray,
            truth_segments: Sequence[Segment], ground: Sequence[GroundTruth]) -> None:
        visits = self._predicted.update(segments, pts_s)
        for track in visits.tracks:
            self._est[track] = visits.of(track)
        ids = [g.track_id for g in ground]
        inside = self._ground_test(np.array([g.position for g in ground], np.float64).reshape(-1, 2))
        truth_visits = self._truth.advance(ids, inside, pts_s)
        self._inside_last = {(ids[n], self.names[z]) for n, z in zip(*np.nonzero(inside))}
        if self._frames == 0:
            self._cut = set(self._inside_last)
        self._frames += 1
        for track in truth_visits.tracks:
            self._true[track] = truth_visits.of(track)
        for mine, theirs in match_tracks(predicted, segments, truth, truth_segments, self.same_class).items():
            self._pairs[(theirs, mine)] += 1

    def observe(self, pts_s: float, predicted: np.ndarray, segments: Sequence[Segment], scene: SceneFrame) -> None:
        """`add` with the truth a scene frame carries."""
        self.add(pts_s, predicted, segments, scene.panoptic, scene.segments, scene.ground)

    def figures(self) -> dict[str, Any]:
        """{"within_0_2s": fraction or None, "pairs": n, "cut": visits left out, "zones": [names]}: eval's `analytics.zone_time`."""
        within, pairs = self.result()
        cut = len(self._cut | self._inside_last)
        return {"within_0_2s": None if within is None else round(within, 4), "pairs": pairs, "cut": cut, "zones": list(self.names)}

    def result(self) -> tuple[float | None, int]:
        """(fraction of (object, zone) pairs within WITHIN_S, number of pairs); None when there are none.
        Visits the run cut (the object inside at its first or last frame) are left out: the box's
        bottom and the object's true centre are half a car apart, which cancels only between an
        entry and an exit both seen."""
        cut = self._cut | self._inside_last
        best: dict[int, tuple[int, int]] = {}
        for (theirs, mine), frames in self._pairs.items():
            if frames > best.get(theirs, (0, -1))[0]:
                best[theirs] = (frames, mine)
        good = total = 0
        for theirs, times in self._true.items():
            paired = best[theirs][1] if theirs in best else None
            estimated = self._est.get(paired, {}) if paired is not None else {}
            for zone in self.names:
                true_s, est_s = times.get(zone, 0.0), estimated.get(zone, 0.0)
                if (true_s > 0 or est_s > 0) and (theirs, zone) not in cut:
                    total += 1
                    good += paired is not None and abs(true_s - est_s) <= WITHIN_S + 1e-9
        return (good / total if total else None), total


class HeatmapScore:
    """The occupancy heatmap of the predictions against the truth's (`add` per frame, then `result`)."""

    def __init__(self, predicted_names: Mapping[int, str], truth_names: Mapping[int, str]) -> None:
        self._predicted = Heatmap(predicted_names, HEATMAP_MAX_WIDTH)
        self._truth = Heatmap(truth_names, HEATMAP_MAX_WIDTH)

    def add(self, pts_s: float, predicted: np.ndarray, segments: Sequence[Segment], truth: np.ndarray,
            truth_segments: Sequence[Segment]) -> None:
        self._predicted.add(predicted, segments, pts_s)
        self._truth.add(truth, truth_segments, pts_s)

    def observe(self, pts_s: float, predicted: np.ndarray, segments: Sequence[Segment], scene: SceneFrame) -> None:
        self.add(pts_s, predicted, segments, scene.panoptic, scene.segments)

    def figures(self) -> dict[str, Any]:
        """{"correlation": r or None}: eval's `analytics.heatmap`."""
        r = self.result()
        return {"correlation": None if r is None else round(r, 4)}

    def result(self) -> float | None:
        """Pearson's r of the two occupancies over every category's cells; None when either is constant."""
        mine, theirs = self._predicted.snapshot(), self._truth.snapshot()
        if mine is None or theirs is None:
            return None
        names = sorted(set(mine.masks) | set(theirs.masks))
        if not names:
            return None
        a = np.concatenate([mine.occupancy(n).ravel() if n in mine.masks else np.zeros(mine.shape).ravel() for n in names])
        b = np.concatenate([theirs.occupancy(n).ravel() if n in theirs.masks else np.zeros(theirs.shape).ravel() for n in names])
        if len(a) < 2 or a.std() == 0 or b.std() == 0:
            return None
        return float(np.corrcoef(a, b)[0, 1])
