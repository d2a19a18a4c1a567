"""The synthetic street's ground truth on the road: positions in metres, true speeds, the exact calibration."""
from __future__ import annotations

import numpy as np

from streamer.inputs.synthetic import CAR, StreetScene


def _to_image(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.column_stack((points, np.ones(len(points)))) @ h.T
    return p[:, :2] / p[:, 2:]


def test_ground_truth_follows_each_thing_segment_and_moves_at_its_speed():
    scene = StreetScene(1001, (320, 180))
    fps = scene.fps
    before, after = scene.render(30), scene.render(31)
    things = [s for s in before.segments if s.isthing]
    assert len(before.ground) == len(things) > 0
    assert [g.track_id for g in before.ground] == [s.track_id for s in things]
    assert [g.category for g in before.ground] == [s.category_id for s in things]
    later = {g.track_id: g for g in after.ground}
    for g in before.ground:
        if g.track_id in later:  # one frame on: moved by velocity / fps (constant on a straight leg)
            step = np.subtract(later[g.track_id].position, g.position)
            np.testing.assert_allclose(step, np.array(g.velocity) / fps, atol=1e-9)
        if g.category == CAR:  # cars keep to their lane: along the street only, 6-14 m/s
            assert g.velocity[0] == 0.0 and 6.0 <= g.speed <= 14.0


def test_calibration_points_are_the_camera_projection_and_its_homography():
    scene = StreetScene(1002, (640, 360))
    image, ground = scene.ground_calibration()
    h = scene.ground_to_image()
    np.testing.assert_allclose(_to_image(h, ground), image, atol=1e-9)
    assert (image >= 0).all() and (image[:, 0] < 640).all() and (image[:, 1] < 360).all()  # a user can see them
    # a car's footprint centre, seen through the camera, lies where the homography puts it
    cam = scene._style.camera
    g = scene.render(40).ground[0]
    pixel = cam.project(np.array([[g.position[0], 0.0, g.position[1]]]))
    np.testing.assert_allclose(_to_image(h, np.array([g.position])), pixel, atol=1e-9)
