"""What one `streamer bench` run measures (BenchOptions) and the configuration it runs: the packaged
default (the bundled demo models) unless -c names another, with one synthetic source."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streamer.arguments import quote
from streamer.config import Config, load_config, packaged_config_path


@dataclass(frozen=True)
class BenchOptions:
    """The bench's flags (their defaults: the parser in bench/__init__.py)."""

    config: str | None  # None: the packaged default (demo models)
    overrides: tuple[str, ...]  # --set items
    device: str | None
    size: tuple[int, int]  # synthetic frames, width x height
    frames: int  # per run
    repeats: int  # runs of each mode
    seed: int  # synthetic scene
    micro_sizes: tuple[tuple[int, int], ...]  # fusion/overlay/tracking frame sizes
    instances: tuple[int, ...]  # fusion/overlay instance counts, tracking object counts
    micro_repeats: int
    tracking_frames: int  # frames of each tracking + counting run
    memory_frames: int  # 0: no long run
    detection_cases: tuple[tuple[tuple[int, int], int], ...]  # ((width, height), detections) per many-detections case
    torch_threads: int | None  # None: torch's choice
    cv2_threads: int | None  # None: OpenCV's choice
    neighbours: int = 0  # CPU-bound processes kept running beside the measurements
    semantic_frames: int = 0  # frames of the semantic network alone per backend (0: off)
    backends: tuple[str, ...] | None = None  # semantic backends compared, taking turns (None: torch and each installed one)

    def source(self, frames: int | None = None) -> str:
        width, height = self.size
        return f"synthetic:street?seed={self.seed}&frames={frames or self.frames}&size={width}x{height}"


def config_path(options: BenchOptions) -> Path:
    if options.config is not None:
        return Path(options.config)
    return packaged_config_path()


def config_overrides(options: BenchOptions, uri: str, video: Path | None) -> list[str]:
    """The user's --set items, then what the bench fixes: one synthetic source, one MP4 (not in
    segments), no window, no export, no metrics server."""
    fixed = [
        "sources=[]", f"source.uri={quote(uri)}", "output.display=false", "output.export_dir=null",
        f"output.video={quote(str(video)) if video else 'null'}", "output.segment_seconds=0",
        "runtime.max_frames=null", "server.enabled=false",
    ]
    if options.device:
        fixed.append(f"runtime.device={quote(options.device)}")
    if options.torch_threads:
        fixed.append(f"runtime.torch_threads={options.torch_threads}")
    return list(options.overrides) + fixed


def load_bench_config(options: BenchOptions, uri: str | None = None, video: Path | None = None) -> Config:

    return load_config(config_path(options), config_overrides(options, uri or options.source(), video))
