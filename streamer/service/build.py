"""Every component built from the typed config, in one place (detectron2's `from_config` idea).

The components themselves take plain parameters and never see the config; their defaults live
only in `streamer.config`. The pipeline, `streamer eval` and `streamer bench` all build here.
"""
from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer import presets
from streamer.config import Config, Source
from streamer.config import Output as OutputSettings
from streamer.errors import StreamerError
from streamer.frames import Category
from streamer.inputs.capture import Liveness
from streamer.inputs.sources import DEFAULT_FPS, Reader, open_source, require_device
from streamer.inputs.spec import LiveOptions, SourceSpec, parse_source
from streamer.outputs import preflight
from streamer.outputs.display import DisplayOutput
from streamer.outputs.export import PanopticExport
from streamer.outputs.locks import holding
from streamer.outputs.recording import open_video
from streamer.outputs.retention import Retention
from streamer.outputs.sink import Output

if TYPE_CHECKING:  # torch-heavy: imported when the pipeline builds them, after the cheap checks
    import torch

    from streamer import control as ctl
    from streamer.analytics.calibration import GroundPlane
    from streamer.analytics.speed import SpeedEstimator
    from streamer.analytics.zone_time import ZoneTimes
    from streamer.inference.counting import Counter
    from streamer.inference.fusion import FusionParams
    from streamer.inference.tracking import TrackingParams
    from streamer.outputs.events.delivery import Delivery
    from streamer.outputs.events.log import EventLog
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
    from streamer.frames import Line
    from streamer.inference.counting import Counter

    if not config.tracking.enabled:
        return None
    lines = [Line(name, a, b) for name, (a, b) in source.lines.items()]
    return Counter(lines, source.counting_zones(), {c.id: c.name for c in config.categories()})


def zone_times(config: Config, source: Source) -> ZoneTimes | None:
    """The source's time in zones; None without zones or tracking."""
    from streamer.analytics.zone_time import ZoneTimes

    if not (config.tracking.enabled and source.zones):
        return None
    return ZoneTimes(source.counting_zones(), {c.id: c.name for c in config.categories()})


def heatmap_output(config: Config, source: Source, several: bool) -> Output:
    """The source's occupancy heatmaps (analytics.heatmap), written into its export folder when there is one."""
    from streamer.analytics.heatmap import Heatmap
    from streamer.outputs.heatmap import HeatmapOutput

    settings = config.analytics.heatmap
    folder = output_path(config.output.export_dir, source.id, several) if config.output.export_dir else None
    things = {c.id: c.name for c in config.categories() if c.isthing}
    return HeatmapOutput(source.id, Heatmap(things, settings.max_width, settings.half_life_s), folder, settings.overlay)


def ground_plane(source: Source) -> GroundPlane | None:
    """The source's calibration: its `calibration`, else a synthetic street's exact one, else None."""
    from streamer.analytics.calibration import GroundPlane
    from streamer.inputs.synthetic import StreetScene, parse_synthetic_uri

    if source.calibration is not None:
        return GroundPlane.from_points(source.calibration.image, source.calibration.ground)
    if source.uri.startswith("synthetic:"):
        options = parse_synthetic_uri(source.uri)  # the URI was checked at start-up
        return GroundPlane.from_points(*StreetScene(options["seed"], options["size"], options["fps"]).ground_calibration())
    return None


def analytics(config: Config) -> dict[str, Any]:
    """Follow's per-source analytics as keyword arguments: `speeds` and `zone_times` (None where a source has none)."""
    return {"speeds": {s.id: speed_estimator(config, s) for s in config.all_sources()},
            "zone_times": {s.id: zone_times(config, s) for s in config.all_sources()}}


def speed_estimator(config: Config, source: Source) -> SpeedEstimator | None:
    """The source's speeds (`analytics.speed`); None when off, without tracking or without a ground plane."""
    from streamer.analytics.speed import SpeedEstimator
    from streamer.frames import KMH_PER_MPS

    settings = config.analytics.speed
    plane = ground_plane(source) if settings.enabled and config.tracking.enabled else None
    if plane is None:
        return None
    ids = {c.name: c.id for c in config.categories()}
    caps = {ids[name]: kmh / KMH_PER_MPS for name, kmh in settings.max_kmh_per_category.items()}
    return SpeedEstimator(plane, settings.window_s, settings.min_span, settings.max_kmh / KMH_PER_MPS, caps, settings.max_error)


def live_feed(config: Config, source_id: str) -> LiveFeed:
    """The source's live view for the server (the `server:` section's size, rate and viewer cap)."""
    from streamer.outputs.live import LiveFeed

    settings = config.server
    return LiveFeed(source_id, settings.live_width, settings.live_fps, settings.max_viewers)


def server(config: Config, watched: list[WatchedSource], outputs: dict[str, list[Output]], control: ctl.Control,
           device: torch.device) -> Server:
    """The HTTP server: metrics and health of `watched`, the live views and heatmaps among `outputs` (source id ->
    its outputs), the event log's `/api/events` when events are on; listening when returned."""
    from streamer.outputs.heatmap import HeatmapOutput
    from streamer.outputs.live import LiveFeed
    from streamer.service.http import MAX_CONNECTIONS
    from streamer.service.metrics import Metrics
    from streamer.service.server import Server

    feeds: dict[str, LiveFeed] = {source_id: o for source_id, listed in outputs.items() for o in listed if isinstance(o, LiveFeed)}
    heatmaps = {source_id: o for source_id, listed in outputs.items() for o in listed if isinstance(o, HeatmapOutput)}
    settings = config.server
    metrics = Metrics(watched, control, config.runtime.stage_timeout_s, device, {c.id: c.name for c in config.categories()})
    return Server(settings.host, settings.port, settings.bearer, metrics, feeds, MAX_CONNECTIONS + len(feeds) * settings.max_viewers,
                  settings.allowed_hosts, Path(config.events.dir) if config.events.enabled else None, heatmaps)


def announce_models(config: Config, specs: list[SourceSpec] | None = None) -> None:
    """One log line for the preset and its licence; a warning when the demo models meet a source that
    is not a synthetic street, the only world they know (`specs`: every source's, parsed here when None)."""
    models = config.models
    if models.preset != presets.NONE:
        preset = presets.get(models.preset)
        (log.warning if preset.non_commercial else log.info)("models: preset %s (%s); licence: %s",
                                                             preset.name, preset.title, preset.licence)
    demo = "demo" in (models.semantic.weights, models.instance.weights)
    if specs is None:
        specs = [parse_source(source.uri, source.shown) for source in config.all_sources()]
    if demo and any(spec.kind != "synthetic" for spec in specs):
        log.warning("the demo models know only synthetic streets and will mislabel real footage: "
                    "`streamer models list` shows real ones, `streamer models fetch cityscapes` gets one, "
                    "then run with --preset cityscapes")


def renderer(config: Config) -> Renderer:
    from streamer.outputs.render import Renderer

    render = config.render
    return Renderer(config.categories(), config.fusion.label_divisor, render.alpha, render.contours, render.labels,
                    render.stuff_alpha, config.analytics.speed.unit, config.analytics.zone_time.overlay)


def live_options(source: Source) -> LiveOptions:
    return LiveOptions(source.open_timeout_s, source.read_timeout_s, source.rtsp_transport)


@dataclass(frozen=True)
class OpenedSource:
    """A source as start-up leaves it: its settings, its parsed URI, whether it is live, and the
    reader of a file source (None for a live one: its capture thread connects)."""

    settings: Source
    spec: SourceSpec
    live: bool
    reader: Reader | None


def open_or_defer(source: Source) -> OpenedSource:
    """The source's URI parsed (the one place it is read); a file source is opened now (a bad one
    fails before the models load); a live one is left to its capture thread, which keeps retrying
    while the camera is away (a camera device that does not exist fails now, unless its
    first-connect window is forever); an http(s) URL is opened to learn which it is (source.live
    skips the guess). Raises UsageError, InputNotFound or StreamerError."""
    spec = parse_source(source.uri, source.shown)
    live = spec.live if source.live is None else source.live
    if live and not (source.live is None and spec.may_be_finite):
        if source.reconnect.first_connect_window() is not None:
            require_device(spec)
        return OpenedSource(source, spec, True, None)
    try:
        reader = open_source(spec, source.fps, live_options(source), force_live=source.live,
                             skip_bad=source.on_bad_frame == "skip")
    except StreamerError as exc:
        if not live:
            raise
        # an http(s) URL that does not answer yet: a file server would, so take it for a camera that is away
        log.warning("%s: %s; taken for a live stream, retried until it answers (source.live: false says otherwise)",
                    source.id, exc)
        return OpenedSource(source, spec, True, None)
    if reader.live:
        reader.close()
        return OpenedSource(source, spec, True, None)
    return OpenedSource(source, spec, False, reader)


def liveness(source: Source, live: bool) -> Liveness:
    reconnect = source.reconnect
    return Liveness(live, source.stall_timeout_s, reconnect.max_attempts, reconnect.initial_delay_s,
                    reconnect.max_delay_s, reconnect.healthy_after_s, reconnect.first_connect_window())


def retention(output: OutputSettings) -> Retention:
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


def outputs(config: Config, source: OpenedSource, locks: ExitStack) -> list[Output]:
    """Every output of one source, in the order the sink hands them each frame: its heatmaps (first:
    with analytics.heatmap.overlay they draw into the overlay the others get), its video, its export,
    the window, the live view, its events. Each output's lock joins `locks`, taken before
    any leftover is touched. The caller closes them; when one cannot be made, those made before are
    closed here. A new kind of output is added here, and nowhere else."""
    several = len(config.all_sources()) > 1
    wanted: list[tuple[object, Callable[[], Output]]] = [
        (config.analytics.heatmap.enabled, lambda: heatmap_output(config, source.settings, several)),  # first: drawn over the overlay
        (config.output.video, lambda: video_output(config, source, several, locks)),
        (config.output.export_dir, lambda: export(config, source.settings, config.categories(), several, locks)),
        (config.output.display, DisplayOutput),
        (config.server.enabled, lambda: live_feed(config, source.settings.id)),  # its viewers' streams end when it closes
        (config.events.enabled, lambda: events_output(config, source.settings, locks)),
    ]
    made: list[Output] = []
    with ExitStack() as undo:
        for enabled, make in wanted:
            if enabled:
                made.append(make())
                undo.callback(made[-1].close)
        undo.pop_all()
    return made


_deliveries: weakref.WeakKeyDictionary[ExitStack, Delivery] = weakref.WeakKeyDictionary()  # a run's stack -> its sinks


def delivery_of(stack: ExitStack) -> Delivery | None:
    """The sinks events_output made for the run whose stack is `stack` (None: events are off)."""
    return _deliveries.get(stack)


def event_log(config: Config) -> EventLog:
    """A connection to the event log in events.dir (made if missing). Raises CannotCreate."""
    import sqlite3

    from streamer.errors import CannotCreate
    from streamer.outputs.events.log import EventLog

    settings = config.events
    try:
        return EventLog(settings.dir, settings.keep_days, settings.max_mb)
    except (OSError, sqlite3.Error) as exc:
        raise CannotCreate(f"events.dir {settings.dir}: cannot open the event log: {exc}; choose a folder you can write") from None


def delivery(config: Config) -> Delivery:
    """The run's sinks: one MQTT connection for every source (events.mqtt.host set), each of
    events.webhooks. Raises ConfigError (exit 78) when paho-mqtt is needed and missing."""
    from importlib.metadata import PackageNotFoundError, version

    from streamer.errors import ConfigError
    from streamer.outputs.events.delivery import Delivery, DeliverySink
    from streamer.outputs.events.webhook import WebhookSettings, WebhookSink

    settings = config.events
    mqtt = settings.mqtt
    if mqtt.host is not None:
        try:
            import paho.mqtt  # noqa: F401
        except ImportError:
            raise ConfigError("events.mqtt.host is set but paho-mqtt is not installed: pip install 'streamer[mqtt]'") from None
    events_log = event_log(config)
    sinks: list[DeliverySink] = []
    try:
        if mqtt.host is not None:
            from streamer.outputs.events.homeassistant import SourceLayout
            from streamer.outputs.events.mqtt import MqttSettings, MqttSink

            things = tuple(c.name for c in config.categories() if c.isthing)
            layouts = [SourceLayout(s.id, tuple(s.lines), tuple(s.zones), things) for s in config.all_sources()]
            try:
                release = version("streamer")
            except PackageNotFoundError:
                release = ""
            sinks.append(MqttSink(events_log, MqttSettings(
                mqtt.host, mqtt.port, mqtt.tls, mqtt.username, mqtt.password.get_secret_value() if mqtt.password else None,
                mqtt.client_id, mqtt.topic_prefix, mqtt.qos, mqtt.home_assistant, mqtt.discovery_prefix), layouts, release))
        for hook in settings.webhooks:
            sinks.append(WebhookSink(events_log, WebhookSettings(
                hook.url, frozenset(hook.kinds) if hook.kinds is not None else None,
                hook.secret.get_secret_value() if hook.secret else None, hook.timeout_s)))
    except BaseException:
        Delivery(events_log, sinks).close()
        raise
    return Delivery(events_log, sinks)


def events_output(config: Config, source: Source, locks: ExitStack) -> Output:
    """The source's events: logged in events.dir (its lock joins `locks`: one daemon per event log),
    delivered by the run's sinks (made with the first source's events, closed with `locks`)."""
    from streamer.errors import CannotCreate
    from streamer.outputs.events.output import EventsOutput

    settings = config.events
    folder = Path(settings.dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CannotCreate(f"events.dir {folder}: cannot create it ({exc.strerror}); choose a folder you can write") from None
    locks.enter_context(holding(folder, "event log"))
    shared = _deliveries.get(locks)
    if shared is None:
        shared = _deliveries[locks] = delivery(config)
        locks.callback(shared.close)  # after every source's outputs: they are closed before, in the stack's reverse order
    events_log = event_log(config)
    sinks = [shared.source_waker()]
    zones = source.counting_zones()
    return EventsOutput(source.id, events_log, zones, {c.id: c.name for c in config.categories()}, config.tracking.max_lost_s, sinks,
                        settings.snapshot_width if settings.snapshots else None, settings.snapshot_quality)


def video_output(config: Config, source: OpenedSource, several: bool, locks: ExitStack):
    """The source's video (one file, or segments for a live source), leftovers recovered first; its
    frame rate is the opened file's, or the configured one for a live source."""
    settings = config.output
    assert settings.video is not None  # outputs() asks for a video only when one is configured
    segment_s = settings.segment_length(source.live)
    path = output_path(settings.video, source.settings.id, several)
    if segment_s:
        log.info("%s: recording %g s segments named by their start time, from %s", source.settings.id, segment_s, path)
    fps = source.reader.fps if source.reader else (source.settings.fps or DEFAULT_FPS)
    preflight.video_target(Path(path), bool(segment_s), source.spec.file, settings.overwrite)
    locks.enter_context(holding(Path(path), "video"))
    return open_video(path, fps, segment_s, retention(settings), settings.min_free_mb)


def export(config: Config, source: Source, categories: tuple[Category, ...], several: bool, locks: ExitStack) -> PanopticExport:
    """The source's COCO panoptic export; its folder's lock joins `locks`."""
    assert config.output.export_dir is not None  # outputs() asks for an export only when one is configured
    folder = output_path(config.output.export_dir, source.id, several)
    preflight.folder_target(Path(folder), "export")
    locks.enter_context(holding(Path(folder), "export"))
    preflight.require_room(Path(folder), "export", config.output.min_free_mb)
    return PanopticExport(folder, categories, config.output.export_images, config.output.overwrite)
