"""Wires source, capture thread, worker thread and sink thread together; owns the lifecycle.

The main thread handles signals, shows the window (GUI calls stay on one thread) and reports
health and progress (status.py). First SIGINT/SIGTERM: stop reading and finish the queued frames
(bounded by runtime.drain_timeout_s). Second one: stop at once; the outputs are still closed
properly. Every component is built from the config in build.py; this module only connects them.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from streamer import control as ctl
from streamer.config import Config, Source
from streamer.inference import checkpoints
from streamer.inputs.capture import Capture
from streamer.inputs.sources import Reader, open_source
from streamer.outputs.display import DisplayOutput, Window, require_display
from streamer.outputs.sink import Output, close_outputs, sink_loop
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
    closing: contextlib.ExitStack  # closes the outputs once: the sink when the source ends, or the run's stack

    def watched(self):
        from streamer.service.metrics import WatchedSource

        return WatchedSource(self.settings.id, self.stats, self.capture.connection,
                             {"frames": self.frames, "results": self.results}, self.settings.stall_timeout_s)


# Each source's outputs, made from the config and the opened source (build.outputs); locks join the stack.
OutputsFor = Callable[[Config, build.OpenedSource, contextlib.ExitStack], list[Output]]


class Pipeline:
    """One run of `streamer run`. `stats` (source id -> counters) is public: the status line, the
    metrics and `streamer bench` read it while the run goes on."""

    def __init__(self, config: Config, outputs: OutputsFor, loaded: tuple[InferencePool, PanopticModels] | None = None):
        """`outputs`: makes each source's outputs (`build.outputs`, where a new kind of output is added).
        `loaded`: models already loaded (`worker.load_models`) for several runs in a row, as
        `streamer annotate` does; the caller closes them. None: this run loads and closes its own."""
        self.config = config
        self.make_outputs = outputs
        self.loaded = loaded
        self.control = ctl.Control()
        self.notifier = Notifier()
        self.stats = {source.id: ctl.Stats() for source in config.all_sources()}
        self._signals = 0
        self._status_now = False  # SIGUSR1

    def run(self) -> RunSummary:
        """Signals are handled from the start: a SIGTERM while the models load ends the run cleanly.
        Everything the run starts (readers, output locks, outputs, server, models, threads) joins one
        ExitStack as it starts and is closed in reverse order, at the end or when a later step fails:
        the outputs' locks are held from before their leftovers are recovered to the very end."""
        previous = self._install_signal_handlers()
        try:
            with contextlib.ExitStack() as stack:
                self._run(stack)
            return self._summary()
        finally:
            for sig, handler in (previous or {}).items():
                signal.signal(sig, handler)

    def _run(self, stack: contextlib.ExitStack) -> None:
        config = self.config
        if config.output.display:
            require_display()  # before anything slow, and before OpenCV could abort the process
        opened = [self._open(source, stack) for source in config.all_sources()]
        runs = [self._prepare(source, stack) for source in opened]
        build.announce_models(config, [source.spec for source in opened])
        checkpoints.require(config.models)  # missing weights: one line, before anything loads
        # Only now the heavy part: torch, the models (every check above answers without them).
        from streamer.inference.models import resolve_device
        from streamer.inference.worker import Follow, load_models, worker_loop

        renderer = build.renderer(config)
        device = resolve_device(config.runtime.device)
        server = None
        if config.server.enabled:  # up before the models load: /healthz says 503 until frames flow
            server = build.server(config, [run.watched() for run in runs], {run.settings.id: run.outputs for run in runs},
                                  self.control, device)
            stack.callback(server.close)
        delivery = build.delivery_of(stack)  # the event sinks every source shares (None: events are off)
        if server and delivery:
            server.metrics.watch_events(delivery)
        pool, models = self.loaded or load_models(config, device)
        if not self.loaded:
            stack.callback(pool.close)
        pictures = any(output.needs_picture for run in runs for output in run.outputs)
        follow = Follow(build.tracking_params(config), config.fusion.label_divisor,
                        {source.id: build.counter(config, source) for source in config.all_sources()},
                        self._device_overlay(renderer, device) if pictures else None, **build.analytics(config))
        threads = [threading.Thread(target=run.capture.run, name=f"capture-{run.settings.id}", daemon=True) for run in runs]
        threads.append(threading.Thread(target=worker_loop, name="worker", daemon=True, args=(
            pool, models, build.fusion_params(config), [(run.frames, run.results) for run in runs], self.control,
            config.runtime.max_batch, follow, not any(source.live for source in opened))))
        observe = server.metrics.observe if server else None
        sinks = [threading.Thread(target=sink_loop, name=f"sink-{run.settings.id}", daemon=True, args=(
            run.results, run.outputs, renderer.render if any(o.needs_picture for o in run.outputs) else None,
            self.control, run.stats, observe, run.closing.close)) for run in runs]
        stack.callback(self._stop, threads + sinks)
        for thread in threads + sinks:
            thread.start()
        self._supervise(sinks, runs, delivery.text if delivery else None)

    def _stop(self, threads: list[threading.Thread]) -> None:
        """Every started thread told to stop and waited for (bounded)."""
        self.control.abort.set()
        for thread in threads:
            if thread.ident is None:
                continue  # never started
            thread.join(JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.error("%s thread did not stop within %.0f s", thread.name, JOIN_TIMEOUT_S)

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

    def _open(self, source: Source, stack: contextlib.ExitStack) -> build.OpenedSource:
        """The source parsed, and opened now when it is a file (build.open_or_defer); its reader
        closed with the stack (the capture thread closes it too when it ends)."""
        opened = build.open_or_defer(source)
        if opened.reader:
            stack.callback(opened.reader.close)
        return opened

    def _prepare(self, source: build.OpenedSource, stack: contextlib.ExitStack) -> SourceRun:
        """The source's outputs (closed with the stack), queues and capture thread."""
        config, settings = self.config, source.settings
        outputs = self.make_outputs(config, source, stack)
        closing = stack.enter_context(contextlib.ExitStack())  # by the sink when the source ends, else here
        closing.callback(close_outputs, outputs, self.control)
        policy = settings.buffer.resolve(source.live)
        description = source.reader.description if source.reader else source.spec.shown
        log.info("%s: %s (%s, buffer %s)", settings.id, description, "live" if source.live else "file", policy.value)
        stats = self.stats[settings.id]
        frames: queue.Queue = queue.Queue(maxsize=settings.queue_size)
        live_options, spec, reader = build.live_options(settings), source.spec, source.reader

        def opener() -> Reader:
            """A file's reader, opened at start-up; a live source (re)connected in its capture thread."""
            return reader or open_source(spec, settings.fps, live_options, force_live=True)

        delivery = build.delivery_of(stack)  # a source that reconnects is an event (None: events are off)
        capture = Capture(opener, settings.id, description, frames, policy, build.liveness(settings, source.live),
                          self.control, stats, config.runtime.max_frames,
                          on_state=functools.partial(delivery.source_state, settings.id) if delivery else None)
        count, limit = reader.frame_count if reader else None, config.runtime.max_frames  # count None: live, or not said
        stats.expected = min(count, limit) if count and limit else count or limit
        display = next((output for output in outputs if isinstance(output, DisplayOutput)), None)
        return SourceRun(settings, capture, frames, queue.Queue(maxsize=RESULT_QUEUE_SIZE), outputs, display, stats, closing)

    # -- main thread -----------------------------------------------------------------------

    def _supervise(self, sinks: list[threading.Thread], runs: list[SourceRun], events: Callable[[], str] | None = None) -> None:
        """Wait for every sink to finish, showing the windows, progress and talking to systemd meanwhile.
        `events`: the event sinks' part of the status line."""
        windows = {run.settings.id: Window(f"streamer - {run.settings.id}") for run in runs if run.display}
        totals = [run.stats.expected for run in runs]
        known = [total for total in totals if total]
        progress = Progress(
            [run.stats for run in runs], [q for run in runs for q in (run.frames, run.results)],
            sum(known) if len(known) == len(totals) else None, self.config.runtime.status_interval_s,
            lambda: [run.capture.connection().text(run.settings.id) + counts_text(run.stats.counts) for run in runs]
            + ([events()] if events else []),
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
