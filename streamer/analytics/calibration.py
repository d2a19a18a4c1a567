"""Ground-plane calibration: a homography from a camera's image to the road, in metres.

Four image points (u, v) in pixels and the four ground points (x, y) in metres they show fix a
plane-to-plane homography H (3 x 3): [x w, y w, w]^T = H [u, v, 1]^T (Hartley and Zisserman,
"Multiple View Geometry", 2nd ed., 4.1, the four-point DLT; OpenCV's `getPerspectiveTransform`
solves it). It is exact for points on the ground plane only: map the point where an object
touches the road, never one above it.

Degenerate input is refused with ValueError (one line): a point that is not finite, two points
repeated, three points of either set on one line (then no unique homography exists), or a mapping
that folds the plane (the points' orders do not match, so the quadrilateral is turned inside out:
some calibration points would lie beyond the horizon of the others).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

COLLINEAR_TOLERANCE = 1e-3
"""Three points count as on one line when twice their triangle's area is below this times the
square of its longest side (the sine of its smallest angle, give or take a factor of 2)."""


def _check_points(points: np.ndarray, what: str) -> None:
    if points.shape != (4, 2):
        raise ValueError(f"{what}: needs 4 points [x, y], got an array of shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError(f"{what}: every coordinate must be a finite number")
    for i, j in itertools.combinations(range(4), 2):
        if np.array_equal(points[i], points[j]):
            raise ValueError(f"{what}: points {i + 1} and {j + 1} are the same, {points[i].tolist()}")
    for triple in itertools.combinations(range(4), 3):
        a, b, c = points[list(triple)]
        area2 = abs((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))
        longest = max(np.sum((b - a) ** 2), np.sum((c - b) ** 2), np.sum((a - c) ** 2))
        if area2 <= COLLINEAR_TOLERANCE * longest:
            names = ", ".join(str(k + 1) for k in triple)
            raise ValueError(f"{what}: points {names} lie on one line; choose four points, no three of them in a row "
                             "(e.g. the corners of a lane's stretch)")


def homography(image: npt.ArrayLike, ground: npt.ArrayLike) -> np.ndarray:
    """The homography from image pixels to ground metres through four point pairs.

    image: 4 x 2 pixels (u, v), y down; ground: 4 x 2 metres (x, y), point i showing point i.
    Returns 3 x 3 float64, scaled so that w = H[2] . (u, v, 1) is positive at the calibration points
    (and so on the ground side of the horizon). Raises ValueError, one line, on degenerate input
    (module docstring).
    """
    image, ground = np.asarray(image, np.float64), np.asarray(ground, np.float64)
    _check_points(image, "calibration.image")
    _check_points(ground, "calibration.ground")
    h = cv2.getPerspectiveTransform(image.astype(np.float32), ground.astype(np.float32)).astype(np.float64)
    if not np.isfinite(h).all() or abs(np.linalg.det(h)) < 1e-12 * np.abs(h).max() ** 3:
        raise ValueError("calibration: the image and ground points give no invertible mapping; check the points")
    w = np.column_stack((image, np.ones(4))) @ h[2]
    if (w > 0).all() != (w > 0).any() or (np.abs(w) < 1e-12).any():
        raise ValueError("calibration: the ground points are not in the same order as the image points (the mapping "
                         "folds the plane); list both sets going round the quadrilateral the same way")
    return h if w[0] > 0 else -h


@dataclass(frozen=True)
class GroundPlane:
    """A source's calibration: `to_ground` maps pixels to metres, `to_image` back.

    homography: 3 x 3 float64 from `homography` (w > 0 on the ground side of the horizon).
    """

    homography: np.ndarray

    @classmethod
    def from_points(cls, image: npt.ArrayLike, ground: npt.ArrayLike) -> GroundPlane:
        """From four point pairs (see `homography`; ValueError on degenerate input)."""
        return cls(homography(image, ground))

    def to_ground(self, points: npt.ArrayLike) -> np.ndarray:
        """N x 2 pixels (u, v) -> N x 2 metres (x, y), float64; NaN for points on or above the horizon
        (they show no point of the ground)."""
        return _apply(self.homography, points)

    def to_image(self, points: npt.ArrayLike) -> np.ndarray:
        """N x 2 metres (x, y) -> N x 2 pixels (u, v), float64; NaN for ground points behind the camera."""
        return _apply(np.linalg.inv(self.homography), points)


def _apply(h: np.ndarray, points: npt.ArrayLike) -> np.ndarray:
    """Points through h; NaN where w <= 0: with `homography`'s sign, w > 0 exactly where the image
    point lies below the horizon, and the inverse's w is the reciprocal of the forward one."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    out = np.column_stack((p, np.ones(len(p)))) @ h.T
    w = out[:, 2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(w > 0, out[:, :2] / w, np.nan)
