"""The live window: an output that hands frames to the main thread, and the OpenCV window the
main thread drives (GUI calls stay on one thread). OpenCV's Qt backend aborts the process without
a display, so `require_display` is checked first."""
from __future__ import annotations

import logging
import os
import queue
import socket
from pathlib import Path

import cv2
import numpy as np

from streamer.errors import UsageError
from streamer.frames import Panoptic

log = logging.getLogger(__name__)

SYSTEM_FONTS = "/usr/share/fonts/truetype/dejavu"


def display_available() -> bool:
    """True when an X server answers at $DISPLAY (or a Wayland socket exists).

    OpenCV's Qt backend aborts the whole process when it cannot reach a display, so this is checked
    before the first window is made.
    """
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR", "")
    wayland = os.environ.get("WAYLAND_DISPLAY")
    if wayland and Path(runtime_dir, wayland).exists():
        return True
    display = os.environ.get("DISPLAY", "")
    host, _, number = display.rpartition(":")
    number = number.split(".")[0]
    if not number.isdigit():
        return False
    try:
        if host in ("", "unix"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2.0)
                try:
                    sock.connect(f"/tmp/.X11-unix/X{number}")
                except OSError:
                    sock.connect(f"\0/tmp/.X11-unix/X{number}")  # Linux abstract socket
            return True
        with socket.create_connection((host, 6000 + int(number)), timeout=2.0):
            return True
    except OSError:
        return False


def require_display() -> None:
    if not display_available():
        raise UsageError(
            "--display: no display available (DISPLAY is unset or its X server does not answer); "
            "run without --display, or under a desktop session or Xvfb"
        )


class DisplayOutput:
    """Hands rendered frames to the main thread, which owns the window (GUI calls stay on one thread).

    Only the newest frame waits: a slow screen never holds the pipeline back.
    """

    stage = "display"
    needs_picture = True

    def __init__(self):
        self.frames: queue.Queue[np.ndarray] = queue.Queue(maxsize=1)

    def write(self, result: Panoptic, rendered: np.ndarray | None) -> None:
        assert rendered is not None  # needs_picture: the sink draws the overlay for it
        try:
            self.frames.get_nowait()
        except queue.Empty:
            pass
        self.frames.put_nowait(rendered)

    def close(self) -> None:
        pass


class Window:
    """The OpenCV window, driven from the main thread."""

    KEYS_THAT_STOP = {ord("q"), ord("Q"), 27}  # q or Esc

    def __init__(self, title: str):
        self.title = title
        if "QT_QPA_FONTDIR" not in os.environ and Path(SYSTEM_FONTS).is_dir():
            os.environ["QT_QPA_FONTDIR"] = SYSTEM_FONTS  # OpenCV's bundled Qt ships no fonts
        cv2.namedWindow(title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)  # the frame only, no toolbar

    def show(self, image: np.ndarray | None, wait_ms: int = 20) -> bool:
        """Show a frame (or just pump events); False when the user asked to stop."""
        if image is not None:
            cv2.imshow(self.title, image)
        key = cv2.waitKey(wait_ms)
        if key != -1 and (key & 0xFF) in self.KEYS_THAT_STOP:
            return False
        try:
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:
            return False

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass
