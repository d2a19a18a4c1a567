"""Wires source, capture thread, worker thread and sink thread together; owns the lifecycle.

The main thread handles signals, shows the window (GUI calls stay on one thread) and prints
progress. First SIGINT/SIGTERM: stop reading and finish the queued frames (bounded by
runtime.drain_timeout_s). Second one: stop at once; the outputs are still closed properly.
"""
from __future__ import annotations

import collections
import logging
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import control as ctl
from .capture import Capture, Liveness, effective_policy
from .config import Config, Source
from .export import PanopticExport
from .fusion import FusionParams
from .metrics import MetricsServer, WatchedSource
from .models import resolve_device
from .notify import Notifier, watchdog_interval
from .render import DeviceOverlay, Renderer
from .recording import Retention, open_video
from .sinks import DisplayOutput, Window, require_display, sink_loop
from .sources import DEFAULT_FPS, LiveOptions, Reader, is_live, open_source, redact_uri
from .worker import load_models, worker_loop

log = logging.getLogger(__name__)

RESULT_QUEUE_SIZE = 4
JOIN_TIMEOUT_S = 10.0
LIVE_SEGMENT_S = 60.0  # a live source records in segments of this length unless output.segment_seconds says otherwise


def fusion_params(config: Config) -> FusionParams:
    return FusionParams(
        score_threshold=config.models.instance.score_threshold,
        mask_threshold=config.fusion.mask_threshold,
        overlap_threshold=config.fusion.overlap_threshold,
        stuff_area_min=config.fusion.stuff_area_min,
        label_divisor=config.fusion.label_divisor,
    )


@dataclass
class RunSummary:
    exit_code: int
    read: int
    processed: int
    dropped: dict[str, int]


def _once(reader: Reader):
    """An opener that hands out an already opened reader, once."""
    def opener() -> Reader:
        return reader

    return opener


def output_path(template: str, source_id: str, several: bool) -> str:
    """`{source}` in an output path becomes the source id; with several sources and no
    placeholder, the id goes before the suffix (`out.mp4` -> `out-cam1.mp4`, `dir` -> `dir-cam1`)."""
    if "{source}" in template:
        return template.replace("{source}", source_id)
    if not several:
        return template
    path = Path(template)
    return str(path.with_name(f"{path.stem}-{source_id}{path.suffix}"))


@dataclass
class SourceRun:
    """One source's share of the pipeline: its capture, queues, outputs and counters."""

    settings: Source
    capture: Capture
    frames: queue.Queue
    results: queue.Queue
    outputs: list
    display: DisplayOutput | None
    stats: ctl.Stats
    reader: Reader | None  # a file opened up front; live sources connect in their capture thread
    total: int | None  # frames in a file, for the progress bar


class Pipeline:
    def __init__(self, config: Config):
        self.config = config
        self.control = ctl.Control()
        self.notifier = Notifier()
        self._signals = 0

    def run(self) -> RunSummary:
        """Signals are handled from the start: a SIGTERM while the models load ends the run cleanly."""
        previous = self._install_signal_handlers()
        try:
            return self._run()
        finally:
            self._restore_signal_handlers(previous)

    def _run(self) -> RunSummary:
        config = self.config
        if config.output.display:
            require_display()  # before anything slow, and before OpenCV could abort the process
        categories = config.categories()
        renderer = Renderer(categories, config.fusion.label_divisor, config.render.alpha, config.render.contours, config.render.labels)
        runs: list[SourceRun] = []
        metrics = pool = None
        try:
            several = len(config.all_sources()) > 1
            for source in config.all_sources():
                runs.append(self._prepare(source, categories, several))
            device = resolve_device(config.runtime.device)
            if config.metrics.enabled:  # up before the models load: /healthz says 503 until frames flow
                metrics = MetricsServer(config.metrics.host, config.metrics.port, [watched(run) for run in runs],
                                        self.control, config.runtime.stage_timeout_s, device)
            pool, models = load_models(config, device)
            overlay = self._device_overlay(renderer, device)
        except BaseException:
            for run in runs:
                if run.reader:
                    run.reader.close()
            for server in (metrics, pool):
                if server:
                    server.close()
            raise
        render = lambda r: (  # noqa: E731
            renderer.overlay(r.frame.image, r.panoptic_map, r.segments) if r.drawn is None else renderer.draw_labels(r.drawn, r.segments))
        observe = metrics.observe if metrics else None
        threads = [threading.Thread(target=run.capture.run, name=f"capture-{run.settings.id}", daemon=True) for run in runs]
        threads.append(threading.Thread(target=worker_loop, name="worker", daemon=True, args=(
            pool, models, fusion_params(config), [(run.frames, run.results) for run in runs], self.control, config.runtime.max_batch, overlay)))
        sinks = [
            threading.Thread(target=sink_loop, args=(run.results, run.outputs, render, self.control, run.stats, observe),
                             name=f"sink-{run.settings.id}", daemon=True)
            for run in runs
        ]
        try:
            for thread in threads + sinks:
                thread.start()
            self._supervise(sinks, runs)
        finally:
            self.control.abort.set()
            for thread in threads + sinks:
                thread.join(JOIN_TIMEOUT_S)
                if thread.is_alive():
                    log.error("%s thread did not stop within %.0f s", thread.name, JOIN_TIMEOUT_S)
            pool.close()
            if metrics:
                metrics.close()

        stats = [run.stats for run in runs]
        summary = RunSummary(
            self.control.exit_code, sum(s.read for s in stats), sum(s.processed for s in stats),
            dict(sum((s.dropped for s in stats), collections.Counter())),
        )
        log.info(
            "done: %d frames read, %d processed, %d dropped, %d reconnects, %s",
            summary.read, summary.processed, sum(summary.dropped.values()), sum(s.reconnects for s in stats),
            timing_text(stats),
        )
        return summary

    def _device_overlay(self, renderer: Renderer, device: torch.device) -> DeviceOverlay | None:
        """The overlay drawn where the models run: by default when that is a GPU."""
        on_device = self.config.render.on_model_device
        overlay = renderer.device_overlay(device) if (device.type == "cuda" if on_device is None else on_device) else None
        if overlay:
            log.info("overlay drawn on %s, labels on the host", device)
        return overlay

    def _prepare(self, source: Source, categories, several: bool) -> SourceRun:
        """Open a file source now (a bad one fails before the models load); a live source is
        connected by its capture thread, which keeps retrying while the camera is away."""
        config = self.config
        live_options = LiveOptions(source.open_timeout_s, source.read_timeout_s, source.rtsp_transport)
        live = is_live(source.uri)
        reader = None if live else open_source(source.uri, source.fps, live_options)
        outputs = []
        try:
            if config.output.video:
                outputs.append(self._video(source, reader, live, several))
            if config.output.export_dir:
                outputs.append(PanopticExport(output_path(config.output.export_dir, source.id, several), categories,
                                              config.output.export_images))
        except BaseException:
            if reader:
                reader.close()
            raise
        display = DisplayOutput() if config.output.display else None
        if display:
            outputs.append(display)
        policy = effective_policy(source.buffer, live)
        description = reader.description if reader else redact_uri(source.uri)
        log.info("%s: %s (%s, buffer %s)", source.id, description, "live" if live else "file", policy)
        stats = ctl.Stats()
        frames: queue.Queue = queue.Queue(maxsize=source.queue_size)
        reconnect = source.reconnect
        capture = Capture(
            (lambda: open_source(source.uri, source.fps, live_options)) if live else _once(reader),
            source.id, description, frames, policy,
            Liveness(live, source.stall_timeout_s, reconnect.max_attempts, reconnect.initial_delay_s,
                     reconnect.max_delay_s, reconnect.healthy_after_s),
            self.control, stats, config.runtime.max_frames,
        )
        total = getattr(reader, "frame_count", None)
        return SourceRun(source, capture, frames, queue.Queue(maxsize=RESULT_QUEUE_SIZE), outputs, display, stats, reader, total)

    def _video(self, source: Source, reader: Reader | None, live: bool, several: bool):
        settings = self.config.output
        segment_s = settings.segment_seconds if settings.segment_seconds is not None else (LIVE_SEGMENT_S if live else 0)
        path = output_path(settings.video, source.id, several)
        if segment_s:
            log.info("%s: recording %g s segments named by their start time, from %s", source.id, segment_s, path)
        fps = reader.fps if reader else (source.fps or DEFAULT_FPS)
        return open_video(path, fps, segment_s, Retention(settings.keep_hours, settings.max_bytes))

    # -- main thread -----------------------------------------------------------------------

    def _supervise(self, sinks: list[threading.Thread], runs: list[SourceRun]) -> None:
        """Wait for every sink to finish, showing the windows, progress and talking to systemd meanwhile."""
        windows = {run.settings.id: Window(f"streamer - {run.settings.id}") for run in runs if run.display}
        totals = [run.total for run in runs]
        progress = Progress(
            [run.stats for run in runs], [q for run in runs for q in (run.frames, run.results)],
            sum(totals) if all(totals) else None, self.config.runtime.status_interval_s,
        )
        health = Health(self.control, self.notifier, watchdog_interval(), self.config.runtime.stage_timeout_s)
        drain_deadline = None
        try:
            while any(sink.is_alive() for sink in sinks):
                if windows:
                    self._show(runs, windows)
                else:
                    time.sleep(0.1)
                progress.update()
                health.update()
                if self.control.stop.is_set() and drain_deadline is None:
                    drain_deadline = time.monotonic() + self.config.runtime.drain_timeout_s
                    self.notifier.stopping()  # a stop begins: finishing queued frames may take a while
                    self.notifier.extend_timeout(self.config.runtime.drain_timeout_s + JOIN_TIMEOUT_S)
                if drain_deadline is not None and time.monotonic() > drain_deadline and not self.control.abort.is_set():
                    log.warning("queued frames not finished within %.0f s: stopping now", self.config.runtime.drain_timeout_s)
                    self.control.abort.set()
        finally:
            if drain_deadline is None:  # the sources ended by themselves (or a stage failed)
                self.notifier.stopping()
            progress.close()
            for window in windows.values():
                window.close()

    def _show(self, runs: list[SourceRun], windows: dict) -> None:
        for run in runs:
            if run.display is None:
                continue
            try:
                image = run.display.frames.get_nowait()
            except queue.Empty:
                image = None
            if not windows[run.settings.id].show(image, wait_ms=max(1, 20 // len(windows))) and not self.control.stop.is_set():
                log.info("window closed: stopping")
                self.control.stop.set()

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, self._on_signal)
        return previous

    def _restore_signal_handlers(self, previous) -> None:
        for sig, handler in (previous or {}).items():
            signal.signal(sig, handler)

    def _on_signal(self, signum, _frame) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            log.info("%s: finishing the frames in flight, then stopping (send again to stop at once)", name)
            self.control.stop.set()
        else:
            log.warning("%s again: stopping now", name)
            self.control.abort.set()


def watched(run: SourceRun) -> WatchedSource:
    return WatchedSource(run.settings.id, run.stats, lambda: run.capture.state.value,
                         {"frames": run.frames, "results": run.results}, run.settings.stall_timeout_s)


def timing_text(stats: list[ctl.Stats]) -> str:
    """End-to-end latency (capture to sink) p50/p95/max and the median model time per frame."""
    latency = ctl.latency_summary([v for s in stats for v in s.latencies])
    model = ctl.latency_summary([v for s in stats for v in s.model_times])
    if latency is None or model is None:
        return "latency -"
    return "latency p50/p95/max %.3f/%.3f/%.3f s, model %.3f s/frame" % (*latency, model[0])


class Health:
    """READY=1 once the models are loaded and a first frame is read; WATCHDOG=1 every half
    WatchdogSec, but only while every stage's loop keeps coming round, so a hung worker gets the
    service restarted rather than merely a hung main thread."""

    def __init__(self, control: ctl.Control, notifier: Notifier, interval_s: float | None, stage_timeout_s: float):
        self.control = control
        self.notifier = notifier
        self.interval = interval_s
        self.stage_timeout = stage_timeout_s
        self.ready = False
        self._next_ping = time.monotonic()
        self._withheld = False

    def update(self) -> None:
        if not self.ready and self.control.first_frame.is_set():
            self.ready = True
            self.notifier.ready("streaming")
            log.info("ready: models loaded, first frame read")
        if self.interval is None or time.monotonic() < self._next_ping:
            return
        self._next_ping = time.monotonic() + self.interval
        stalled = self.control.stalled_stages(self.stage_timeout)
        if stalled:
            if not self._withheld:
                log.error("%s stuck for over %.0f s: withholding the watchdog ping", ", ".join(stalled), self.stage_timeout)
            self._withheld = True
            return
        self._withheld = False
        self.notifier.watchdog()


class Progress:
    """A tqdm bar for file sources on a terminal; otherwise one status line every interval."""

    def __init__(self, stats: list[ctl.Stats], queues, total: int | None, interval_s: float):
        self.stats = stats
        self.queues = queues
        self.interval = interval_s
        self._next_line = time.monotonic() + interval_s
        self._last_counts = [0] * len(stats)
        self._last_time = time.monotonic()
        self._bar = None
        if total and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="frame", dynamic_ncols=True)

    def update(self) -> None:
        processed = sum(s.processed for s in self.stats)
        if self._bar is not None:
            self._bar.update(processed - self._bar.n)
            return
        now = time.monotonic()
        if now < self._next_line:
            return
        counts = [s.processed for s in self.stats]
        elapsed = max(now - self._last_time, 1e-9)
        rates = [(count - last) / elapsed for count, last in zip(counts, self._last_counts)]
        self._last_counts, self._last_time, self._next_line = counts, now, now + self.interval
        per_source = f" ({', '.join(f'{r:.1f}' for r in rates)})" if len(rates) > 1 else ""
        depths = " ".join(f"{q.qsize()}/{q.maxsize}" for q in self.queues)
        dropped = sum((s.dropped for s in self.stats), collections.Counter())
        dropped_text = ", ".join(f"{cause} {n}" for cause, n in sorted(dropped.items())) or "0"
        log.info(
            "status: %.1f fps%s, %d processed, queues %s, dropped %s, reconnects %d, %s",
            sum(rates), per_source, processed, depths, dropped_text, sum(s.reconnects for s in self.stats), timing_text(self.stats),
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
