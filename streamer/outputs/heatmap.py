"""The heatmap output: one source's occupancy heatmaps (streamer.analytics.heatmap) fed by the sink
thread, read by the server (`/live/{source}/heatmap.png`) and written to the export folder when
the source ends.

Files, in the source's export folder (output.export_dir), for each thing category seen:
  heatmap-<category>.png          the occupancy of its masks as a picture (INFERNO, scaled to its maximum)
  heatmap-<category>.npy          the raw counts: float32 rows x cols, decayed frames each cell was covered
  heatmap-<category>-ground.png   where its ground points passed, as a picture
  heatmap-<category>-ground.npy   float32 rows x cols, decayed ground points per cell
  heatmap.json                    {"cell", "width", "height", "frames", "half_life_s", "categories"}:
                                  occupancy = counts / frames; a cell is cell x cell pixels of the frame
Category names are written with anything but letters, digits, `_`, `.` and `-` as `_`.
"""
from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import cv2
import numpy as np

from streamer.analytics.heatmap import Heatmap, colorize, png
from streamer.errors import WriteFailed
from streamer.frames import Panoptic
from streamer.outputs.export import write_atomic

log = logging.getLogger(__name__)

LAYERS = ("masks", "ground")
OVERLAY_ALPHA = 0.5


def file_stem(category: str) -> str:
    return "heatmap-" + re.sub(r"[^A-Za-z0-9_.-]", "_", category)


class HeatmapOutput:
    """A source's heatmaps as one of its outputs; `folder` (None: none) receives the files at close.
    With `overlay` the maps of every category are blended into the overlay the outputs after it get
    (in place), the picture redrawn every `refresh_s` of stream time."""

    stage = "heatmap"

    def __init__(self, source_id: str, heatmap: Heatmap, folder: str | Path | None = None, overlay: bool = False,
                 refresh_s: float = 1.0) -> None:
        self.source_id = source_id
        self.heatmap = heatmap
        self.folder = Path(folder) if folder is not None else None
        self.needs_picture = overlay
        self.refresh_s = refresh_s
        self._picture: tuple[float, np.ndarray, np.ndarray] | None = None  # (stream time, colours, where > 0) at the frame's size
        self._closed = False

    def write(self, result: Panoptic, rendered: np.ndarray | None) -> None:
        t = result.frame.pts_ms / 1000.0
        self.heatmap.add(result.panoptic_map, result.segments, t)
        if self.needs_picture and rendered is not None:
            if self._picture is None or not 0 <= t - self._picture[0] < self.refresh_s or self._picture[1].shape != rendered.shape:
                snap = self.heatmap.snapshot()
                if snap is None:
                    return
                size = (rendered.shape[1], rendered.shape[0])
                occupancy = snap.occupancy()
                self._picture = (t, colorize(occupancy, size), cv2.resize(occupancy, size, interpolation=cv2.INTER_NEAREST) > 0)
            _, colours, where = self._picture
            rendered[where] = cv2.addWeighted(rendered, 1.0 - OVERLAY_ALPHA, colours, OVERLAY_ALPHA, 0.0)[where]

    def picture(self, category: str | None = None, layer: str = "masks", size: tuple[int, int] | None = None) -> bytes | None:
        """PNG bytes of one category's map (None: every category's together) of `layer` ("masks" or
        "ground"), `size` (width, height; None: the grid's own); None before the first frame or for a
        category not seen. Raises ValueError for an unknown layer."""
        if layer not in LAYERS:
            raise ValueError(f"layer must be one of {', '.join(LAYERS)}, got {layer!r}")
        snap = self.heatmap.snapshot()
        if snap is None:
            return None
        planes = snap.masks if layer == "masks" else snap.ground
        if category is not None and category not in planes:
            return None
        values = planes[category] if category is not None else sum(planes.values(), np.zeros(snap.shape, np.float32))
        return png(values, size)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        snap = self.heatmap.snapshot()
        if self.folder is None or snap is None:
            return
        try:
            for name in snap.masks:
                stem = file_stem(name)
                for suffix, values in (("", snap.masks[name]), ("-ground", snap.ground[name])):
                    write_atomic(self.folder / f"{stem}{suffix}.png", png(values))
                    buffer = io.BytesIO()
                    np.save(buffer, values.astype(np.float32))
                    write_atomic(self.folder / f"{stem}{suffix}.npy", buffer.getvalue())
            meta = {"cell": snap.cell, "width": snap.size[0], "height": snap.size[1], "frames": snap.frames,
                    "half_life_s": self.heatmap.half_life_s, "categories": sorted(snap.masks)}
            write_atomic(self.folder / "heatmap.json", json.dumps(meta, indent=1).encode() + b"\n")
        except OSError as exc:
            raise WriteFailed(f"{self.folder}: cannot write the heatmaps: {exc.strerror or exc}") from None
        log.info("%s: heatmaps of %s written to %s", self.source_id, ", ".join(sorted(snap.masks)) or "no category", self.folder)
