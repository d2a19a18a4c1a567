"""`streamer calibrate`: help pick a source's ground-plane calibration (`source.calibration`).

It reads one frame of the source and prints the YAML of a calibration: for a synthetic street the
camera's exact one; for a source the configuration already calibrates, that one; otherwise a
template (four image points around the lower middle of the frame, ground points to measure and fill
in). With `--out PNG` it also writes the frame with a grid: ground lines every `--grid` metres
mapped through the calibration (check that they lie flat on the road and that lane widths look
right), or, without one, a pixel grid labelled every 100 pixels to read image points from.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from streamer.analytics.calibration import GroundPlane
from streamer.errors import EXIT_OK, CannotCreate, DataError, UsageError
from streamer.inputs.sources import open_source
from streamer.inputs.spec import parse_source
from streamer.inputs.synthetic import StreetScene, parse_synthetic_uri

log = logging.getLogger(__name__)

GRID_COLOR = (0, 200, 255)  # BGR amber, as the counting lines
POINT_COLOR = (255, 0, 255)


def add_parser(commands: Any) -> None:
    from streamer.arguments import add_config_arguments

    parser = commands.add_parser("calibrate", help="print a source's ground-plane calibration (YAML) and draw its grid on a frame")
    add_config_arguments(parser)
    parser.add_argument("--source", required=True, metavar="URI", help="the source to calibrate (as for run)")
    parser.add_argument("--out", metavar="PNG", help="write a frame with the grid to this PNG")
    parser.add_argument("--frame", type=int, default=0, metavar="N", help="which frame to draw (default: the first)")
    parser.add_argument("--grid", type=float, default=1.0, metavar="METRES", help="ground grid spacing (default: 1 m)")
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    from streamer.arguments import config_overrides
    from streamer.config import load_config

    if not args.grid > 0 or args.frame < 0:
        raise UsageError("calibrate: --grid must be > 0 and --frame >= 0")
    config = load_config(args.config, config_overrides(args))
    named = next((s.calibration for s in config.all_sources() if s.uri == args.source and s.calibration), None)
    points = calibration_of(args.source, named)
    image = read_frame(args.source, args.frame)
    if points is None:
        height, width = image.shape[:2]
        template = {"image": [[round(0.3 * width), round(0.9 * height)], [round(0.7 * width), round(0.9 * height)],
                              [round(0.6 * width), round(0.6 * height)], [round(0.4 * width), round(0.6 * height)]],
                    "ground": [[0.0, 0.0], [3.5, 0.0], [3.5, 20.0], [0.0, 20.0]]}
        sys.stdout.write("# a template: move the image points onto four marks on the road (no three in a row) and give\n"
                         "# where they are in metres (e.g. a lane's corners: its width across, dashes along)\n")
        sys.stdout.write(calibration_yaml(np.array(template["image"], float), np.array(template["ground"], float)))
        picture = draw_pixel_grid(image, np.array(template["image"], float))
    else:
        sys.stdout.write(calibration_yaml(*points))
        picture = draw_ground_grid(image, GroundPlane.from_points(*points), points[0], args.grid)
    if args.out:
        path = Path(args.out)
        ok = False
        try:
            ok = cv2.imwrite(str(path), picture)
        except cv2.error:
            pass
        if not ok:
            raise CannotCreate(f"calibrate: {path}: cannot write the picture; check the folder exists and is writable and "
                               "the name ends in .png")
        log.info("calibrate: wrote %s", path)
    return EXIT_OK


def calibration_of(uri: str, configured: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(image points, ground points): the configured calibration, else a synthetic street's exact one, else None."""
    if configured is not None:
        return np.array(configured.image, np.float64), np.array(configured.ground, np.float64)
    if parse_source(uri).kind == "synthetic":
        options = parse_synthetic_uri(uri)
        return StreetScene(options["seed"], options["size"], options["fps"]).ground_calibration()
    return None


def read_frame(uri: str, index: int) -> np.ndarray:
    """Frame `index` of the source (H x W x 3 uint8 BGR). Raises DataError when it has fewer frames."""
    reader = open_source(uri)
    try:
        for _ in range(index):
            if reader.read() is None:
                break
        got = reader.read()
    finally:
        reader.close()
    if got is None:
        raise DataError(f"calibrate: {parse_source(uri).shown}: ended before frame {index}")
    return got[0]


def calibration_yaml(image: np.ndarray, ground: np.ndarray) -> str:
    """The `calibration:` block of a source, pixels to 0.1 and metres to the millimetre."""
    def pairs(points: np.ndarray, digits: int) -> str:
        return "[" + ", ".join(f"[{round(float(x), digits):g}, {round(float(y), digits):g}]" for x, y in points) + "]"

    return f"calibration:\n  image: {pairs(image, 1)}\n  ground: {pairs(ground, 3)}\n"


def draw_ground_grid(frame: np.ndarray, plane: GroundPlane, marks: np.ndarray, step: float) -> np.ndarray:
    """The frame with ground lines every `step` metres (x and y) around the calibration's ground
    points, mapped into the image, and the four image points marked. Returns a new BGR array."""
    out = frame.copy()
    height, width = out.shape[:2]
    bottom = plane.to_ground(np.array([[0, height - 1], [width - 1, height - 1]], float))
    known = np.concatenate([bottom, plane.to_ground(marks)])
    known = known[np.isfinite(known).all(axis=1)]
    lo, hi = known.min(axis=0), known.max(axis=0)
    lo, hi = lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo)  # the calibrated area and the bottom of the frame, half as much again
    for axis in (0, 1):
        ticks = np.arange(np.ceil(lo[axis] / step) * step, hi[axis] + 1e-9, step)[:400]
        along = np.linspace(lo[1 - axis], hi[1 - axis], 200)
        for tick in ticks:
            line = np.empty((len(along), 2))
            line[:, axis], line[:, 1 - axis] = tick, along
            pixels = plane.to_image(line)
            pixels = pixels[np.isfinite(pixels).all(axis=1)]
            if len(pixels) > 1:
                cv2.polylines(out, [np.round(pixels * 16).astype(np.int32)], False, GRID_COLOR, 1, cv2.LINE_AA, 4)
    _mark(out, marks)
    return out


def draw_pixel_grid(frame: np.ndarray, marks: np.ndarray, step: int = 50) -> np.ndarray:
    """The frame with a pixel grid every `step` pixels, labelled every 100, and the template's points."""
    out = frame.copy()
    height, width = out.shape[:2]
    for x in range(0, width, step):
        cv2.line(out, (x, 0), (x, height - 1), GRID_COLOR, 1)
        if x % 100 == 0:
            cv2.putText(out, str(x), (x + 2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, GRID_COLOR, 1, cv2.LINE_AA)
    for y in range(0, height, step):
        cv2.line(out, (0, y), (width - 1, y), GRID_COLOR, 1)
        if y % 100 == 0 and y:
            cv2.putText(out, str(y), (2, y - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4, GRID_COLOR, 1, cv2.LINE_AA)
    _mark(out, marks)
    return out


def _mark(image: np.ndarray, points: np.ndarray) -> None:
    for n, (x, y) in enumerate(points, 1):
        if np.isfinite([x, y]).all():
            cv2.circle(image, (int(round(x)), int(round(y))), 4, POINT_COLOR, -1, cv2.LINE_AA)
            cv2.putText(image, str(n), (int(round(x)) + 6, int(round(y)) - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, POINT_COLOR, 1,
                        cv2.LINE_AA)
