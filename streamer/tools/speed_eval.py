"""`streamer eval`'s speed figures against a synthetic scene's exact ground truth.

The pipeline's speeds come from streamer.analytics.speed over the tracked segments, as `streamer
run` computes them, through the scene camera's exact calibration (or the config's own, when it
names one). Each predicted track is paired, frame by frame, with the true car it overlaps (same
class, IoU >= 0.5; streamer.tools.analytics_eval.match_tracks), and each speed it reports on that
frame is compared with that car's true speed: the relative error |estimated - true| / true, pooled
over every (track, frame) of tracked cars. `implausible_reported` counts speeds reported as
measurements (not marked implausible) above their category's cap: it must stay 0.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from streamer.analytics.calibration import GroundPlane
from streamer.analytics.speed import SpeedEstimator
from streamer.frames import KMH_PER_MPS, Segment
from streamer.inputs.synthetic import CAR, SceneFrame
from streamer.tools.analytics_eval import match_tracks


class SpeedScore:
    """Speed errors of the predicted tracks (`observe` per frame, in order, then `figures`).

    estimator: the speeds as the pipeline computes them; same_class: true category id -> predicted
    category id; caps_kmh: predicted category id -> its plausibility cap.
    """

    def __init__(self, estimator: SpeedEstimator, same_class: Mapping[int, int], caps_kmh: Mapping[int, float]) -> None:
        self.estimator = estimator
        self.same_class = dict(same_class)
        self.caps_kmh = dict(caps_kmh)
        self._errors: list[float] = []
        self._tracks: set[int] = set()  # predicted car tracks with a speed compared
        self._seen: int = 0  # (track, frame) of matched cars, with a speed or not
        self._marked = 0  # speeds marked implausible (never reported)
        self._implausible_reported = 0

    def observe(self, pts_s: float, predicted: np.ndarray, segments: Sequence[Segment], scene: SceneFrame) -> None:
        speeds = self.estimator.update(predicted, segments, pts_s)
        category = {s.track_id: s.category_id for s in segments if s.isthing and s.track_id is not None}
        for track, speed in speeds.items():
            if not speed.plausible:
                self._marked += 1
            elif speed.kmh > self.caps_kmh.get(category[track], float("inf")):
                self._implausible_reported += 1
        truth = {g.track_id: g for g in scene.ground}
        for mine, theirs in match_tracks(predicted, segments, scene.panoptic, scene.segments, self.same_class).items():
            true = truth.get(theirs)
            if true is None or true.category != CAR or true.speed <= 0:
                continue
            self._seen += 1
            reported = speeds.get(mine)
            if reported is not None and reported.plausible:
                self._errors.append(abs(reported.mps - true.speed) / true.speed)
                self._tracks.add(mine)

    def figures(self) -> dict[str, Any]:
        """eval's `analytics.speed`: median and p90 relative error (None without samples), the count of
        implausible speeds reported (0 by design) and of those marked, and how many matched car
        track-frames carried a speed."""
        errors = np.array(self._errors)
        return {
            "median_rel_error": round(float(np.median(errors)), 4) if errors.size else None,
            "p90_rel_error": round(float(np.percentile(errors, 90)), 4) if errors.size else None,
            "implausible_reported": self._implausible_reported,
            "implausible_marked": self._marked,
            "samples": int(errors.size),
            "tracks": len(self._tracks),
            "coverage": round(errors.size / self._seen, 4) if self._seen else None,
        }


def speed_score(plane: GroundPlane, settings: Any, categories: Mapping[str, int], same_class: Mapping[int, int]) -> SpeedScore:
    """A SpeedScore with `analytics.speed` settings (`settings`) and category name -> id `categories`."""
    caps_kmh = {cid: settings.max_kmh_per_category.get(name, settings.max_kmh) for name, cid in categories.items()}
    estimator = SpeedEstimator(plane, settings.window_s, settings.min_span, settings.max_kmh / KMH_PER_MPS,
                               {cid: kmh / KMH_PER_MPS for cid, kmh in caps_kmh.items()}, settings.max_error)
    return SpeedScore(estimator, same_class, caps_kmh)


def text(figures: Mapping[str, Any]) -> str:
    """The eval report's speed line."""
    if figures.get("median_rel_error") is None:
        return "  speed: no car's speed reported"
    coverage = figures["coverage"]
    return (f"  speed error (cars): median {100 * figures['median_rel_error']:.1f} %, p90 {100 * figures['p90_rel_error']:.1f} % "
            f"over {figures['samples']} track-frames of {figures['tracks']} tracks ({100 * coverage:.0f} % of matched car "
            f"frames had a speed); implausible speeds reported: {figures['implausible_reported']}")
