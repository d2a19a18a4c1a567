"""What the main thread reports while a run goes on: systemd readiness and watchdog pings
(`Health`), and progress (`Progress`: a bar on a terminal, else periodic status lines)."""
from __future__ import annotations

import collections
import logging
import sys
import time

from streamer import control as ctl
from streamer.service.notify import Notifier

log = logging.getLogger(__name__)


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

    def update(self, force: bool = False) -> None:
        """The bar, or the status line once an interval has passed; `force`: the line now (SIGUSR1)."""
        processed = sum(s.processed for s in self.stats)
        if self._bar is not None and not force:
            self._bar.update(processed - self._bar.n)
            return
        now = time.monotonic()
        if now < self._next_line and not force:
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
