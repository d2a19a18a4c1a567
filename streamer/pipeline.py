"""Wires source, capture thread, worker thread and sink thread together; owns the lifecycle.

The main thread handles signals, shows the window (GUI calls stay on one thread) and prints
progress. First SIGINT/SIGTERM: stop reading and finish the queued frames (bounded by
runtime.drain_timeout_s). Second one: stop at once; the outputs are still closed properly.
"""
from __future__ import annotations

import logging
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass

import torch

from . import control as ctl
from .capture import Capture, Liveness, effective_policy
from .config import Config
from .export import PanopticExport
from .fusion import FusionParams
from .models import PanopticModels, resolve_device
from .render import Renderer
from .sinks import DisplayOutput, VideoOutput, Window, require_display, sink_loop
from .sources import DEFAULT_FPS, LiveOptions, Reader, is_live, open_source, redact_uri
from .worker import worker_loop

log = logging.getLogger(__name__)

RESULT_QUEUE_SIZE = 4
JOIN_TIMEOUT_S = 10.0


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


class Pipeline:
    def __init__(self, config: Config):
        self.config = config
        self.control = ctl.Control()
        self.stats = ctl.Stats()
        self._signals = 0

    def run(self) -> RunSummary:
        config = self.config
        if config.output.display:
            require_display()  # before anything slow, and before OpenCV could abort the process
        source = config.source
        live_options = LiveOptions(source.open_timeout_s, source.read_timeout_s, source.rtsp_transport)
        live = is_live(source.uri)
        # A file is opened now, so a bad one fails before the models load; a live source is
        # connected by its capture thread, which keeps retrying while the camera is away.
        reader = None if live else open_source(source.uri, source.fps, live_options)
        fps = reader.fps if reader else (source.fps or DEFAULT_FPS)
        try:
            categories = config.categories()
            outputs = []
            if config.output.video:
                outputs.append(VideoOutput(config.output.video, fps))
            if config.output.export_dir:
                outputs.append(PanopticExport(config.output.export_dir, categories))
            if config.runtime.torch_threads:
                torch.set_num_threads(config.runtime.torch_threads)
            device = resolve_device(config.runtime.device)
            started = time.monotonic()
            models = PanopticModels(config.models, categories, device, config.runtime.half)
            log.info("models ready on %s in %.1f s", device, time.monotonic() - started)
        except BaseException:
            if reader:
                reader.close()
            raise
        display = DisplayOutput() if config.output.display else None
        if display:
            outputs.append(display)
        renderer = Renderer(categories, config.fusion.label_divisor, config.render.alpha, config.render.contours, config.render.labels)
        policy = effective_policy(source.buffer, live)
        frames: queue.Queue = queue.Queue(maxsize=config.source.queue_size)
        results: queue.Queue = queue.Queue(maxsize=RESULT_QUEUE_SIZE)
        description = reader.description if reader else redact_uri(source.uri)
        log.info("reading %s (%s, buffer %s)", description, "live" if live else "file", policy)
        reconnect = source.reconnect
        capture = Capture(
            (lambda: open_source(source.uri, source.fps, live_options)) if live else _once(reader),
            source.id, description, frames, policy,
            Liveness(live, source.stall_timeout_s, reconnect.max_attempts, reconnect.initial_delay_s,
                     reconnect.max_delay_s, reconnect.healthy_after_s),
            self.control, self.stats, config.runtime.max_frames,
        )

        threads = [
            threading.Thread(target=capture.run, name="capture", daemon=True),
            threading.Thread(
                target=worker_loop, args=(models, fusion_params(config), frames, results, self.control),
                name="worker", daemon=True,
            ),
            threading.Thread(
                target=sink_loop,
                args=(results, outputs, lambda r: renderer.overlay(r.frame.image, r.panoptic_map, r.segments), self.control, self.stats),
                name="sink", daemon=True,
            ),
        ]
        previous = self._install_signal_handlers()
        try:
            for thread in threads:
                thread.start()
            self._supervise(threads, display, total=getattr(reader, "frame_count", None), queues=(frames, results))
        finally:
            self._restore_signal_handlers(previous)
            self.control.abort.set()
            for thread in threads:
                thread.join(JOIN_TIMEOUT_S)
                if thread.is_alive():
                    log.error("%s thread did not stop within %.0f s", thread.name, JOIN_TIMEOUT_S)

        summary = RunSummary(self.control.exit_code, self.stats.read, self.stats.processed, dict(self.stats.dropped))
        log.info(
            "done: %d frames read, %d processed, %d dropped, %d reconnects",
            summary.read, summary.processed, sum(summary.dropped.values()), self.stats.reconnects,
        )
        return summary

    # -- main thread -----------------------------------------------------------------------

    def _supervise(self, threads, display: DisplayOutput | None, total: int | None, queues) -> None:
        """Wait for the sink to finish, showing the window and progress meanwhile."""
        sink = threads[-1]
        window = Window(f"streamer - {self.config.source.id}") if display else None
        progress = Progress(self.stats, queues, total, self.config.runtime.status_interval_s)
        drain_deadline = None
        try:
            while sink.is_alive():
                if window is not None:
                    try:
                        image = display.frames.get(timeout=0.02)
                    except queue.Empty:
                        image = None
                    if not window.show(image) and not self.control.stop.is_set():
                        log.info("window closed: stopping")
                        self.control.stop.set()
                else:
                    sink.join(0.2)
                progress.update()
                if self.control.stop.is_set() and drain_deadline is None:
                    drain_deadline = time.monotonic() + self.config.runtime.drain_timeout_s
                if drain_deadline is not None and time.monotonic() > drain_deadline and not self.control.abort.is_set():
                    log.warning("queued frames not finished within %.0f s: stopping now", self.config.runtime.drain_timeout_s)
                    self.control.abort.set()
        finally:
            progress.close()
            if window is not None:
                window.close()

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


class Progress:
    """A tqdm bar for file sources on a terminal; otherwise one status line every interval."""

    def __init__(self, stats: ctl.Stats, queues, total: int | None, interval_s: float):
        self.stats = stats
        self.queues = queues
        self.interval = interval_s
        self._next_line = time.monotonic() + interval_s
        self._last_count = 0
        self._last_time = time.monotonic()
        self._bar = None
        if total and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="frame", dynamic_ncols=True)

    def update(self) -> None:
        if self._bar is not None:
            self._bar.update(self.stats.processed - self._bar.n)
            return
        now = time.monotonic()
        if now < self._next_line:
            return
        fps = (self.stats.processed - self._last_count) / max(now - self._last_time, 1e-9)
        self._last_count, self._last_time, self._next_line = self.stats.processed, now, now + self.interval
        latency = self.stats.latency_summary()
        latency_text = "latency p50/p95/max %.2f/%.2f/%.2f s" % latency if latency else "latency -"
        depths = " ".join(f"{q.qsize()}/{q.maxsize}" for q in self.queues)
        dropped = ", ".join(f"{cause} {n}" for cause, n in sorted(self.stats.dropped.items())) or "0"
        log.info(
            "status: %.1f fps, %d processed, queues %s, dropped %s, reconnects %d, %s",
            fps, self.stats.processed, depths, dropped, self.stats.reconnects, latency_text,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
