"""Speed from a calibrated ground plane: the fit, its window, the plausibility cap, the ground
contact of a mask, and the whole estimator on hand-made maps and on a synthetic street's exact masks."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from streamer.analytics.calibration import GroundPlane
from streamer.analytics.speed import SpeedEstimator, fit_velocity, ground_contact, thing_table, window_speed
from streamer.frames import Category, Segment, Speed
from streamer.inputs.synthetic import CAR, StreetScene
from streamer.outputs.export import segment_info
from streamer.outputs.render import label_text

# 100 x 100 pixels show 2 m across and 5 m along: x = u / 50, y = v / 20 (metres)
PLANE = GroundPlane.from_points([[0, 0], [100, 0], [100, 100], [0, 100]], [[0, 0], [2, 0], [2, 5], [0, 5]])
CAR_ID = 5


def test_a_constant_velocity_gives_its_speed_and_noise_averages_out():
    t = np.arange(15) / 15.0
    points = np.column_stack((1.0 + 0.0 * t, 3.0 + 12.5 * t))  # 12.5 m/s along y
    assert fit_velocity(t, points) == pytest.approx((0.0, 12.5))
    rng = np.random.default_rng(0)
    noisy = points + rng.normal(0, 0.1, points.shape)
    assert np.hypot(*fit_velocity(t, noisy)) == pytest.approx(12.5, rel=0.05)
    with pytest.raises(ValueError):
        fit_velocity(np.zeros(3), points[:3])


def test_the_window_keeps_only_recent_points_and_needs_its_span():
    fps = 10.0
    t = np.arange(30) / fps
    y = np.where(t < 1.5, 10.0 * t, 15.0 + 20.0 * (t - 1.5))  # 10 m/s, then 20 m/s from 1.5 s
    points = np.column_stack((np.zeros_like(y), y))
    assert window_speed(t[:30], points[:30], 1.0, 0.6, 100.0).mps == pytest.approx(20.0)  # the last second only
    assert window_speed(t[:15], points[:15], 1.0, 0.6, 100.0).mps == pytest.approx(10.0)
    assert window_speed(t[:6], points[:6], 1.0, 0.6, 100.0) is None  # spans 0.5 s of the 0.6 needed
    assert window_speed(t[:7], points[:7], 1.0, 0.6, 100.0).mps == pytest.approx(10.0)


def test_speeds_above_the_cap_are_marked_implausible():
    t = np.arange(10) / 10.0
    points = np.column_stack((np.zeros(10), 80.0 * t))  # 80 m/s = 288 km/h
    assert window_speed(t, points, 1.0, 0.5, 250 / 3.6) == Speed(pytest.approx(80.0), False)
    assert window_speed(t, points, 1.0, 0.5, 300 / 3.6) == Speed(pytest.approx(80.0), True)


def test_an_uncertain_speed_is_not_reported():
    t = np.arange(10) / 10.0
    points = np.column_stack((np.zeros(10), 1.0 * t))
    coarse = np.full(10, 2.0)  # two metres per pixel: half a pixel swamps a 1 m/s motion
    assert window_speed(t, points, 1.0, 0.5, 100.0, coarse, max_error=0.1) is None
    assert window_speed(t, points, 1.0, 0.5, 100.0, np.full(10, 0.01), max_error=0.1).mps == pytest.approx(1.0)


def _thing(panoptic: np.ndarray, value: int, rows: slice, cols: slice, track: int | None) -> Segment:
    panoptic[rows, cols] = value
    return Segment(value, value // 1000, True, 0.9, int((panoptic == value).sum()),
                   (cols.start, rows.start, cols.stop, rows.stop), track)


def test_the_ground_contact_is_the_bottom_of_the_mask_unless_hidden():
    panoptic = np.full((100, 100), 1000, np.int32)  # road
    car = _thing(panoptic, CAR_ID * 1000 + 1, slice(20, 40), slice(10, 30), 7)
    panoptic[39, 10:20] = 1000  # the lowest row holds columns 20-29 only
    assert ground_contact(panoptic, car, thing_table([car])) == (24.5, 39.5)
    other = _thing(panoptic, CAR_ID * 1000 + 2, slice(40, 50), slice(0, 40), 8)  # a car right under it, nearer
    assert ground_contact(panoptic, car, thing_table([car, other])) is None
    edge = _thing(panoptic, CAR_ID * 1000 + 3, slice(90, 100), slice(60, 70), 9)  # cut by the frame's bottom
    assert ground_contact(panoptic, edge, thing_table([edge])) is None
    loose = replace(car, box=(10, 20, 30, 45))  # a box larger than the mask: the contact is still found
    assert ground_contact(panoptic, loose, thing_table([loose])) == (24.5, 39.5)


def test_the_estimator_follows_a_mask_moving_at_constant_speed():
    fps, estimator = 10.0, SpeedEstimator(PLANE, 1.0, 0.6, 250 / 3.6)
    speeds = []
    for i in range(12):
        panoptic = np.full((100, 100), 1000, np.int32)
        top = 10 + 4 * i  # 4 px per frame down the image = 0.2 m per frame = 2 m/s
        car = _thing(panoptic, CAR_ID * 1000 + 1, slice(top, top + 10), slice(40, 60), 3)
        speeds.append(estimator.update(panoptic, (car,), i / fps).get(3))
    assert speeds[:6] == [None] * 6  # until 0.6 s of positions
    assert all(s is not None and s.mps == pytest.approx(2.0) and s.plausible for s in speeds[6:])
    estimator.reset()
    assert estimator.update(panoptic, (car,), 1.2) == {}


def test_on_a_synthetic_street_the_exact_masks_give_the_true_speeds():
    scene = StreetScene(1002, (640, 360))
    estimator = SpeedEstimator(GroundPlane.from_points(*scene.ground_calibration()), 1.0, 0.6, 250 / 3.6, max_error=0.1)
    errors = []
    for index in range(30):
        frame = scene.render(index)
        truth = {g.track_id: g for g in frame.ground}
        for track, speed in estimator.update(frame.panoptic, frame.segments, index / scene.fps).items():
            if truth[track].category == CAR:
                errors.append(abs(speed.mps - truth[track].speed) / truth[track].speed)
    assert len(errors) > 20
    assert np.median(errors) < 0.05 and max(errors) < 0.1  # the targets of eval (README) with perfect masks


def test_the_label_the_export_and_the_units_show_plausible_speeds_only():
    categories = {CAR_ID: Category(CAR_ID, "car", True, (0, 0, 142))}
    car = Segment(CAR_ID * 1000 + 1, CAR_ID, True, 0.9, 100, (0, 0, 10, 10), 12)
    fast = Speed(43 / 3.6, True)
    assert label_text(car, categories, fast) == "car 12 \u00b7 43 km/h"
    assert label_text(car, categories, fast, "mph") == "car 12 \u00b7 27 mph"
    assert label_text(car, categories, Speed(400 / 3.6, False)) == "car 12"
    assert segment_info(car, fast)["speed_kmh"] == 43.0
    assert "speed_kmh" not in segment_info(car, Speed(400 / 3.6, False))
    assert "speed_kmh" not in segment_info(car)


def test_eval_scores_speeds_against_the_truth_and_counts_implausible_ones():
    from streamer.tools import speed_eval

    scene = StreetScene(1001, (640, 360))
    same_class = {c: c for c in range(1, 7)}  # the predictions here are the truth's own masks and ids
    plane = GroundPlane.from_points(*scene.ground_calibration())
    honest = speed_eval.SpeedScore(SpeedEstimator(plane, 1.0, 0.6, 250 / 3.6, max_error=0.1), same_class, {CAR: 250.0})
    capless = speed_eval.SpeedScore(SpeedEstimator(plane, 1.0, 0.6, 1e9, max_error=0.1), same_class, {CAR: 1.0})  # caps nothing
    for index in range(24):
        frame = scene.render(index)
        for score in (honest, capless):
            score.observe(index / scene.fps, frame.panoptic, frame.segments, frame)
    figures = honest.figures()
    assert figures["samples"] > 0 and figures["median_rel_error"] < 0.05 and figures["implausible_reported"] == 0
    assert 0 < figures["coverage"] <= 1 and figures["tracks"] >= 1
    assert capless.figures()["implausible_reported"] == capless.figures()["samples"] > 0  # every car is over a 1 km/h cap
    assert "median" in speed_eval.text(figures) and "implausible speeds reported: 0" in speed_eval.text(figures)


def test_metrics_count_plausible_speeds_per_source_and_category():
    import time

    import torch
    from prometheus_client.parser import text_string_to_metric_families

    from streamer import control as ctl
    from streamer.frames import Frame, Panoptic
    from streamer.service.metrics import Metrics

    metrics = Metrics([], ctl.Control(), 60.0, torch.device("cpu"), {CAR_ID: "car"})
    car = Segment(CAR_ID * 1000 + 1, CAR_ID, True, 0.9, 100, (0, 0, 10, 10), 12)
    other = Segment(CAR_ID * 1000 + 2, CAR_ID, True, 0.9, 100, (20, 0, 30, 10), 13)
    frame = Frame("cam0", 0, np.zeros((10, 30, 3), np.uint8), 0.0, time.time(), time.monotonic())
    result = Panoptic(frame, np.zeros((10, 30), np.int32), (car, other), speeds={12: Speed(43 / 3.6, True), 13: Speed(400 / 3.6, False)})
    metrics.observe(result, {})
    samples = {(s.name, s.labels.get("le")): s.value for family in text_string_to_metric_families(metrics.exposition()[1].decode())
               for s in family.samples if s.name.startswith("streamer_speed_kmh") and s.labels.get("source") == "cam0"
               and s.labels.get("category") == "car"}
    assert samples[("streamer_speed_kmh_count", None)] == 1  # the implausible one is not a measurement
    assert samples[("streamer_speed_kmh_sum", None)] == pytest.approx(43.0)
    assert samples[("streamer_speed_kmh_bucket", "40.0")] == 0 and samples[("streamer_speed_kmh_bucket", "50.0")] == 1


def test_events_carry_the_track_s_speed_when_it_has_one():
    from streamer.frames import Event, Zone
    from streamer.outputs.events.kinds import Events, FrameFacts, Seen

    events = Events([Zone("box", ((0, 0), (50, 0), (50, 50), (0, 50)))], track_end_s=2.0)
    crossing = Event("line", "gate", 12, "car", "in", 0.5)
    facts = FrameFacts(5, 0.5, 1000.0, 0, (Seen(12, "car", 0.9, (10.0, 10.0), 43.0), Seen(13, "car", 0.8, (20.0, 20.0))),
                       (crossing,), None)
    out = {(kind, fields["track_id"]): fields for kind, _, _, fields in events.frame(facts) if "track_id" in fields}
    assert out[("line_crossing", 12)]["speed_kmh"] == 43.0
    assert out[("zone_entry", 12)]["speed_kmh"] == 43.0 and out[("zone_entry", 13)]["speed_kmh"] is None
