"""Every component built from the typed config, in one place (detectron2's `from_config` idea).

The components themselves take plain parameters and never see the config; their defaults live
only in `streamer.config`. The pipeline, `streamer eval` and `streamer bench` all build here.
"""
from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from streamer import presets
from streamer.config import Config, Output, Source
from streamer.errors import StreamerError
from streamer.frames import Category
from streamer.inputs.capture import Liveness
from streamer.inputs.sources import (
    DEFAULT_FPS,
    LiveOptions,
    Reader,
    is_live,
    local_file,
    may_be_finite,
    open_source,
    require_device,
)
from streamer.outputs import preflight
from streamer.outputs.export import PanopticExport
from streamer.outputs.locks import holding
from streamer.outputs.recording import open_video
from streamer.outputs.retention import Retention

if TYPE_CHECKING:  # torch-heavy: imported when the pipeline builds them, after the cheap checks
    import torch

    from streamer import control as ctl
    from streamer.inference.counting import Counter
    from streamer.inference.fusion import FusionParams
    from streamer.inference.tracking import TrackingParams
    from streamer.outputs.live import LiveFeed
    from streamer.outputs.render import Renderer
    from streamer.service.metrics import WatchedSource
    from streamer.service.server import Server

log = logging.getLogger(__name__)


def fusion_params(config: Config) -> FusionParams:
    """The fusion rule's thresholds: the instance score threshold and the `fusion:` section."""
    from streamer.inference.fusion import FusionParams

    fusion = config.fusion
    return FusionParams(
        score_threshold=config.models.instance.score_threshold,
        mask_threshold=fusion.mask_threshold,
        overlap_threshold=fusion.overlap_threshold,
        stuff_area_min=fusion.stuff_area_min,
        label_divisor=fusion.label_divisor,
    )


def tracking_params(config: Config) -> TrackingParams:
    """The `tracking:` section."""
    from streamer.inference.tracking import TrackingParams

    tracking = config.tracking
    return TrackingParams(tracking.enabled, tracking.tracker, tracking.max_lost_s, tracking.min_hits)


def counter(config: Config, source: Source) -> Counter | None:
    """The source's counts (objects, its lines and zones); None when tracking is off: counting needs tracks."""
    from streamer.frames import Line, Zone
    from streamer.inference.counting import Counter

    if not config.tracking.enabled:
        return None
    lines = [Line(name, a, b) for name, (a, b) in source.lines.items()]
    zones = [Zone(name, points) for name, points in source.zones.items()]
    return Counter(lines, zones, {c.id: c.name for c in config.categories()})


def live_feed(config: Config, source_id: str) -> LiveFeed:
    """The source's live view for the server (the `server:` section's size, rate and viewer cap)."""
    from streamer.outputs.live import LiveFeed

    settings = config.server
    return LiveFeed(source_id, settings.live_width, settings.live_fps, settings.max_viewers)


def server(config: Config, watched: list[WatchedSource], feeds: dict[str, LiveFeed], control: ctl.Control,
           device: torch.device) -> Server:
    """The HTTP server: metrics and health of `watched`, the live views of `feeds`; listening when returned."""

    from streamer.service.http import MAX_CONNECTIONS
    from streamer.service.metrics import Metrics
    from streamer.service.server import Server

    settings = config.server
    metrics = Metrics(watched, control, config.runtime.stage_timeout_s, device)
    return Server(settings.host, settings.port, settings.bearer, metrics, feeds, MAX_CONNECTIONS + len(feeds) * settings.max_viewers)


def announce_models(config: Config) -> None:
    """One log line for the preset and its licence; a warning when the demo models meet a source that
    is not a synthetic street, the only world they know."""
    models = config.models
    if models.preset != presets.NONE:
        preset = presets.get(models.preset)
        (log.warning if preset.non_commercial else log.info)("models: preset %s (%s); licence: %s", preset.name, preset.title, preset.licence)
    demo = "demo" in (models.semantic.weights, models.instance.weights)
    if demo and any(not s.uri.startswith("synthetic:") for s in config.all_sources()):
        log.warning("the demo models know only synthetic streets and will mislabel real footage: "
                    "`streamer models list` shows real ones, `streamer models fetch cityscapes` gets one, "
                    "then run with --preset cityscapes")


def renderer(config: Config) -> Renderer:
    from streamer.outputs.render import Renderer

    render = config.render
    return Renderer(config.categories(), config.fusion.label_divisor, render.alpha, render.contours, render.labels,
                    render.stuff_alpha)


def live_options(source: Source) -> LiveOptions:
    return LiveOptions(source.open_timeout_s, source.read_timeout_s, source.rtsp_transport)


def open_or_defer(source: Source, options: LiveOptions) -> tuple[bool, Reader | None]:
    """(live, reader): a file source is opened now (a bad one fails before the models load); a
    live one is left to its capture thread, which keeps retrying while the camera is away (a
    camera device that does not exist fails now, unless its first-connect window is forever); an
    http(s) URL is opened to learn which it is (source.live skips the guess)."""
    live = is_live(source.uri) if source.live is None else source.live
    if live and not (source.live is None and may_be_finite(source.uri)):
        if source.reconnect.first_connect_window() is not None:
            require_device(source.uri)
        return True, None
    try:
        reader = open_source(source.uri, source.fps, options, force_live=source.live, skip_bad=source.on_bad_frame == "skip",
                             shown=source.shown)
    except StreamerError as exc:
        if not live:
            raise
        # an http(s) URL that does not answer yet: a file server would, so take it for a camera that is away
        log.warning("%s: %s; taken for a live stream, retried until it answers (source.live: false says otherwise)",
                    source.id, exc)
        return True, None
    if reader.live:
        reader.close()
        return True, None
    return False, reader


def liveness(source: Source, live: bool) -> Liveness:
    reconnect = source.reconnect
    return Liveness(live, source.stall_timeout_s, reconnect.max_attempts, reconnect.initial_delay_s,
                    reconnect.max_delay_s, reconnect.healthy_after_s, reconnect.first_connect_window())


def retention(output: Output) -> Retention:
    return Retention(output.keep_hours, output.max_bytes)


def output_path(template: str, source_id: str, several: bool) -> str:
    """`{source}` in an output path becomes the source id; with several sources and no
    placeholder, the id goes before the suffix (`out.mp4` -> `out-cam1.mp4`, `dir` -> `dir-cam1`)."""
    if "{source}" in template:
        return template.replace("{source}", source_id)
    if not several:
        return template
    path = Path(template)
    return str(path.with_name(f"{path.stem}-{source_id}{path.suffix}"))


def video_output(config: Config, source: Source, reader: Reader | None, live: bool, several: bool, locks: ExitStack):
    """The source's video (one file, or segments for a live source), leftovers recovered first.
    `reader` is the opened file source (its frame rate), None for a live one; the output's lock
    joins `locks`, taken before any leftover is touched."""
    settings = config.output
    segment_s = settings.segment_length(live)
    path = output_path(settings.video, source.id, several)
    if segment_s:
        log.info("%s: recording %g s segments named by their start time, from %s", source.id, segment_s, path)
    fps = reader.fps if reader else (source.fps or DEFAULT_FPS)
    preflight.video_target(Path(path), bool(segment_s), local_file(source.uri), settings.overwrite)
    locks.enter_context(holding(Path(path), "video"))
    return open_video(path, fps, segment_s, retention(settings), settings.min_free_mb)


def export(config: Config, source: Source, categories: tuple[Category, ...], several: bool, locks: ExitStack) -> PanopticExport:
    """The source's COCO panoptic export; its folder's lock joins `locks`."""
    folder = output_path(config.output.export_dir, source.id, several)
    preflight.folder_target(Path(folder), "export")
    locks.enter_context(holding(Path(folder), "export"))
    preflight.require_room(Path(folder), "export", config.output.min_free_mb)
    return PanopticExport(folder, categories, config.output.export_images, config.output.overwrite)
