"""Wires source, capture thread, worker thread and sink thread together; owns the lifecycle.

The main thread handles signals, shows the window (GUI calls stay on one thread) and reports
health and progress (status.py). First SIGINT/SIGTERM: stop reading and finish the queued frames
(bounded by runtime.drain_timeout_s). Second one: stop at once; the outputs are still closed
properly. Every component is built from the config in build.py; this module only connects them.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import queue
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamer import control as ctl
from streamer.config import Config, Source
from streamer.inference import checkpoints
from streamer.inputs.capture import Capture
from streamer.inputs.sources import Reader, open_source
from streamer.outputs.display import DisplayOutput, Window, require_display
from streamer.outputs.sink import Output, sink_loop
from streamer.service import build
from streamer.service.notify import Notifier, watchdog_interval
from streamer.service.status import Health, Progress, counts_text, timing_text

if TYPE_CHECKING:  # torch and the models are imported once the inputs and outputs are checked
    import torch

    from streamer.inference.models import PanopticModels
    from streamer.inference.worker import InferencePool
    from streamer.outputs.render import DeviceOverlay, Renderer

log = logging.getLogger(__name__)

# SIGINT, SIGTERM, SIGHUP (a closed terminal or ssh session): stop after the frames in flight, and
# at once when sent again; SIGQUIT: stop at once; SIGUSR1: a status line now; SIGUSR2: ignored.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
RESULT_QUEUE_SIZE = 4
JOIN_TIMEOUT_S = 10.0


@dataclass
class RunSummary:
    exit_code: int
    read: int
    processed: int
    dropped: dict[str, int]


@dataclass
class SourceRun:
    """One source's share of the pipeline: its capture, queues, outputs and counters."""

    settings: Source
    capture: Capture
    frames: queue.Queue
    results: queue.Queue
    outputs: list[Output]
    display: DisplayOutput | None
    stats: ctl.Stats
    reader: Reader | None  # a file opened up front; live sources connect in their capture thread

    def watched(self):
        from streamer.service.metrics import WatchedSource

        return WatchedSource(self.settings.id, self.stats, self.capture.connection,
                             {"frames": self.frames, "results": self.results}, self.settings.stall_timeout_s)


class Pipeline:
    """One run of `streamer run`. `stats` (source id -> counters) is public: the status line, the
    metrics and `streamer bench` read it while the run goes on."""

    def __init__(self, config: Config, loaded: tuple[InferencePool, PanopticModels] | None = None):
        """`loaded`: models already loaded (`worker.load_models`) for several runs in a row, as
        `streamer annotate` does; the caller closes them. None: this run loads and closes its own."""
        self.config = config
        self.loaded = loaded
        self.control = ctl.Control()
        self.notifier = Notifier()
        self.stats = {source.id: ctl.Stats() for source in config.all_sources()}
        self._signals = 0
        self._status_now = False  # SIGUSR1
        self._locks = contextlib.ExitStack()

    def run(self) -> RunSummary:
        """Signals are handled from the start: a SIGTERM while the models load ends the run cleanly.
        The outputs' locks are held from before their leftovers are recovered to the end."""
        previous = self._install_signal_handlers()
        try:
            with self._locks:
                return self._run()
        finally:
            for sig, handler in (previous or {}).items():
                signal.signal(sig, handler)

    def _run(self) -> RunSummary:
        config = self.config
        if config.output.display:
            require_display()  # before anything slow, and before OpenCV could abort the process
        runs: list[SourceRun] = []
        server = pool = None
        try:
            several = len(config.all_sources()) > 1
            runs.extend(self._prepare(source, several) for source in config.all_sources())
            build.announce_models(config)
            checkpoints.require(config.models)  # missing weights: one line, before anything loads
            # Only now the heavy part: torch, the models (every check above answers without them).
            from streamer.inference.models import resolve_device
            from streamer.inference.worker import Follow, load_models, worker_loop

            renderer = build.renderer(config)
            device = resolve_device(config.runtime.device)
            if config.server.enabled:  # up before the models load: /healthz says 503 until frames flow
                feeds = {run.settings.id: build.live_feed(config, run.settings.id) for run in runs}
                for run in runs:
                    run.outputs.append(feeds[run.settings.id])  # the sink closes it: its viewers' streams end
                server = build.server(config, [run.watched() for run in runs], feeds, self.control, device)
            pool, models = self.loaded or load_models(config, device)
            follow = Follow(build.tracking_params(config), config.fusion.label_divisor,
                            {source.id: build.counter(config, source) for source in config.all_sources()},
                            self._device_overlay(renderer, device))
        except BaseException:
            for closable in [run.reader for run in runs] + [server, None if self.loaded else pool]:
                if closable:
                    closable.close()
            raise
        threads = [threading.Thread(target=run.capture.run, name=f"capture-{run.settings.id}", daemon=True) for run in runs]
        threads.append(threading.Thread(target=worker_loop, name="worker", daemon=True, args=(
            pool, models, build.fusion_params(config), [(run.frames, run.results) for run in runs], self.control,
            config.runtime.max_batch, follow)))
        observe = server.metrics.observe if server else None
        sinks = [threading.Thread(target=sink_loop, name=f"sink-{run.settings.id}", daemon=True,
                                  args=(run.results, run.outputs, renderer.render, self.control, run.stats, observe))
                 for run in runs]
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
            for closable in (None if self.loaded else pool, server):
                if closable:
                    closable.close()
        return self._summary()

    def _summary(self) -> RunSummary:
        stats = list(self.stats.values())
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

    def _prepare(self, source: Source, several: bool) -> SourceRun:
        """The source's reader (build.open_or_defer), outputs, queues and capture thread."""
        config = self.config
        live_options = build.live_options(source)
        live, reader = build.open_or_defer(source, live_options)
        try:
            outputs: list[Output] = []
            if config.output.video:
                outputs.append(build.video_output(config, source, reader, live, several, self._locks))
            if config.output.export_dir:
                outputs.append(build.export(config, source, config.categories(), several, self._locks))
        except BaseException:
            if reader:
                reader.close()
            raise
        display = DisplayOutput() if config.output.display else None
        if display:
            outputs.append(display)
        policy = source.buffer.resolve(live)
        description = reader.description if reader else source.shown
        log.info("%s: %s (%s, buffer %s)", source.id, description, "live" if live else "file", policy.value)
        stats = self.stats[source.id]
        frames: queue.Queue = queue.Queue(maxsize=source.queue_size)
        opener = (lambda: open_source(source.uri, source.fps, live_options, force_live=True, shown=source.shown)) if live else (lambda: reader)
        capture = Capture(opener, source.id, description, frames, policy, build.liveness(source, live),
                          self.control, stats, config.runtime.max_frames)
        count, limit = getattr(reader, "frame_count", None), config.runtime.max_frames  # count None: live, or not said
        stats.expected = min(count, limit) if count and limit else count or limit
        return SourceRun(source, capture, frames, queue.Queue(maxsize=RESULT_QUEUE_SIZE), outputs, display, stats, reader)

    # -- main thread -----------------------------------------------------------------------

    def _supervise(self, sinks: list[threading.Thread], runs: list[SourceRun]) -> None:
        """Wait for every sink to finish, showing the windows, progress and talking to systemd meanwhile."""
        windows = {run.settings.id: Window(f"streamer - {run.settings.id}") for run in runs if run.display}
        totals = [run.stats.expected for run in runs]
        progress = Progress(
            [run.stats for run in runs], [q for run in runs for q in (run.frames, run.results)],
            sum(totals) if all(totals) else None, self.config.runtime.status_interval_s,
            lambda: [run.capture.connection().text(run.settings.id) + counts_text(run.stats.counts) for run in runs],
        )
        health = Health(self.control, self.notifier, watchdog_interval(), self.config.runtime.stage_timeout_s)
        drain_deadline = None
        try:
            while any(sink.is_alive() for sink in sinks):
                if windows:
                    self._show(runs, windows)
                else:
                    time.sleep(0.1)
                progress.update(force=self._status_now)
                self._status_now = False
                health.update()
                if self.control.stop.is_set() and drain_deadline is None:
                    drain_deadline = self._begin_drain()
                if drain_deadline is not None and time.monotonic() > drain_deadline and not self.control.abort.is_set():
                    log.warning("queued frames not finished within %.0f s: stopping now", self.config.runtime.drain_timeout_s)
                    self.control.abort.set()
        finally:
            if drain_deadline is None:  # the sources ended by themselves (or a stage failed)
                self.notifier.stopping()
            progress.close()
            for window in windows.values():
                window.close()

    def _begin_drain(self) -> float:
        """A stop begins: tell systemd that finishing the queued frames may take a while; the deadline."""
        drain_s = self.config.runtime.drain_timeout_s
        self.notifier.stopping()
        self.notifier.extend_timeout(drain_s + JOIN_TIMEOUT_S)
        return time.monotonic() + drain_s

    def _show(self, runs: list[SourceRun], windows: dict[str, Window]) -> None:
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

    def _install_signal_handlers(self) -> dict | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
        for sig in previous:
            signal.signal(sig, self._on_signal)
        return previous

    def _on_signal(self, signum, _frame) -> None:
        """What each signal means (README, "Signals"); none leaves an output unfinished."""
        name = signal.Signals(signum).name
        if signum == signal.SIGUSR1:
            self._status_now = True
            return
        if signum == signal.SIGUSR2:
            log.info("%s: ignored (SIGUSR1 logs the status now; SIGTERM, SIGINT or SIGHUP stop)", name)
            return
        self._signals += 1
        if self._signals == 1 and signum != signal.SIGQUIT:
            log.info("%s: finishing the frames in flight, then stopping (send again to stop at once)", name)
            self.control.stop.set()
        else:
            log.warning("%s: stopping now; the outputs are still closed properly", name if self._signals == 1 else f"{name} again")
            self.control.stop.set()
            self.control.abort.set()
