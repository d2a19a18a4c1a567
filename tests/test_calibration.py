"""Ground-plane calibration: the homography against a hand-computed one and a plain-NumPy DLT, and
every kind of degenerate input refused in one line (exit 78 at start-up)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from streamer.analytics.calibration import GroundPlane, homography
from streamer.inputs.synthetic import StreetScene

SQUARE = [[0, 0], [100, 0], [100, 100], [0, 100]]
RECTANGLE = [[0, 0], [2, 0], [2, 5], [0, 5]]


def dlt(image: np.ndarray, ground: np.ndarray) -> np.ndarray:
    """The four-point DLT in plain NumPy (Hartley and Zisserman 4.1) with h33 = 1: 8 linear equations."""
    rows, rhs = [], []
    for (u, v), (x, y) in zip(image, ground):
        rows.append([u, v, 1, 0, 0, 0, -u * x, -v * x])
        rows.append([0, 0, 0, u, v, 1, -u * y, -v * y])
        rhs += [x, y]
    return np.append(np.linalg.solve(np.array(rows, float), np.array(rhs, float)), 1.0).reshape(3, 3)


def test_a_square_to_a_rectangle_is_a_scaling_point_by_point():
    h = homography(SQUARE, RECTANGLE)
    np.testing.assert_allclose(h / h[2, 2], np.diag([0.02, 0.05, 1.0]), atol=1e-9)  # by hand: x = u / 50, y = v / 20
    plane = GroundPlane(h)
    points = np.array([[0, 0], [50, 50], [100, 100], [25, 80], [300, -40]], float)
    np.testing.assert_allclose(plane.to_ground(points), points * [0.02, 0.05], atol=1e-9)
    np.testing.assert_allclose(plane.to_image(points * [0.02, 0.05]), points, atol=1e-6)


def test_a_perspective_view_matches_the_numpy_reference_and_the_camera():
    scene = StreetScene(1003, (640, 360))
    image, ground = scene.ground_calibration()
    plane = GroundPlane.from_points(image, ground)
    reference = dlt(image, ground)
    np.testing.assert_allclose(plane.homography / plane.homography[2, 2], reference, rtol=1e-4, atol=1e-6 * np.abs(reference).max())
    pixels = np.array([[320.0, 359.0], [10.0, 300.0], [600.0, 250.0], [320.0, 200.0]])
    exact = np.linalg.inv(scene.ground_to_image())  # the camera's own mapping, written out
    p = np.column_stack((pixels, np.ones(4))) @ exact.T
    np.testing.assert_allclose(plane.to_ground(pixels), p[:, :2] / p[:, 2:], rtol=1e-4, atol=1e-3)
    above = plane.to_ground(np.array([[320.0, 5.0]]))  # the sky shows no ground
    assert np.isnan(above).all()


@pytest.mark.parametrize("image, ground, says", [
    ([[0, 0], [100, 0], [200, 0], [0, 100]], RECTANGLE, "points 1, 2, 3 lie on one line"),
    (SQUARE, [[0, 0], [2, 0], [2, 5], [2, 10]], "calibration.ground: points 2, 3, 4 lie on one line"),
    ([[0, 0], [100, 0], [100, 0], [0, 100]], RECTANGLE, "points 2 and 3 are the same"),
    (SQUARE, [[0, 0], [2, 0], [0, 0], [0, 5]], "calibration.ground: points 1 and 3 are the same"),
    (SQUARE, [[0, 0], [2, 0], [0, 5], [2, 5]], "not in the same order"),  # a bow-tie: the mapping folds the plane
    ([[0, 0], [100, 0], [100, float("nan")], [0, 100]], RECTANGLE, "finite"),
    ([[0, 0], [100, 0], [100, 100]], RECTANGLE, "needs 4 points"),
])
def test_degenerate_points_are_refused_in_one_line(image, ground, says):
    with pytest.raises(ValueError, match=says) as caught:
        homography(image, ground)
    assert "\n" not in str(caught.value)


def test_a_degenerate_calibration_stops_start_up_with_exit_78(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("source:\n  uri: synthetic:street?frames=2&size=64x36\n  calibration:\n"
                      "    image: [[0, 0], [100, 0], [200, 0], [0, 100]]\n    ground: [[0, 0], [2, 0], [2, 5], [0, 5]]\n")
    done = subprocess.run([sys.executable, "-m", "streamer", "check-config", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 78
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "source.calibration" in lines[0] and "lie on one line" in lines[0]


def test_calibrate_prints_a_synthetic_street_s_exact_calibration_and_draws_its_grid(tmp_path, capsys):
    import cv2
    import yaml

    from streamer.cli import main

    uri = "synthetic:street?seed=1003&frames=2&size=320x180"
    out = tmp_path / "grid.png"
    assert main(["calibrate", "--source", uri, "--out", str(out)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["calibration"]
    image, ground = StreetScene(1003, (320, 180)).ground_calibration()
    np.testing.assert_allclose(printed["image"], image, atol=0.05)
    np.testing.assert_allclose(printed["ground"], ground, atol=0.0005)
    homography(printed["image"], printed["ground"])  # what it prints is a calibration the config takes
    picture, frame = cv2.imread(str(out)), StreetScene(1003, (320, 180)).render(0).image
    assert picture.shape == frame.shape and (np.abs(picture.astype(int) - frame).sum(axis=2) > 60).mean() > 0.02  # the grid is drawn
    assert main(["calibrate", "--source", uri, "--out", str(tmp_path / "no" / "such" / "dir.png")]) == 73
