"""Measuring tools of the bench: repeated timings and their summary, RSS, CPU time per thread, a
sampler that watches a pipeline run, and running a call on a thread of its own or on one core."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from streamer.frames import Frame, Panoptic

SAMPLE_S = 0.2  # how often RSS and thread CPU times are read during a pipeline run
POLL_S = 0.01  # how often the pipeline's frame counter is looked at


def summarize(values: list[float]) -> dict[str, float]:
    """Median, min, max and quartiles of repeated measurements."""
    data = np.asarray(values, dtype=float)
    q1, median, q3 = np.percentile(data, [25, 50, 75])
    return {"median": float(median), "min": float(data.min()), "max": float(data.max()), "q1": float(q1), "q3": float(q3), "n": len(values)}


def timed(call: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Seconds of each of `repeats` calls, and the last call's result."""
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - started)
    return seconds, result


def ms_summary(seconds: list[float]) -> dict[str, float]:
    return {key: (round(1000 * value, 3) if key != "n" else value) for key, value in summarize(seconds).items()}


def rss_mb() -> float | None:
    """Resident set size of this process (Linux), in MiB."""
    return _status_mib("VmRSS")


def peak_rss_mb() -> float | None:
    """The highest resident set size this process reached (Linux), in MiB."""
    return _status_mib("VmHWM")


def reset_peak_rss() -> None:
    """From now on peak_rss_mb() is the peak since now (Linux: clear_refs 5 resets VmHWM; elsewhere nothing)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _status_mib(field: str) -> float | None:
    """A kB field of /proc/self/status, in MiB (None where there is no such file)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def thread_cpu_seconds() -> dict[int, tuple[str, float]]:
    """native thread id -> (name, user + system CPU seconds) for every thread of this process (Linux)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (names.get(int(tid), "native"), (int(fields[11]) + int(fields[12])) / ticks)
    return out


class Sampler:
    """Watches a pipeline run from its own thread: when the first frame is read and the first
    result is written (frame counter polled every POLL_S), and every SAMPLE_S seconds RSS and the
    CPU time of every thread. The CPU baseline is taken at the first frame read, so thread CPU
    covers the processing, not the model loading."""

    def __init__(self, counter: Callable[[], int], first_frame: threading.Event):
        self.counter = counter
        self.first_frame = first_frame
        self.samples: list[tuple[float, int, float | None]] = []  # (time, frames, RSS MiB)
        self.first_frame_at: float | None = None
        self.first_result_at: float | None = None
        self._baseline: dict[int, tuple[str, float]] = {}
        self._last: dict[int, tuple[str, float]] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5)
        self._sample()

    def _loop(self) -> None:
        next_sample = 0.0
        while not self._done.wait(POLL_S):
            now = time.perf_counter()
            if self.first_frame_at is None and self.first_frame.is_set():
                self.first_frame_at = now
                self._baseline = thread_cpu_seconds()
            if self.first_result_at is None and self.counter() >= 1:
                self.first_result_at = now
            if now >= next_sample:
                self._sample()
                next_sample = now + SAMPLE_S

    def _sample(self) -> None:
        self.samples.append((time.perf_counter(), self.counter(), rss_mb()))
        if self.first_frame_at is not None:
            self._last.update(thread_cpu_seconds())

    def thread_cpu(self) -> dict[str, float]:
        """CPU seconds since the first frame, by Python thread name; other native threads (torch's
        OpenMP pool, codec threads) summed as one."""
        totals: dict[str, float] = {}
        for tid, (name, seconds) in self._last.items():
            if name == "bench-sampler":
                continue
            used = seconds - self._baseline.get(tid, (name, 0.0))[1]
            key = "native (torch pool, codecs)" if name == "native" else name
            totals[key] = totals.get(key, 0.0) + used
        return {name: round(seconds, 3) for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1])}


def as_result(index: int, image: np.ndarray, pts_ms: float, panoptic: np.ndarray | None = None) -> Panoptic:
    now = time.time()
    frame = Frame("bench", index, image, pts_ms, now, time.monotonic())
    return Panoptic(frame, panoptic if panoptic is not None else np.zeros(image.shape[:2], np.int32), ())


def on_own_thread(call: Callable[[], Any], name: str) -> Any:
    """call() on a thread that ends with it, and with the thread its OpenMP pool: the pipeline's
    worker then has the only pool in the process, as it has in `streamer run` (two pools make
    libgomp throttle its spin-waits; see worker.InferencePool)."""
    result: Future = Future()

    def target() -> None:
        try:
            result.set_result(call())
        except BaseException as exc:  # noqa: BLE001 - raised again on the calling thread
            result.set_exception(exc)

    thread = threading.Thread(target=target, name=name)
    thread.start()
    thread.join()
    return result.result()


class single_thread:  # noqa: N801 - used as a context manager
    """torch and OpenCV on one thread inside the block."""

    def __enter__(self) -> None:
        self._saved = (torch.get_num_threads(), cv2.getNumThreads())
        torch.set_num_threads(1)
        cv2.setNumThreads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self._saved[0])
        cv2.setNumThreads(self._saved[1])
