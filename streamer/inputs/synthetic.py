"""Procedural street scenes with exact panoptic ground truth.

A fixed camera looks down a straight street (one-point perspective). The static part -- sky,
buildings, road, sidewalks -- is rendered once per scene. Each frame copies it and paints the cars
and people that are on the street at time `index / fps`, far to near, into the image and into an
owner map with the very same polygons, so the ground truth is exactly what was drawn. Lighting,
blur and sensor noise touch only the image.

Random access: the traffic is scheduled in blocks of `_BLOCK_S` seconds per stream (a lane, a
sidewalk direction, a crossing), each block a pure function of (seed, stream, block), so any frame
can be rendered on its own and gives the same bytes whatever was rendered before.

World units are metres: X to the right, Y up, Z forward from the camera; the road runs along Z.
"""
from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from streamer.boxes import of_xywh
from streamer.frames import LABEL_DIVISOR, Category, Segment

ROAD, SIDEWALK, BUILDING, SKY, CAR, PERSON = 1, 2, 3, 4, 5, 6
CATEGORIES: tuple[Category, ...] = (
    Category(ROAD, "road", False, (128, 64, 128)),
    Category(SIDEWALK, "sidewalk", False, (244, 35, 232)),
    Category(BUILDING, "building", False, (70, 70, 70)),
    Category(SKY, "sky", False, (70, 130, 180)),
    Category(CAR, "car", True, (0, 0, 142)),
    Category(PERSON, "person", True, (220, 20, 60)),
)
_STUFF = (ROAD, SIDEWALK, BUILDING, SKY)

SCENE_SIZE = (640, 360)  # width, height of a synthetic street unless its URI or caller says otherwise
SCENE_FPS = 15.0  # its frame rate, likewise
MIN_VISIBLE_PIXELS = 20
"""Things with fewer visible pixels are left out of the frame altogether (image and ground truth)."""

_SHIFT = 4  # fractional bits of the polygon vertices handed to OpenCV
_ONE = 1 << _SHIFT
MAX_SIDE = 8192  # pixels: a frame this size already takes 200 MB
_REF_ASPECT = 16 / 9  # horizontal geometry is defined for this aspect, then stretched to the size
_BLOCK_S = 60.0  # traffic is scheduled in blocks of this many seconds
_BLOCK_BIAS = 8  # added to block numbers so those reaching back before t=0 stay non-negative
_MAX_PER_BLOCK = 256  # spawns per stream and block; also the stride of track ids
_FIRST_THING_CODE = 8  # owner map: stuff pixels hold their category id, things 8, 9, ... (draw order)
_MAX_THINGS = 255 - _FIRST_THING_CODE
_SCENE_RNG, _TRAFFIC_RNG, _NOISE_RNG = 0, 1, 2  # separate random streams derived from the seed
_MIN_Z = 0.3  # an object with a vertex nearer than this is skipped (the camera set-up puts it below the frame)
_STATIC_NEAR_Z = 1.0  # where the static geometry starts
_MAX_OBJECT_HEIGHT = 2.3  # tallest car or person, metres; constrains the camera height


# --------------------------------------------------------------------------------------------
# public types


@dataclass(frozen=True)
class SceneFrame:
    """One rendered frame and its exact panoptic ground truth."""

    image: np.ndarray  # H x W x 3 uint8, BGR
    panoptic: np.ndarray  # H x W int32, category_id * LABEL_DIVISOR + instance_id
    segments: tuple[Segment, ...]  # one per id in `panoptic`; stuff first, then things by id
    ground: tuple[GroundTruth, ...] = ()  # one per thing segment, in the same order: where it is on the road


@dataclass(frozen=True)
class GroundTruth:
    """One thing's exact state on the ground plane at its frame's time.

    Ground-plane coordinates are metres: x is the world's X (right), y its Z (forward from the
    camera, along the street); `StreetScene.ground_calibration` maps pixels to them. The position is
    the centre of the object's footprint (a car's rectangle, a person's feet).
    """

    track_id: int  # the segment's track_id
    category: int
    position: tuple[float, float]  # (x, y) metres
    velocity: tuple[float, float]  # (dx/dt, dy/dt) metres per second

    @property
    def speed(self) -> float:
        """Metres per second."""
        return math.hypot(*self.velocity)


def parse_synthetic_uri(uri: str) -> dict:
    """'synthetic:street?seed=S&frames=N&size=WxH&fps=F&realtime=0|1' -> {'seed', 'frames', 'size', 'fps', 'realtime'}.

    Every key is optional: seed 0, frames None (endless), size SCENE_SIZE, fps SCENE_FPS, realtime 0
    (1: frames come no faster than fps, like a camera's).
    """
    def fail(why: str) -> ValueError:
        return ValueError(f"bad synthetic URI: {why}")  # callers prefix the URI itself

    scheme, sep, rest = uri.partition(":")
    if not sep or scheme != "synthetic":
        raise fail("expected 'synthetic:street?...'")
    name, _, query = rest.partition("?")
    if name != "street":
        raise fail(f"unknown scene {name!r} (known: 'street')")
    out: dict = {"seed": 0, "frames": None, "size": SCENE_SIZE, "fps": SCENE_FPS, "realtime": False}
    seen: set[str] = set()
    for item in query.split("&") if query else []:
        key, eq, value = item.partition("=")
        if not eq:
            raise fail(f"expected key=value, got {item!r}")
        if key in seen:
            raise fail(f"key {key!r} given twice")
        seen.add(key)
        if key == "seed":
            out["seed"] = _parse_int(value, 0, 2**63 - 1, fail, key)
        elif key == "frames":
            out["frames"] = _parse_int(value, 1, 10**9, fail, key)
        elif key == "fps":
            try:
                fps = float(value)
            except ValueError:
                raise fail(f"fps must be a number, got {value!r}") from None
            if not (math.isfinite(fps) and 0.01 <= fps <= 1000):
                raise fail(f"fps must be between 0.01 and 1000, got {value!r}")
            out["fps"] = fps
        elif key == "size":
            w, x, h = value.lower().partition("x")
            if not x:
                raise fail(f"size must be WxH, got {value!r}")
            out["size"] = (_parse_int(w, 1, MAX_SIDE, fail, "size width"), _parse_int(h, 1, MAX_SIDE, fail, "size height"))
        elif key == "realtime":
            if value not in ("0", "1"):
                raise fail(f"realtime must be 0 or 1, got {value!r}")
            out["realtime"] = value == "1"
        else:
            raise fail(f"unknown key {key!r} (known: seed, frames, size, fps, realtime)")
    return out


def _parse_int(text: str, minimum: int, maximum: int, fail: Callable[[str], ValueError], what: str) -> int:
    if not (text.isascii() and text.isdigit()) or not minimum <= int(text) <= maximum:
        raise fail(f"{what} must be an integer from {minimum} to {maximum}, got {text!r}")
    return int(text)


# --------------------------------------------------------------------------------------------
# camera, light and geometry helpers


@dataclass(frozen=True)
class _Camera:
    width: int
    height: int
    horizon: float  # v of the horizon (fraction of the height from the top)
    vp_u: float  # u of the vanishing point (fraction of the width)
    focal: float  # focal length in image heights
    x: float  # lateral position, metres
    h: float  # height above the road, metres

    def project(self, pts: np.ndarray) -> np.ndarray:
        """World points (N, 3) -> pixel coordinates (N, 2), float."""
        k = self.focal / pts[:, 2]
        u = self.vp_u + (pts[:, 0] - self.x) * k / _REF_ASPECT
        v = self.horizon + (self.h - pts[:, 1]) * k
        return np.stack((u * self.width - 0.5, v * self.height - 0.5), axis=1)

    def pixels_per_metre(self, z: float) -> float:
        """Vertical size in pixels of one metre at depth z."""
        return self.focal / z * self.height

    def ground_to_image(self) -> np.ndarray:
        """The exact homography (3 x 3, float64) from the ground plane Y = 0, (X, Z, 1) in metres, to
        pixels (u, v, 1) as `project` gives them: `project` with Y = 0 written as a matrix."""
        fu = self.focal * self.width / _REF_ASPECT
        return np.array([[fu, self.vp_u * self.width - 0.5, -self.x * fu],
                         [0.0, self.horizon * self.height - 0.5, self.h * self.focal * self.height],
                         [0.0, 1.0, 0.0]])


def _fixed(px: np.ndarray) -> np.ndarray:
    """Float pixel coordinates -> the int32 fixed-point vertices OpenCV takes with shift=_SHIFT."""
    return np.round(px * _ONE).astype(np.int32)


def _fill(img: np.ndarray, pts: np.ndarray, value) -> None:
    """Fills a convex polygon of fixed-point vertices; LINE_8, never anti-aliased."""
    cv2.fillConvexPoly(img, pts, value, cv2.LINE_8, _SHIFT)


@dataclass(frozen=True)
class _Light:
    """Sun shading of surfaces plus the camera's global brightness/contrast/tint, as RGB maths."""

    sun: np.ndarray  # unit vector towards the sun
    ambient: float
    diffuse: float
    gain: np.ndarray  # per channel (RGB)
    offset: np.ndarray  # per channel (RGB)
    haze_rgb: np.ndarray
    haze_dist: float  # metres at which 63 % of the colour is haze

    def shade(self, rgb, normal: np.ndarray | None, z: float | None = None) -> np.ndarray:
        """Albedo -> radiance for a surface with this normal (None: emissive) at depth z (None: no haze)."""
        c = np.asarray(rgb, np.float64)
        if normal is not None:
            c = c * (self.ambient + self.diffuse * max(0.0, float(normal @ self.sun)))
        if z is not None:
            c = c + (self.haze_rgb - c) * (1.0 - math.exp(-z / self.haze_dist))
        return c

    def bgr(self, rgb, normal: np.ndarray | None, z: float | None = None) -> tuple[int, int, int]:
        """The final BGR colour to draw."""
        c = np.clip(self.shade(rgb, normal, z) * self.gain + self.offset, 0, 255)
        return int(round(c[2])), int(round(c[1])), int(round(c[0]))

    def image(self, rgb: np.ndarray) -> np.ndarray:
        """An RGB float image (radiance) -> BGR uint8 through the camera response."""
        c = np.clip(rgb * self.gain + self.offset, 0, 255)
        return np.ascontiguousarray(np.rint(c[..., ::-1])).astype(np.uint8)


def _prism(bx, bz, yb: float, tx, tz, yt: float) -> np.ndarray:
    """8 vertices: bottom rectangle bx * bz at height yb, top rectangle tx * tz at yt."""
    (x0, x1), (z0, z1), (u0, u1), (w0, w1) = bx, bz, tx, tz
    return np.array([[x0, yb, z0], [x1, yb, z0], [x1, yb, z1], [x0, yb, z1],
                     [u0, yt, w0], [u1, yt, w0], [u1, yt, w1], [u0, yt, w1]], np.float64)


# The faces of a _prism with corners ordered p00, p10, p11, p01 (u along +X or +Z, v upwards):
# the z0 end, the z1 end, the x0 side, the x1 side, the top. The bottom is never seen.
_PRISM_FACES = ((0, 1, 5, 4), (3, 2, 6, 7), (0, 3, 7, 4), (1, 2, 6, 5), (4, 5, 6, 7))
_Z0_END, _Z1_END, _X0_SIDE, _X1_SIDE, _TOP = range(5)
_UP = np.array([0.0, 1.0, 0.0])
_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 12, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 12, endpoint=False))], axis=1)


def _bilinear(corners: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    """The sub-quad [u0, u1] x [v0, v1] of a quad given as p00, p10, p11, p01."""
    p00, p10, p11, p01 = corners

    def at(u: float, v: float) -> np.ndarray:
        return (1 - u) * (1 - v) * p00 + u * (1 - v) * p10 + u * v * p11 + (1 - u) * v * p01

    return np.array([at(u0, v0), at(u1, v0), at(u1, v1), at(u0, v1)])


@dataclass(frozen=True)
class _Part:
    idx: np.ndarray  # vertex indices of a convex polygon
    bgr: tuple[int, int, int]
    face: int  # drawn only while this face looks at the camera; -1: always
    category: int  # used by the static scene; things are labelled per object


@dataclass(frozen=True)
class _Model:
    """Convex polygons in draw order over one vertex array, with back-face culling."""

    verts: np.ndarray  # (N, 3)
    parts: tuple[_Part, ...]
    normals: np.ndarray  # (F, 3) outward face normals
    anchors: np.ndarray  # (F, 3) a point on each face

    def visible_faces(self, eye: np.ndarray) -> np.ndarray:
        """Which faces look at `eye` (given in the model's coordinates)."""
        return np.einsum("ij,ij->i", eye - self.anchors, self.normals) > 1e-9


class _ModelBuilder:
    """Collects lit polygons in draw order; colours are final BGR, shaded by the face normals."""

    def __init__(self, light: _Light, haze: bool) -> None:
        self._light = light
        self._haze = haze
        self._verts: list[np.ndarray] = []
        self._count = 0
        self._parts: list[_Part] = []
        self._normals: list[np.ndarray] = []
        self._corners: list[np.ndarray] = []

    def solid(self, verts: np.ndarray, rgb, category: int, faces=_PRISM_FACES) -> list[int]:
        """Draws the faces of a convex solid; returns their face ids."""
        centre = verts.mean(axis=0)
        ids = []
        for quad in faces:
            corners = verts[list(quad)]
            ids.append(self.face(corners, corners[0] - centre))
            self.polygon(corners, rgb, category, face=ids[-1])
        return ids

    def face(self, corners: np.ndarray, outwards: np.ndarray) -> int:
        """Registers a planar quad (p00, p10, p11, p01) for culling and decals; draws nothing."""
        n = np.cross(corners[1] - corners[0], corners[3] - corners[0])
        n = n / np.linalg.norm(n)
        self._normals.append(n if n @ outwards > 0 else -n)
        self._corners.append(corners)
        return len(self._normals) - 1

    def decal(self, face: int, box: tuple[float, float, float, float], rgb, category: int,
              emissive: bool = False) -> None:
        """A sub-quad (u0, u1, v0, v1) of a face, drawn only while the face is visible."""
        self.polygon(_bilinear(self._corners[face], *box), rgb, category, face, emissive)

    def polygon(self, pts: np.ndarray, rgb, category: int, face: int = -1, emissive: bool = False) -> None:
        """A convex polygon (k, 3), lit with its face's normal (no face: lying on the ground)."""
        normal = None if emissive else self._normals[face] if face >= 0 else _UP
        z = float(pts[:, 2].mean()) if self._haze else None
        bgr = self._light.bgr(rgb, normal, z)
        idx = np.arange(self._count, self._count + len(pts))
        self._verts.append(np.asarray(pts, np.float64))
        self._count += len(pts)
        self._parts.append(_Part(idx, bgr, face, category))

    def build(self) -> _Model:
        return _Model(np.concatenate(self._verts), tuple(self._parts),
                      np.array(self._normals).reshape(-1, 3),
                      np.array([c[0] for c in self._corners]).reshape(-1, 3))


def _jitter(rng: np.random.Generator, rgb, amount: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float64) + rng.uniform(-amount, amount, 3), 0, 255)


def _pick(rng: np.random.Generator, options, weights=None):
    p = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
    return options[int(rng.choice(len(options), p=p))]


# --------------------------------------------------------------------------------------------
# scene style (everything fixed per seed)

_SKIES = {  # name: (top RGB, horizon RGB, ambient, diffuse, brightness, tint RGB, haze metres)
    "clear": ((55, 110, 195), (180, 208, 235), 0.55, 0.50, 1.00, (1.00, 1.00, 1.00), 700.0),
    "hazy": ((115, 148, 185), (212, 218, 224), 0.65, 0.32, 1.00, (1.00, 1.00, 1.02), 200.0),
    "overcast": ((128, 133, 142), (196, 199, 204), 0.80, 0.12, 0.92, (0.98, 1.00, 1.03), 320.0),
    "dusk": ((50, 55, 115), (240, 158, 105), 0.48, 0.38, 0.82, (1.10, 0.96, 0.86), 450.0),
}
_FACADES = ((150, 72, 56), (122, 86, 62), (200, 182, 150), (222, 212, 188), (150, 150, 148),
            (92, 94, 98), (226, 226, 220), (150, 170, 192), (216, 196, 132), (160, 182, 150),
            (192, 112, 82), (84, 112, 142), (178, 160, 140))
_CAR_PAINTS = ((236, 236, 236), (26, 26, 30), (182, 184, 188), (112, 114, 118), (172, 28, 28),
               (32, 48, 112), (52, 92, 172), (40, 92, 62), (232, 190, 40), (214, 104, 30),
               (150, 124, 92), (110, 24, 40))
_CAR_PAINT_WEIGHTS = (5, 5, 5, 4, 2, 2, 2, 1, 1, 1, 1, 1)
_SKINS = ((255, 220, 190), (234, 190, 150), (200, 150, 110), (160, 110, 75), (110, 75, 50),
          (80, 55, 40))
_HAIRS = ((20, 16, 14), (70, 45, 30), (130, 90, 50), (210, 180, 110), (170, 170, 170))
_TOPS = ((200, 30, 40), (30, 60, 150), (240, 240, 235), (30, 30, 32), (60, 130, 70), (240, 190, 40),
         (120, 70, 140), (230, 120, 60), (90, 160, 200), (150, 150, 150), (180, 90, 110))
_BOTTOMS = ((40, 60, 110), (28, 28, 32), (90, 90, 95), (170, 150, 110), (60, 50, 40), (120, 30, 40))


@dataclass(frozen=True)
class _Style:
    camera: _Camera
    light: _Light
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    clouds: int
    lanes_per_side: int
    lane_width: float
    keep_right: bool
    sidewalks: tuple[float, float]  # widths left, right (0: none)
    z_end: float  # where the street meets the far row of buildings
    tallness: float  # scale of the building heights, metres
    z_cross: float | None  # the crossing, if people cross
    lane_speeds: tuple[float, ...]  # metres per second, per lane: left lanes outwards, then right
    car_gap_s: float  # mean seconds between cars in a lane
    person_gap_s: float  # mean seconds between people in a sidewalk stream
    noise: int  # uniform sensor noise amplitude, grey levels
    blur: float  # Gaussian blur sigma of the optics, 0 for none

    @property
    def road_half(self) -> float:
        return self.lanes_per_side * self.lane_width


def _make_style(rng: np.random.Generator, size: tuple[int, int]) -> _Style:
    sky_name = _pick(rng, tuple(_SKIES), (4, 2, 2, 2))
    top, horizon_rgb, ambient, diffuse, brightness, tint, haze = _SKIES[sky_name]
    sky_top, sky_horizon = _jitter(rng, top, 14), _jitter(rng, horizon_rgb, 14)
    elevation, azimuth = rng.uniform(0.25, 1.05), rng.uniform(0, 2 * np.pi)
    sun = np.array([math.cos(elevation) * math.sin(azimuth), math.sin(elevation),
                    math.cos(elevation) * math.cos(azimuth)])
    contrast = rng.uniform(0.85, 1.15)
    scale = brightness * rng.uniform(0.85, 1.15) * np.asarray(tint) * rng.uniform(0.95, 1.05, 3)
    light = _Light(sun, ambient, diffuse, contrast * scale, 128.0 * (1 - contrast) * scale,
                   sky_horizon, haze * rng.uniform(0.7, 1.4))

    horizon = rng.uniform(0.32, 0.45)
    focal = rng.uniform(1.0, 1.45)
    # High enough that an object whose far end is 6 m away is still below the frame.
    min_h = _MAX_OBJECT_HEIGHT + 6.0 * (1.0 - horizon) / focal
    lanes = 1 if rng.random() < 0.6 else 2
    lane_width = rng.uniform(3.0, 3.7)
    side = [rng.uniform(2.0, 5.5) if rng.random() < 0.85 else 0.0 for _ in range(2)]
    if side == [0.0, 0.0]:
        side[int(rng.integers(2))] = rng.uniform(2.0, 5.5)
    camera = _Camera(size[0], size[1], horizon, rng.uniform(0.4, 0.6), focal,
                     rng.uniform(-0.5, 0.5) * lanes * lane_width, max(rng.uniform(4.0, 7.5), min_h))
    near_ground_z = focal * camera.h / (1.0 - horizon)  # depth seen at the bottom row
    crossing = min(side) > 0 and rng.random() < 0.7
    return _Style(
        camera=camera, light=light, sky_top=sky_top, sky_horizon=sky_horizon,
        clouds=int(rng.poisson({"clear": 3, "hazy": 2, "overcast": 7, "dusk": 4}[sky_name])),
        lanes_per_side=lanes, lane_width=lane_width, keep_right=bool(rng.random() < 0.75),
        sidewalks=(side[0], side[1]), z_end=rng.uniform(170, 320), tallness=rng.uniform(2.0, 7.5),
        z_cross=near_ground_z + rng.uniform(3, 16) if crossing else None,
        lane_speeds=tuple(float(v) for v in rng.uniform(6.0, 14.0, 2 * lanes)),
        car_gap_s=lanes * rng.uniform(5.0, 11.0),
        person_gap_s=sum(w > 0 for w in side) * rng.uniform(30.0, 55.0),
        noise=int(rng.integers(1, 8)), blur=float(rng.uniform(0.4, 0.9)) if rng.random() < 0.6 else 0.0,
    )


# --------------------------------------------------------------------------------------------
# the static scene


def _ground_quad(x0: float, x1: float, z0: float, z1: float) -> np.ndarray:
    return np.array([[x0, 0.0, z0], [x1, 0.0, z0], [x1, 0.0, z1], [x0, 0.0, z1]])


def _add_ground(b: _ModelBuilder, style: _Style, rng: np.random.Generator) -> None:
    """Road, lane markings, crossing, curbs and pavement joints, all flat on Y = 0."""
    cam, z0, z1 = style.camera, _STATIC_NEAR_Z, style.z_end
    half = style.road_half
    asphalt = _jitter(rng, (rng.uniform(70, 115),) * 3, 8)
    paving = _jitter(rng, _pick(rng, ((168, 166, 160), (190, 180, 160), (150, 120, 110), (140, 142, 146))), 10)
    far = max(style.sidewalks) + half + 60.0
    b.polygon(_ground_quad(-far, far, z0, z1), paving, SIDEWALK)
    b.polygon(_ground_quad(-half, half, z0, z1), asphalt, ROAD)
    for _ in range(int(rng.integers(0, 5))):  # repair patches
        x, z = rng.uniform(-half, half - 1.5), rng.uniform(z0 + 4, 60)
        b.polygon(_ground_quad(x, x + rng.uniform(0.8, 2.5), z, z + rng.uniform(1, 5)),
                  asphalt * rng.uniform(0.8, 0.92), ROAD)

    def visible_until(width: float) -> float:
        """Depth beyond which a stripe of this width is under half a pixel wide."""
        return min(z1, cam.focal * width * cam.height / 0.5)

    def stripe(x: float, width: float, rgb, dash: float | None, gap: float, category: int) -> None:
        zmax = visible_until(width)
        if dash is None:
            b.polygon(_ground_quad(x - width / 2, x + width / 2, z0, zmax), rgb, category)
            return
        for z in np.arange(z0 + rng.uniform(0, dash + gap), zmax, dash + gap):
            b.polygon(_ground_quad(x - width / 2, x + width / 2, z, min(z + dash, zmax)), rgb, category)

    white = _jitter(rng, (225, 225, 215), 10)
    dash, gap = rng.uniform(2.0, 4.0), rng.uniform(4.0, 9.0)
    if rng.random() < 0.4:  # double solid yellow centre line
        yellow = _jitter(rng, (225, 180, 40), 12)
        stripe(-0.12, 0.12, yellow, None, 0, ROAD)
        stripe(0.12, 0.12, yellow, None, 0, ROAD)
    else:
        stripe(0.0, 0.14, white, dash, gap, ROAD)
    if style.lanes_per_side == 2:
        for s in (-1, 1):
            stripe(s * style.lane_width, 0.12, white, dash, gap, ROAD)
    if rng.random() < 0.7:
        for s in (-1, 1):
            stripe(s * (half - 0.25), 0.15, white, None, 0, ROAD)
    if style.z_cross is not None:  # zebra crossing
        zc, length = style.z_cross, rng.uniform(2.5, 4.0)
        for x in np.arange(-half + 0.3, half - 0.5, 1.0):
            b.polygon(_ground_quad(x, x + 0.5, zc - length / 2, zc + length / 2), white, ROAD)

    curb = _jitter(rng, (195, 195, 190), 10)
    joint = paving * 0.8
    step = rng.uniform(1.2, 3.0)
    for s, width in zip((-1, 1), style.sidewalks):
        if width <= 0:
            continue
        edge = s * half
        b.polygon(_ground_quad(min(edge, edge + s * 0.25), max(edge, edge + s * 0.25), z0,
                               visible_until(0.25)), curb, SIDEWALK)
        outer = edge + s * width
        for z in np.arange(z0 + step, visible_until(0.6 * step), step):
            b.polygon(_ground_quad(min(edge, outer), max(edge, outer), z, z + 0.06), joint, SIDEWALK)


def _add_building(b: _ModelBuilder, rng: np.random.Generator, style: _Style, xs: tuple[float, float],
                  zs: tuple[float, float], height: float, facade_side: int) -> None:
    """A box xs * zs * [0, height] whose face `facade_side` (a _PRISM_FACES index) has windows.

    `rng` is the building's own, so skipping windows too small to see leaves the rest of the scene alone.
    """
    dusk = style.light.ambient < 0.5
    wall = _jitter(rng, _pick(rng, _FACADES), 12)
    faces = b.solid(_prism(xs, zs, 0.0, xs, zs, height), wall, BUILDING)
    facade = faces[facade_side]
    along_z = facade_side in (_X0_SIDE, _X1_SIDE)  # else the facade looks at the camera
    span = (zs[1] - zs[0]) if along_z else (xs[1] - xs[0])
    b.decal(facade, (0, 1, 1 - 0.6 / height, 1), wall * 0.72, BUILDING)  # cornice

    def ppm(u: float) -> float:  # pixels per metre at facade position u
        return style.camera.pixels_per_metre(zs[0] + u * (zs[1] - zs[0]) if along_z else zs[0])

    floor_h = rng.uniform(2.8, 3.6)
    ground_h = floor_h * rng.uniform(1.1, 1.4)
    cell = rng.uniform(2.0, 3.6)
    n_cols = max(1, int((span - 1.0) // cell))
    n_rows = int((height - ground_h - 0.8) // floor_h)
    win_w, win_h = rng.uniform(0.4, 0.7), rng.uniform(0.4, 0.65)
    glass = _jitter(rng, _pick(rng, ((40, 48, 58), (70, 86, 104), (96, 112, 128), (55, 60, 52))), 10)
    lit = (245, 214, 140)
    margin = (1 - n_cols * cell / span) / 2
    for col in range(n_cols):
        u0 = margin + (col + (1 - win_w) / 2) * cell / span
        if win_h * floor_h * ppm(u0) < 1.2:  # too small to show
            continue
        for row in range(n_rows):
            v0 = (ground_h + row * floor_h + (1 - win_h) * floor_h * 0.6) / height
            glow = dusk and rng.random() < 0.3
            b.decal(facade, (u0, u0 + win_w * cell / span, v0, v0 + win_h * floor_h / height),
                    lit if glow else _jitter(rng, glass, 12), BUILDING, emissive=glow)
    if ground_h * ppm(0.5) < 2.0:
        return
    if rng.random() < 0.55:  # shop windows, maybe an awning
        for col in range(n_cols):
            u0 = margin + (col + 0.08) * cell / span
            b.decal(facade, (u0, u0 + 0.84 * cell / span, 0.02 / height, 0.75 * ground_h / height),
                    _jitter(rng, glass, 10) * 1.1, BUILDING)
        if rng.random() < 0.5:
            b.decal(facade, (margin, 1 - margin, 0.78 * ground_h / height, 0.92 * ground_h / height),
                    _jitter(rng, _pick(rng, _TOPS), 20), BUILDING)
    else:  # a door
        u0 = rng.uniform(0.1, 0.8)
        b.decal(facade, (u0, u0 + 1.2 / span, 0.0, 2.2 / height), wall * 0.35, BUILDING)


def _add_buildings(b: _ModelBuilder, style: _Style, rng: np.random.Generator) -> None:
    """The far row across the street end, then both sides' rows from far to near (painter's order)."""
    cam, z_end = style.camera, style.z_end
    x = -260.0
    while x < 260.0:  # the far row, facing the camera, always taller than the horizon
        w = rng.uniform(10, 30)
        height = cam.h + rng.uniform(3, 35)
        _add_building(b, rng.spawn(1)[0], style, (x, x + w), (z_end, z_end + 15), height, _Z0_END)
        x += w
    rows = []
    for s, width in zip((-1, 1), style.sidewalks):
        z = _STATIC_NEAR_Z
        while z < z_end:
            length = min(rng.uniform(6, 26), z_end - z)
            street = s * (style.road_half + width + (rng.uniform(0, 1.8) if width > 0 else 0.0))
            back = street + s * rng.uniform(10, 20)
            height = float(min(rng.gamma(2.2, style.tallness) + 4.5, 60))
            rows.append(((min(street, back), max(street, back)), (z, z + length), height,
                         _X1_SIDE if s < 0 else _X0_SIDE))
            z += length + (rng.uniform(2, 6) if rng.random() < 0.12 else 0.0)  # sometimes an alley
    for xs, zs, height, facade in sorted(rows, key=lambda r: -r[1][0]):
        _add_building(b, rng.spawn(1)[0], style, xs, zs, height, facade)


def _static_scene(style: _Style, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The background image (BGR) and its owner map (stuff category ids)."""
    cam, light = style.camera, style.light
    h, w = cam.height, cam.width
    v = (np.arange(h, dtype=np.float64) + 0.5) / h
    t = np.clip(v / cam.horizon, 0, 1) ** 0.8
    sky = style.sky_top + (style.sky_horizon - style.sky_top) * t[:, None]
    rgb = np.repeat(sky[:, None, :], w, axis=1)
    if style.clouds:  # soft blobs, image only
        mask: np.ndarray = np.zeros((h, w), np.float32)
        for _ in range(style.clouds):
            cx, cy = rng.uniform(0, w), rng.uniform(0.05, 0.85) * cam.horizon * h
            ax, ay = rng.uniform(0.05, 0.2) * w, rng.uniform(0.015, 0.05) * h
            cv2.ellipse(mask, (int(cx), int(cy)), (max(1, int(ax)), max(1, int(ay))), 0, 0, 360,
                        float(rng.uniform(0.4, 0.9)), -1)
        mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, 0.02 * w))
        cloud = style.sky_horizon * 0.5 + 0.5 * np.array([245.0, 245.0, 245.0])
        rgb = rgb + (cloud - rgb) * mask[..., None]
    image = light.image(rgb)
    owner = np.full((h, w), SKY, np.uint8)

    b = _ModelBuilder(light, haze=True)
    _add_ground(b, style, rng)
    _add_buildings(b, style, rng)
    model = b.build()
    fixed = _fixed(cam.project(model.verts))
    visible = model.visible_faces(np.array([cam.x, cam.h, 0.0]))
    for part in model.parts:
        if part.face < 0 or visible[part.face]:
            _fill(image, fixed[part.idx], part.bgr)
            _fill(owner, fixed[part.idx], part.category)

    grain = cv2.resize(rng.normal(1.0, 0.035, (max(1, h // 4), max(1, w // 4))).astype(np.float32),
                       (w, h), interpolation=cv2.INTER_LINEAR)  # low-frequency texture, image only
    image = np.clip(image * grain[..., None], 0, 255).astype(np.uint8)
    return image, owner


# --------------------------------------------------------------------------------------------
# traffic


@dataclass(frozen=True)
class _Stream:
    """Where and how often objects of one kind appear."""

    kind: int  # CAR or PERSON
    path: tuple[tuple[float, float], ...]  # (X, Z) waypoints
    speed: tuple[float, float]  # range, metres per second (a lane has one speed: no overtaking)
    mean_gap: float  # seconds between spawns, on average
    min_gap: float  # seconds; keeps cars of one lane apart
    jitter_x: float  # lateral spread of the path per object


@dataclass(frozen=True)
class _PersonLook:
    height: float
    build: float
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    top: tuple[int, int, int]
    bottom: tuple[int, int, int]
    shoes: tuple[int, int, int]
    long_hair: bool


@dataclass(frozen=True)
class _CarLook:
    model: _Model  # centred on the car's footprint
    width: float
    length: float


@dataclass(frozen=True)
class _Mover:
    """One object's schedule; its look is built from look_seed when it is first drawn."""

    track_id: int
    kind: int
    t0: float
    speed: float
    path: np.ndarray  # (k, 2) X, Z waypoints
    cum: np.ndarray  # (k,) arc length at each waypoint
    look_seed: int

    @property
    def heading(self) -> int:
        """+1 while moving away from the camera at the end of its path, else -1."""
        return 1 if self.path[-1, 1] > self.path[-2, 1] else -1

    @property
    def t1(self) -> float:
        return self.t0 + self.cum[-1] / self.speed

    def velocity(self, t: float) -> tuple[float, float]:
        """(dX/dt, dZ/dt) in metres per second at time t: along the path leg it is on."""
        s = (t - self.t0) * self.speed
        i = min(int(np.searchsorted(self.cum, s, side="right")) - 1, len(self.cum) - 2)
        d = self.path[i + 1] - self.path[i]
        d = d / max(float(np.hypot(*d)), 1e-9) * self.speed
        return float(d[0]), float(d[1])

    def at(self, t: float) -> tuple[float, float, float, bool]:
        """X, Z, distance walked, and whether it is moving across the road (X) at time t."""
        s = (t - self.t0) * self.speed
        i = min(int(np.searchsorted(self.cum, s, side="right")) - 1, len(self.cum) - 2)
        a, b = self.path[i], self.path[i + 1]
        f = (s - self.cum[i]) / max(self.cum[i + 1] - self.cum[i], 1e-9)
        x, z = a + (b - a) * f
        return float(x), float(z), s, abs(b[0] - a[0]) > abs(b[1] - a[1])


def _streams(style: _Style) -> tuple[_Stream, ...]:
    """Car lanes (one speed each), sidewalk walkers both ways, and people using the crossing."""
    out: list[_Stream] = []
    z_far = style.z_end - 4.0
    for k in range(style.lanes_per_side):
        for s in (-1, 1):
            x = s * style.lane_width * (k + 0.5)
            away = (s > 0) == style.keep_right
            # From 3.2 m (centre) the near end of a car up to 5.3 m long is in front of the camera, and
            # the far end within 6 m, which _make_style keeps below the frame: cars drive in unseen.
            z_a, z_b = (3.2, z_far) if away else (z_far, 3.2)
            speed = style.lane_speeds[2 * k + (s > 0)]
            out.append(_Stream(CAR, ((x, z_a), (x, z_b)), (speed, speed), style.car_gap_s, 8.0 / speed, 0.0))
    p_far = min(style.z_end - 4.0, 95.0)
    for s, width in zip((-1, 1), style.sidewalks):
        if width > 0:
            x = s * (style.road_half + width / 2)
            for path in (((x, 0.6), (x, p_far)), ((x, p_far), (x, 0.6))):
                out.append(_Stream(PERSON, path, (1.0, 1.7), style.person_gap_s, 0.5, 0.3 * width))
    if style.z_cross is not None:
        xl = -(style.road_half + style.sidewalks[0] / 2)
        xr = style.road_half + style.sidewalks[1] / 2
        zc = style.z_cross
        for xa, xb in ((xl, xr), (xr, xl)):
            out.append(_Stream(PERSON, ((xa, 0.6), (xa, zc), (xb, zc), (xb, p_far)), (1.1, 1.7),
                               1.5 * style.person_gap_s, 0.5, 0.0))
    return tuple(out)


# length, width, clearance, body height, cabin height, cabin base and roof as fractions of the
# length from the rear, axles as fractions from the rear
_CAR_SHAPES = {
    "sedan": ((4.2, 4.9), (1.70, 1.85), 0.28, (0.55, 0.68), (0.45, 0.55), (0.12, 0.72), (0.25, 0.60), (0.18, 0.80)),
    "hatchback": ((3.6, 4.2), (1.65, 1.80), 0.27, (0.55, 0.65), (0.50, 0.58), (0.03, 0.70), (0.08, 0.55), (0.15, 0.82)),
    "suv": ((4.3, 4.9), (1.80, 1.98), 0.38, (0.70, 0.82), (0.58, 0.70), (0.03, 0.74), (0.06, 0.62), (0.17, 0.81)),
    "van": ((4.7, 5.3), (1.85, 2.00), 0.30, (0.80, 0.90), (0.85, 0.98), (0.00, 0.84), (0.02, 0.76), (0.15, 0.84)),
}


def _car_look(rng: np.random.Generator, light: _Light, heading: int) -> _CarLook:
    """A car driving towards +Z (heading 1) or -Z (-1), centred on the origin; with width and length."""
    name = _pick(rng, tuple(_CAR_SHAPES), (5, 3, 3, 1.5))
    lengths, widths, clear, bodies, cabins, base, roof, axles = _CAR_SHAPES[name]
    length, width = rng.uniform(*lengths), rng.uniform(*widths)
    top = clear + rng.uniform(*bodies)
    cab_top = top + rng.uniform(*cabins)
    paint = _jitter(rng, _pick(rng, _CAR_PAINTS, _CAR_PAINT_WEIGHTS), 10)
    glass = _jitter(rng, (36, 44, 54), 10)
    radius = 0.5 * clear + 0.17
    hw = width / 2

    def z(f: float) -> float:  # f: 0 at the rear, 1 at the front
        return heading * (f - 0.5) * length

    b = _ModelBuilder(light, haze=False)
    body = _prism((-hw, hw), (z(0), z(1)), clear, (-hw, hw), (z(0), z(1)), top)
    rear_end = b.face(body[[0, 1, 5, 4]], np.array([0.0, 0.0, -heading]))
    front_end = b.face(body[[3, 2, 6, 7]], np.array([0.0, 0.0, heading]))
    tyre = (22, 22, 24)
    for end, axle in ((rear_end, axles[0]), (front_end, axles[1])):  # seen under the bumper
        for s in (-1, 1):
            xa, xb = sorted((s * (hw - 0.08), s * (hw - 0.32)))
            quad = np.array([[xa, 0.0, z(axle)], [xb, 0.0, z(axle)], [xb, 1.8 * radius, z(axle)],
                             [xa, 1.8 * radius, z(axle)]])
            b.polygon(quad, tyre, CAR, face=end)
    faces = b.solid(body, paint, CAR)
    b.decal(faces[_Z0_END], (0.03, 0.2, 0.55, 0.85), (200, 28, 28), CAR, emissive=True)
    b.decal(faces[_Z0_END], (0.8, 0.97, 0.55, 0.85), (200, 28, 28), CAR, emissive=True)
    b.decal(faces[_Z0_END], (0.38, 0.62, 0.15, 0.4), (226, 226, 216), CAR)
    b.decal(faces[_Z1_END], (0.04, 0.22, 0.5, 0.8), (240, 238, 222), CAR, emissive=True)
    b.decal(faces[_Z1_END], (0.78, 0.96, 0.5, 0.8), (240, 238, 222), CAR, emissive=True)
    b.decal(faces[_Z1_END], (0.3, 0.7, 0.45, 0.8), (30, 30, 32), CAR)
    b.decal(faces[_Z1_END], (0.38, 0.62, 0.08, 0.3), (226, 226, 216), CAR)
    for side, x in ((faces[_X0_SIDE], -hw - 0.01), (faces[_X1_SIDE], hw + 0.01)):
        for axle in axles:
            for r, rgb in ((radius, tyre), (0.5 * radius, (150, 150, 156))):
                disc = np.column_stack((np.full(12, x), radius + r * _CIRCLE[:, 1], z(axle) + r * _CIRCLE[:, 0]))
                b.polygon(disc, rgb, CAR, face=side)
    ci, ri = 0.92 * hw, 0.8 * hw
    cabin = b.solid(_prism((-ci, ci), (z(base[0]), z(base[1])), top, (-ri, ri), (z(roof[0]), z(roof[1])), cab_top),
                    paint, CAR)
    for face in (cabin[_Z0_END], cabin[_Z1_END]):
        b.decal(face, (0.07, 0.93, 0.1, 0.9), glass, CAR)
    for face in (cabin[_X0_SIDE], cabin[_X1_SIDE]):
        b.decal(face, (0.1, 0.48, 0.12, 0.88), glass, CAR)
        b.decal(face, (0.53, 0.9, 0.12, 0.88), glass, CAR)
    return _CarLook(b.build(), width, length)


def _person_look(rng: np.random.Generator, light: _Light) -> _PersonLook:
    facing = np.array([0.0, 0.45, -0.89])  # people are flat cut-outs turned to the camera

    def colour(options, amount: float) -> tuple[int, int, int]:
        return light.bgr(_jitter(rng, _pick(rng, options), amount), facing)

    child = rng.random() < 0.12
    height = rng.uniform(1.05, 1.35) if child else float(np.clip(rng.normal(1.72, 0.08), 1.5, 1.95))
    return _PersonLook(height=height, build=rng.uniform(0.85, 1.2), skin=colour(_SKINS, 8),
                       hair=colour(_HAIRS, 10), top=colour(_TOPS, 25), bottom=colour(_BOTTOMS, 15),
                       shoes=colour(((20, 20, 20), (90, 60, 40), (230, 230, 230)), 10),
                       long_hair=bool(rng.random() < 0.35))


def _limb(p: tuple[float, float], q: tuple[float, float], width: float) -> np.ndarray:
    """A quad of this width from point p to point q."""
    d = np.subtract(q, p)
    n = np.array([-d[1], d[0]]) * (width / 2 / max(float(np.hypot(*d)), 1e-9))
    return np.array([p + n, q + n, q - n, p - n])


def _box2(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def _person_polys(look: _PersonLook, phase: float, side_view: bool) -> list[tuple[np.ndarray, tuple]]:
    """The cut-out of a walking person in metres (x right, y up, feet at y=0), back to front."""
    h, bw = look.height, look.build
    y_sh, y_hip, y_head, r_head = 0.815 * h, 0.5 * h, 0.93 * h, 0.062 * h
    sw, hip_w = 0.25 * h * bw, 0.18 * h * bw
    swing = math.sin(phase)
    if side_view:
        hips, feet, lifts = (0.0, 0.0), (0.17 * h * swing, -0.17 * h * swing), (0.0, 0.0)
        shoulders, hands = (0.0, 0.0), (-0.12 * h * swing, 0.12 * h * swing)
        sw, hip_w = 0.6 * sw, 0.75 * hip_w
    else:
        hips = feet = (-0.045 * h * bw, 0.045 * h * bw)
        lifts = (0.035 * h * max(0.0, swing), 0.035 * h * max(0.0, -swing))
        shoulders = (-(sw / 2 - 0.02 * h), sw / 2 - 0.02 * h)
        hands = (-(sw / 2 + 0.01 * h), sw / 2 + 0.01 * h)

    def leg(i: int) -> list[tuple[np.ndarray, tuple]]:
        foot_y = lifts[i] + 0.03 * h
        shoe = _box2(feet[i] - 0.035 * h, feet[i] + 0.035 * h + (0.03 * h if side_view else 0), lifts[i], foot_y + 0.01 * h)
        return [(_limb((hips[i], y_hip), (feet[i], foot_y), 0.075 * h * bw), look.bottom), (shoe, look.shoes)]

    def arm(i: int) -> list[tuple[np.ndarray, tuple]]:
        hand_y = (0.43 + 0.02 * abs(swing)) * h
        return [(_limb((shoulders[i], y_sh - 0.02 * h), (hands[i], hand_y), 0.06 * h * bw), look.top),
                (_box2(hands[i] - 0.02 * h, hands[i] + 0.02 * h, hand_y - 0.045 * h, hand_y + 0.01 * h), look.skin)]

    torso = np.array([[-sw / 2, y_sh], [sw / 2, y_sh], [hip_w / 2, y_hip - 0.03 * h], [-hip_w / 2, y_hip - 0.03 * h]])
    head = np.column_stack((0.8 * r_head * _CIRCLE[:, 0], y_head + r_head * _CIRCLE[:, 1]))
    hair = head[[0, 1, 2, 3, 4, 5, 6]] * [1.08, 1.0] + [0.0, 0.012 * h]  # the upper half of the head
    polys = leg(1) + arm(1) if side_view else leg(0) + leg(1)
    if look.long_hair:
        polys.append((_box2(-0.9 * r_head, 0.9 * r_head, y_sh - 0.04 * h, y_head), look.hair))
    polys.append((torso, look.top))
    polys += leg(0) + arm(0) if side_view else arm(0) + arm(1)
    polys += [(head, look.skin), (hair, look.hair)]
    return polys


@dataclass(frozen=True)
class _Item:
    """One thing ready to draw this frame."""

    track_id: int
    category: int
    depth: float  # painter's order: larger first
    polys: tuple[tuple[np.ndarray, tuple[int, int, int]], ...]  # fixed-point vertices, BGR
    shadow: np.ndarray  # fixed-point ground polygon, darkened in the image only
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), holds every pixel it can cover


def _pixel_box(px: np.ndarray, width: int, height: int) -> tuple[int, int, int, int] | None:
    """A clipped pixel box that surely holds what these vertices can fill; None if it is empty."""
    lo, hi = np.floor(px.min(axis=0)) - 1, np.ceil(px.max(axis=0)) + 2
    x0, y0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
    x1, y1 = min(int(hi[0]), width), min(int(hi[1]), height)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _darken(img: np.ndarray, pts: np.ndarray, factor: float) -> None:
    """Multiplies the pixels of a convex fixed-point polygon by factor (in place)."""
    box = _pixel_box(pts / _ONE, img.shape[1], img.shape[0])
    if box is None:
        return
    x0, y0, x1, y1 = box
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    _fill(mask, pts - np.array([x0 * _ONE, y0 * _ONE], np.int32), 1)
    roi = img[y0:y1, x0:x1]
    sel = mask.astype(bool)
    roi[sel] = (roi[sel] * factor).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# the scene


class StreetScene:
    """An endless, deterministic street video with exact panoptic ground truth."""

    def __init__(self, seed: int, size: tuple[int, int] = SCENE_SIZE, fps: float = SCENE_FPS) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (width, height) with positive ints, got {size}")
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be positive, got {fps}")
        self.seed, self.size, self.fps = int(seed), (int(size[0]), int(size[1])), float(fps)
        rng = np.random.default_rng([self.seed, _SCENE_RNG])
        self._style = _make_style(rng, self.size)
        self._image, self._owner = _static_scene(self._style, rng)
        self._streams = _streams(self._style)
        self._lifetimes = tuple(_path_length(s.path) / s.speed[0] for s in self._streams)
        assert max(self._lifetimes) < _BLOCK_BIAS * _BLOCK_S
        self._block = functools.lru_cache(maxsize=256)(self._make_block)
        self._look = functools.lru_cache(maxsize=1024)(self._make_look)

    def render(self, index: int) -> SceneFrame:
        """Frame `index` (>= 0) at time index / fps; the same bytes whatever was rendered before."""
        if index < 0:
            raise ValueError(f"frame index must be >= 0, got {index}")
        t = index / self.fps
        items = self._items(t)
        owner, counts, items = self._label(items)
        image = self._paint(items, index)
        panoptic, segments = _ground_truth(owner, counts, items)
        movers = {m.track_id: m for m in self._active(t)}
        ground = []
        for segment in segments:
            if segment.isthing:
                assert segment.track_id is not None  # every thing of the ground truth has its track
                mover = movers[segment.track_id]
                x, z, _, _ = mover.at(t)
                ground.append(GroundTruth(segment.track_id, segment.category_id, (x, z), mover.velocity(t)))
        return SceneFrame(image, panoptic, segments, tuple(ground))

    def ground_calibration(self) -> tuple[np.ndarray, np.ndarray]:
        """The camera's exact image <-> ground calibration as four point pairs: (image, ground), each
        4 x 2 float64; image points are pixels (u, v), ground points metres (x, y) as in GroundTruth.
        The ground points are the corners of a rectangle on the road, from 1.2 to 3 times the depth
        seen at the bottom row; any four of the plane give the same homography (`ground_to_image`)."""
        style = self._style
        cam = style.camera
        near = cam.focal * cam.h / (1.0 - cam.horizon)
        half = style.road_half
        ground = np.array([[-half, 1.2 * near], [half, 1.2 * near], [half, 3.0 * near], [-half, 3.0 * near]])
        image = cam.project(np.column_stack((ground[:, 0], np.zeros(4), ground[:, 1])))
        return image, ground

    def ground_to_image(self) -> np.ndarray:
        """The exact homography (3 x 3, float64) from ground metres (x, y, 1) to pixels (u, v, 1)."""
        return self._style.camera.ground_to_image()

    # -- traffic

    def _make_block(self, stream_index: int, block: int) -> tuple[_Mover, ...]:
        """The objects of one stream that start within one block of time."""
        stream = self._streams[stream_index]
        rng = np.random.default_rng([self.seed, _TRAFFIC_RNG, stream_index, block + _BLOCK_BIAS])
        start, end = block * _BLOCK_S, (block + 1) * _BLOCK_S
        extra = stream.mean_gap - stream.min_gap
        t = start + stream.min_gap / 2 + rng.exponential(extra)
        movers: list[_Mover] = []
        while t < end - stream.min_gap / 2 and len(movers) < _MAX_PER_BLOCK:
            track_id = 1 + len(movers) + _MAX_PER_BLOCK * (stream_index + len(self._streams) * (block + _BLOCK_BIAS))
            movers.append(self._make_mover(stream, rng, track_id, t))
            t += stream.min_gap + rng.exponential(extra)
        return tuple(movers)

    @staticmethod
    def _make_mover(stream: _Stream, rng: np.random.Generator, track_id: int, t0: float) -> _Mover:
        path = np.array(stream.path) + [rng.uniform(-stream.jitter_x, stream.jitter_x), 0.0]
        cum = np.concatenate(([0.0], np.cumsum(np.hypot(*np.diff(path, axis=0).T))))
        return _Mover(track_id, stream.kind, t0, rng.uniform(*stream.speed), path, cum,
                      int(rng.integers(2**63)))

    def _make_look(self, kind: int, look_seed: int, heading: int) -> _CarLook | _PersonLook:
        rng = np.random.default_rng(look_seed)
        if kind == CAR:
            return _car_look(rng, self._style.light, heading)
        return _person_look(rng, self._style.light)

    def _active(self, t: float) -> list[_Mover]:
        out = []
        for i, life in enumerate(self._lifetimes):
            for block in range(math.floor((t - life) / _BLOCK_S), math.floor(t / _BLOCK_S) + 1):
                out += [m for m in self._block(i, block) if m.t0 <= t <= m.t1]
        return out

    # -- drawing

    def _items(self, t: float) -> list[_Item]:
        """The things that can be seen at time t, far to near."""
        items = []
        for m in self._active(t):
            item = self._car_item(m, t) if m.kind == CAR else self._person_item(m, t)
            if item is not None:
                items.append(item)
        items.sort(key=lambda it: (-it.depth, it.track_id))
        return items[-_MAX_THINGS:]

    def _finish_item(self, m: _Mover, depth: float, verts: np.ndarray, polys, shadow: np.ndarray) -> _Item | None:
        """Projects an object; None if it is off-screen, too near or surely too small."""
        if verts[:, 2].min() < _MIN_Z:
            return None
        cam = self._style.camera
        px = cam.project(verts)
        box = _pixel_box(px, cam.width, cam.height)
        if box is None or (box[2] - box[0]) * (box[3] - box[1]) < MIN_VISIBLE_PIXELS:
            return None
        fixed = _fixed(px)
        return _Item(m.track_id, m.kind, depth, tuple((fixed[idx], bgr) for idx, bgr in polys),
                     _fixed(cam.project(shadow)), box)

    def _car_item(self, m: _Mover, t: float) -> _Item | None:
        x, z, _, _ = m.at(t)
        look = self._look(CAR, m.look_seed, m.heading)
        assert isinstance(look, _CarLook)
        model, width, length = look.model, look.width, look.length
        offset = np.array([x, 0.0, z])
        cam = self._style.camera
        visible = model.visible_faces(np.array([cam.x, cam.h, 0.0]) - offset)
        polys = [(p.idx, p.bgr) for p in model.parts if p.face < 0 or visible[p.face]]
        shadow = _ground_quad(x - width / 2 - 0.12, x + width / 2 + 0.12, z - length / 2 - 0.1, z + length / 2 + 0.1)
        return self._finish_item(m, z - length / 2, model.verts + offset, polys, shadow)

    def _person_item(self, m: _Mover, t: float) -> _Item | None:
        x, z, walked, crossing = m.at(t)
        look = self._look(PERSON, m.look_seed, 0)
        assert isinstance(look, _PersonLook)
        parts = _person_polys(look, 2 * math.pi * walked / (0.8 * look.height), crossing)
        local = np.concatenate([p for p, _ in parts])
        verts = np.column_stack((x + local[:, 0], local[:, 1], np.full(len(local), z)))
        ends = np.cumsum([0] + [len(p) for p, _ in parts])
        polys = [(np.arange(a, b), bgr) for a, b, (_, bgr) in zip(ends[:-1], ends[1:], parts)]
        r = 0.2 * look.height
        shadow = np.column_stack((x + r * _CIRCLE[:, 0], np.zeros(12), z + 0.6 * r * _CIRCLE[:, 1]))
        return self._finish_item(m, z, verts, polys, shadow)

    def _label(self, items: list[_Item]) -> tuple[np.ndarray, np.ndarray, list[_Item]]:
        """The owner map; things with too few visible pixels are dropped and the rest redrawn."""
        while True:
            owner = self._owner.copy()
            for code, item in enumerate(items, _FIRST_THING_CODE):
                for pts, _ in item.polys:
                    _fill(owner, pts, code)
            counts = np.bincount(owner.ravel(), minlength=256)
            kept = [it for code, it in enumerate(items, _FIRST_THING_CODE) if counts[code] >= MIN_VISIBLE_PIXELS]
            if len(kept) == len(items):
                return owner, counts, items
            items = kept

    def _paint(self, items: list[_Item], index: int) -> np.ndarray:
        """The image: background, shadows, things (far to near), optics blur, sensor noise."""
        style = self._style
        image = self._image.copy()
        for item in items:
            _darken(image, item.shadow, 0.55)
        for item in items:
            for pts, bgr in item.polys:
                _fill(image, pts, bgr)
        if style.blur > 0:
            image = cv2.GaussianBlur(image, (3, 3), style.blur)
        rng = np.random.default_rng([self.seed, _NOISE_RNG, index])
        noise = rng.integers(-style.noise, style.noise + 1, image.shape, dtype=np.int16)
        return cv2.add(image, noise, dtype=cv2.CV_8U)


def _path_length(path) -> float:
    return float(np.hypot(*np.diff(np.array(path), axis=0).T).sum())


def _ground_truth(owner: np.ndarray, counts: np.ndarray, items: list[_Item]) -> tuple[np.ndarray, tuple[Segment, ...]]:
    """Owner map -> panoptic map and segments; instance ids count 1.. per category in track-id order."""
    lut = np.zeros(256, np.int32)
    segments = []
    for cat in _STUFF:
        lut[cat] = cat * LABEL_DIVISOR
        if counts[cat]:
            x, y, w, h = cv2.boundingRect((owner == cat).view(np.uint8))
            segments.append(Segment(cat * LABEL_DIVISOR, cat, False, None, int(counts[cat]), of_xywh((x, y, w, h))))
    things = sorted(enumerate(items, _FIRST_THING_CODE), key=lambda c: (c[1].category, c[1].track_id))
    instance = dict.fromkeys((CAR, PERSON), 0)
    for code, item in things:
        instance[item.category] += 1
        lut[code] = item.category * LABEL_DIVISOR + instance[item.category]
        x0, y0, x1, y1 = item.box
        x, y, w, h = cv2.boundingRect((owner[y0:y1, x0:x1] == code).view(np.uint8))
        segments.append(Segment(int(lut[code]), item.category, True, None, int(counts[code]),
                                of_xywh((x + x0, y + y0, w, h)), item.track_id))
    return np.take(lut, owner), tuple(segments)


class SyntheticReader:
    """A frame source over a parsed 'synthetic:street?...' URI (`parse_synthetic_uri`'s options),
    shaped like the readers in streamer.inputs.sources.

    Not live: every frame is produced on demand, so none is ever dropped. `fps` (when given)
    overrides the URI's rate.
    """

    live = False

    @classmethod
    def from_uri(cls, uri: str, fps: float | None = None) -> SyntheticReader:
        """Raises ValueError for a malformed URI."""
        return cls(parse_synthetic_uri(uri), uri, fps)

    def __init__(self, options: Mapping[str, Any], description: str, fps: float | None = None) -> None:
        self.description = description
        self.fps = float(fps) if fps else options["fps"]
        self.frame_count: int | None = options["frames"]
        self.scene = StreetScene(options["seed"], options["size"], self.fps)
        self.realtime = options["realtime"]
        self._next = 0
        self._started: float | None = None

    def read(self) -> tuple[np.ndarray, float] | None:
        """Next (BGR image, pts in ms), or None after `frames` frames."""
        frame = self.read_frame()
        return None if frame is None else (frame.image, (self._next - 1) * 1000.0 / self.fps)

    def read_frame(self) -> SceneFrame | None:
        """Like read(), with the ground truth."""
        if self.frame_count is not None and self._next >= self.frame_count:
            return None
        if self.realtime:
            self._started = self._started or time.monotonic()
            time.sleep(max(0.0, self._started + self._next / self.fps - time.monotonic()))
        self._next += 1
        return self.scene.render(self._next - 1)

    def close(self) -> None:
        pass
