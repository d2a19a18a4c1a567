"""What the main thread reports while a run goes on: systemd readiness and watchdog pings
(`Health`), and progress (`Progress`: a bar on a terminal, else periodic status lines)."""
from __future__ import annotations

import collections
import logging
import os
import sys
import time
from collections.abc import Callable

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from streamer import control as ctl
from streamer.frames import Counts
from streamer.service.notify import Notifier

log = logging.getLogger(__name__)

RATE_WINDOW_S = 10.0  # the bar's frames per second and ETA: the rate over about this long


def timing_text(stats: list[ctl.Stats]) -> str:
    """End-to-end latency (capture to sink) p50/p95/max and the median model time per frame."""
    latency = ctl.latency_summary([v for s in stats for v in s.latencies])
    model = ctl.latency_summary([v for s in stats for v in s.model_times])
    if latency is None or model is None:
        return "latency -"
    p50, p95, worst = latency
    return f"latency p50/p95/max {p50:.3f}/{p95:.3f}/{worst:.3f} s, model {model[0]:.3f} s/frame"


def counts_text(counts: Counts | None) -> str:
    """A source's counts for its status line: `: car 12 (3 now), person 4 (0 now); north in 3 out 1;
    crosswalk 4`, unique tracks per category (visible now), then each line's and zone's totals; "" when not counting."""
    if counts is None:
        return ""
    parts = [", ".join(f"{name} {total} ({counts.visible.get(name, 0)} now)" for name, total in sorted(counts.objects_total.items()))
             or "no objects yet"]
    data = counts.to_dict()
    for name, per_category in data["lines"].items():
        crossed = {way: sum(c[way] for c in per_category.values()) for way in ("in", "out")}
        parts.append(f"{name} in {crossed['in']} out {crossed['out']}")
    parts += [f"{name} {sum(per_category.values())}" for name, per_category in data["zones"].items()]
    return ": " + "; ".join(parts)


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


def usable_terminal(stream) -> bool:
    """A terminal that can draw a bar: a tty that reports its width (a pty left at 0x0, as on some
    CI runners and ssh sessions, does not, and tqdm would draw nothing there)."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, OSError, ValueError):  # no file descriptor (a StringIO), or no terminal
        return False


class RecentRate:
    """Frames per second over about the last `window_s` seconds, measured from the first frame done,
    so the slow first frames (the models warming up) weigh neither on the rate nor on the ETA.
    0 while unknown (fewer than two counts seen), which tqdm shows as "?"."""

    def __init__(self, window_s: float):
        self.window = window_s
        self._samples: collections.deque[tuple[float, int]] = collections.deque()  # (time, count) at each change

    def add(self, now: float, count: int) -> None:
        if count > 0 and (not self._samples or count != self._samples[-1][1]):
            self._samples.append((now, count))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def rate(self, now: float) -> float:
        if len(self._samples) < 2:
            return 0.0
        (first_time, first_count), (_, last_count) = self._samples[0], self._samples[-1]
        return (last_count - first_count) / max(now - first_time, 1e-9)  # to now: a stall shows as a falling rate


class Bar(tqdm):
    """tqdm with the rate (and so the ETA) of a RecentRate instead of tqdm's own estimate."""

    def __init__(self, *args, rate: RecentRate, **kwargs):
        self.recent = rate
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self):
        return {**super().format_dict, "rate": self.recent.rate(time.monotonic())}


class Progress:
    """Where stderr is a usable terminal and the frames to come are known (a file's count capped by
    --max-frames, or --max-frames alone): a bar, the run's log lines written above it. Otherwise (no
    terminal, one without a size, or a live source without an end) one status line every interval."""

    def __init__(self, stats: list[ctl.Stats], queues, total: int | None, interval_s: float,
                 sources: Callable[[], list[str]] = list):
        """`sources`: each source's connection for the status line (`cam0 connecting (attempt 3)`)."""
        self.stats = stats
        self.queues = queues
        self.sources = sources
        self.interval = interval_s
        self._next_line = time.monotonic() + interval_s
        self._last_counts = [0] * len(stats)
        self._last_time = time.monotonic()
        self._bar = None
        if total and usable_terminal(sys.stderr):
            self._bar = Bar(total=total, unit="frame", dynamic_ncols=True, file=sys.stderr, rate=RecentRate(RATE_WINDOW_S))
            self._drawn_at = time.monotonic()
            # Log lines go through tqdm.write while the bar is up (same formatter, so still redacted).
            self._redirect = logging_redirect_tqdm(tqdm_class=Bar)
            self._redirect.__enter__()

    def update(self, force: bool = False) -> None:
        """The bar, or the status line once an interval has passed; `force`: the line now (SIGUSR1)."""
        if self._bar is not None and not force:
            self._advance(self._bar)
            return
        processed = sum(s.processed for s in self.stats)
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
            "status: %.1f fps%s, %d processed, queues %s, dropped %s, reconnects %d, %s; %s",
            sum(rates), per_source, processed, depths, dropped_text, sum(s.reconnects for s in self.stats), timing_text(self.stats),
            ", ".join(self.sources()),
        )

    def _advance(self, bar: Bar, final: bool = False) -> None:
        """The bar's count: frames done with (processed, or dropped on the way), so that it ends at
        its total; redrawn at most every 0.1 s, and each second anyway (the rate falls in a stall)."""
        now = time.monotonic()
        processed = sum(s.processed for s in self.stats)
        dropped = sum(sum(s.dropped.values()) for s in self.stats)
        bar.recent.add(now, processed + dropped)
        since = now - self._drawn_at
        if not final and (since < 0.1 or (since < 1.0 and processed + dropped == bar.n)):
            return
        if dropped:
            bar.set_postfix_str(f"{dropped} dropped", refresh=False)
        bar.n, self._drawn_at = processed + dropped, now
        bar.refresh()

    def close(self) -> None:
        """The bar's last state, or a last status line: the counts at the end, whenever the last periodic one came."""
        if self._bar is None:
            self.update(force=True)
            return
        self._advance(self._bar, final=True)
        self._bar.close()
        self._redirect.__exit__(None, None, None)
