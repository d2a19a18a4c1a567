"""Inference: frames -> both models -> fusion -> tracks and counts -> Panoptic results, in each source's frame order.

One coordinating thread (`worker_loop`) takes frames from the sources' queues and hands them to an
`InferencePool`, whose threads run the models on several frames at once; results leave in the
order the frames were taken. On a CPU two frames on one torch thread each beat one frame on two
threads by ~40 % (intra-op parallelism leaves cores idle; see docs/benchmarks.md). Tracking and
counting need each source's frames in order, so they run on the coordinating thread as results
leave (`Follow`), and so does the overlay drawn on the models' device, whose colours follow the
tracks.
"""
from __future__ import annotations

import collections
import ctypes
import logging
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from streamer import control as ctl
from streamer.analytics.speed import SpeedEstimator
from streamer.analytics.zone_time import ZoneTimes
from streamer.config import Config
from streamer.frames import Frame, Panoptic
from streamer.inference.counting import Counter
from streamer.inference.fusion import FusionParams, fuse
from streamer.inference.models import PanopticModels, build_models
from streamer.inference.tracking import SourceTracker, TrackingParams

log = logging.getLogger(__name__)

# Draws a frame's overlay where the models run (outputs.render.DeviceOverlay): (H x W x 3 uint8 BGR
# image, H x W int32 panoptic map) -> H x W x 3 uint8, all on the models' device.
Overlay = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

IDLE_POLL_S = 0.005  # how often an idle worker looks at the queues again
CGROUP_ROOT = Path("/sys/fs/cgroup")
CLOSE_TIMEOUT_S = 10.0


def thread_layout(device_type: str, cores: int, parallel_frames: int | None, torch_threads: int | None) -> tuple[int, int]:
    """(frames through the models at once, torch threads for each); None means choose. A GPU runs
    one frame at a time (batch with runtime.max_batch instead); a CPU with two cores or more runs
    two, sharing the cores out between them."""
    if parallel_frames is None:
        parallel_frames = 1 if device_type == "cuda" or cores < 2 else 2
    if torch_threads is None:
        torch_threads = max(1, cores // parallel_frames)
    return parallel_frames, torch_threads


def available_cores(cgroup: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: its CPU affinity, capped by a cgroup CPU quota (`docker --cpus`,
    systemd's CPUQuota=), which torch's own default does not see."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup)
    return cores if quota is None else max(1, min(cores, math.floor(quota)))


def cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup's quota (v2 `cpu.max`, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`);
    None when there is no quota or it cannot be read."""
    try:
        if (root / "cpu.max").exists():
            quota, period = (root / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        return None if quota_us <= 0 else quota_us / int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None


class InferencePool:
    """`size` daemon threads, each with torch set to `torch_threads` threads, that run whatever is
    submitted. All of the pipeline's torch work (the models' loading included) runs here: OpenMP
    keeps a thread pool per calling thread, and once the process holds more OpenMP threads than
    cores, libgomp throttles its spin-waits and inference slows by 10-20 %."""

    def __init__(self, size: int, torch_threads: int):
        self.size = size
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, args=(torch_threads,), name=f"inference-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, call: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._jobs.put((call, args, future))
        return future

    def run(self, call: Callable[..., Any], *args: Any) -> Any:
        """call(*args) on a pool thread; its result, or its exception raised here."""
        return self.submit(call, *args).result()

    def close(self) -> None:
        """Let the threads end after their current job (daemon threads: a hung call cannot hold up exit)."""
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _serve(self, torch_threads: int) -> None:
        torch.set_num_threads(torch_threads)  # per calling thread
        while (job := self._jobs.get()) is not None:
            call, args, future = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call(*args))
                except BaseException as exc:  # noqa: BLE001 - raised where the result is read
                    future.set_exception(exc)


MALLOC_ARENAS = 2  # glibc heaps the process's threads share
M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def limit_malloc_arenas() -> None:
    """glibc gives a thread that allocates while another does its own heap (arena), up to 8 per
    core, and keeps what is freed there for that heap's next use. With two frames in the models at
    once, each frame's activations settle in a heap of their own: at 1080p with 300 detections
    that held 700 MB more at the peak than MALLOC_ARENA_MAX=2 did, at the same speed. So the
    threads share MALLOC_ARENAS heaps, unless MALLOC_ARENA_MAX says otherwise. Linux with glibc
    only; elsewhere nothing happens."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):  # no C library to ask, or one without mallopt
        pass


def load_models(config: Config, device: torch.device) -> tuple[InferencePool, PanopticModels]:
    """An inference pool laid out by `thread_layout`, with the models loaded on one of its threads."""
    limit_malloc_arenas()  # before the pool's threads allocate
    runtime = config.runtime
    parallel, threads = thread_layout(device.type, available_cores(), runtime.parallel_frames, runtime.torch_threads)
    started = time.monotonic()
    pool = InferencePool(parallel, threads)
    try:
        models = pool.run(build_models, config.models, config.categories(), device, runtime.half)
    except BaseException:
        pool.close()
        raise
    log.info("models ready on %s in %.1f s; %d frame%s at a time, %d torch thread%s each", device,
             time.monotonic() - started, parallel, "s" if parallel > 1 else "", threads, "s" if threads > 1 else "")
    return pool, models


@dataclass(frozen=True)
class Fused:
    """A frame's fused result, and what the overlay on the models' device will need once it is tracked."""

    result: Panoptic
    image: torch.Tensor | None  # H x W x 3 uint8 BGR on the models' device; None: drawn on the host
    panoptic: torch.Tensor | None  # H x W int32 on the models' device, the per-frame ids


def infer(models: PanopticModels, params: FusionParams, frames: list[Frame], taken_mono: float,
          on_device: bool) -> list[Fused]:
    """Frames through the models in one batch, then each through the fusion rule. `taken_mono`: when
    the worker took the frames from their queues (time.monotonic()), for the queue_wait timing;
    `on_device`: keep the image and map on the models' device for the overlay drawn there."""
    started = time.perf_counter()
    predictions = models.predict([frame.image for frame in frames])
    inference = (time.perf_counter() - started) / len(frames)  # the batch's time, shared out
    results = []
    for frame, prediction in zip(frames, predictions):
        fusing = time.perf_counter()
        panoptic, segments = fuse(
            prediction.semantic, prediction.masks, prediction.scores, prediction.categories, models.is_thing, params
        )
        host = panoptic.cpu().numpy()
        if on_device and panoptic.device.type == "cpu":
            host = host.copy()  # the tracker relabels the host map in place; the device overlay renumbers its own
        result = Panoptic(
            frame=frame,
            panoptic_map=host,
            segments=tuple(segments),
            timings={"queue_wait": taken_mono - frame.captured_mono, "inference": inference,
                     "fusion": time.perf_counter() - fusing},
            capped=prediction.capped,
        )
        results.append(Fused(result, prediction.image, panoptic) if on_device else Fused(result, None, None))
    return results


class Follow:
    """What happens to each source's results in frame order, on the coordinating thread: tracking
    (`tracking`, None: off), counting (`counters`: source id -> its Counter; sources without one do
    not count), speeds (`speeds`: source id -> its SpeedEstimator, for sources with a ground plane),
    time in zones (`zone_times`: source id -> its ZoneTimes, for sources with zones) and the overlay
    drawn on the models' device (`overlay`), after the tracker has given every thing its instance id,
    so that colours follow tracks. A reconnect (Frame.connection) or a
    timestamp that goes back ends every track of that source."""

    def __init__(self, tracking: TrackingParams | None, label_divisor: int, counters: Mapping[str, Counter | None] | None = None,
                 overlay: Overlay | None = None, speeds: Mapping[str, SpeedEstimator | None] | None = None,
                 zone_times: Mapping[str, ZoneTimes | None] | None = None):
        self.tracking = tracking if tracking and tracking.enabled else None
        self.divisor = label_divisor
        self.counters = {source: counter for source, counter in (counters or {}).items() if counter}
        self.overlay = overlay
        self.speeds = {source: speed for source, speed in (speeds or {}).items() if speed} if self.tracking else {}
        self.zone_times = {source: times for source, times in (zone_times or {}).items() if times} if self.tracking else {}
        self._trackers: dict[str, SourceTracker] = {}
        self._last: dict[str, tuple[int, float]] = {}  # source id -> (connection, pts_ms) of its previous frame

    def __call__(self, fused: Fused) -> Panoptic:
        result = fused.result
        frame = result.frame
        started = time.perf_counter()
        source = frame.source_id
        tracker, counter, speed = self._tracker(source), self.counters.get(source), self.speeds.get(source)
        zone_times = self.zone_times.get(source)
        last = self._last.get(source)
        ended: list[tuple[str, str, float]] = []
        if last is not None and (frame.connection != last[0] or frame.pts_ms < last[1]):
            for state in (tracker, counter, speed):
                if state:
                    state.reset()
            ended = zone_times.reset() if zone_times else []
        self._last[source] = (frame.connection, frame.pts_ms)
        panoptic, segments = result.panoptic_map, result.segments
        if tracker:
            panoptic, segments = tracker.update(panoptic, segments, frame.pts_ms / 1000.0)
        events = tuple(counter.update(segments, frame.pts_ms / 1000.0)) if counter else ()
        speeds = speed.update(panoptic, segments, frame.pts_ms / 1000.0) if speed else {}
        visits = zone_times.update(segments, frame.pts_ms / 1000.0) if zone_times else None
        if visits is not None and ended:
            visits = replace(visits, ended=(*ended, *visits.ended))
        timings = {**result.timings, "tracking": time.perf_counter() - started}
        drawn = None
        if self.overlay and fused.image is not None and fused.panoptic is not None:  # on the device: both or neither
            drawn = self.overlay(fused.image, _renumber(fused.panoptic, result.segments, segments)).cpu().numpy()
        return replace(result, panoptic_map=panoptic, segments=segments, timings=timings, drawn=drawn,
                       counts=counter.counts() if counter else None, events=events, speeds=speeds, zone_times=visits)

    def _tracker(self, source: str) -> SourceTracker | None:
        if self.tracking and source not in self._trackers:
            self._trackers[source] = SourceTracker(self.tracking, self.divisor)
        return self._trackers.get(source)


def _renumber(panoptic: torch.Tensor, before, after) -> torch.Tensor:
    """The map on the device with the ids the tracker changed (segments `before` -> `after`, in one order)."""
    changed = [(old.id, new.id) for old, new in zip(before, after) if old.id != new.id]
    if not changed:
        return panoptic
    old, new = (torch.tensor(ids, dtype=panoptic.dtype, device=panoptic.device) for ids in zip(*changed))
    table = torch.arange(int(max(panoptic.max().item(), new.max().item())) + 1, dtype=panoptic.dtype, device=panoptic.device)
    table[old] = new
    return table[panoptic.long()]


Route = tuple[queue.Queue, queue.Queue]  # one source's (frames, results)


def gather(waiting: list[Route], max_batch: int) -> tuple[list[tuple[Route, Frame]], list[Route]]:
    """Up to `max_batch` queued frames, taking one per source in turn so a fast source cannot starve
    a slow one; also the sources whose END came up (their frames in the batch come first)."""
    batch: list[tuple[Route, Frame]] = []
    ended: list[Route] = []
    took = True
    while took and len(batch) < max_batch:
        took = False
        for route in waiting:
            if route in ended or len(batch) >= max_batch:
                continue
            try:
                item = route[0].get_nowait()
            except queue.Empty:
                continue
            took = True
            if item is ctl.END:
                ended.append(route)
            else:
                batch.append((route, item))
    return batch, ended


class Batcher:
    """Frames from the sources' queues in batches of up to `max_batch` (`gather`), and the sources
    still waited for. `in_turn` (an offline run): with max_batch > 1 the turn waits for its source's
    next frame and a batch goes out only when full or when a source ends, so every batch holds the
    same frames whatever the timing: a frame's floats through the models depend on its batch (the
    kernels' path by batch size; Mask R-CNN pads a batch to its largest image), and a score near
    a threshold must not cross it in one run and not in the next."""

    def __init__(self, routes: list[Route], max_batch: int, in_turn: bool = False):
        self.waiting = list(routes)
        self.max_batch = max_batch
        self.in_turn = in_turn and max_batch > 1
        self._pending: list[tuple[Route, Frame]] = []
        self._turn = 0

    def take(self) -> tuple[list[tuple[Route, Frame]], list[Route]]:
        """(frames for one batch, sources that ended after them); both empty while waiting."""
        if not self.in_turn:
            batch, ended = gather(self.waiting, self.max_batch)
            for route in ended:
                self.waiting.remove(route)
            return batch, ended
        while self.waiting:
            route = self.waiting[self._turn % len(self.waiting)]
            try:
                item = route[0].get_nowait()
            except queue.Empty:
                return [], []
            if item is ctl.END:
                self.waiting.remove(route)
                batch, self._pending = self._pending, []
                return batch, [route]
            self._pending.append((route, item))
            self._turn += 1
            if len(self._pending) == self.max_batch:
                batch, self._pending = self._pending, []
                return batch, []
        return [], []


@dataclass
class Job:
    """A batch in the pool (one route per frame), or, without a future, the routes whose END goes
    out once the batches before it have."""

    routes: list[Route]
    future: Future | None = None


def worker_loop(
    pool: InferencePool,
    models: PanopticModels,
    params: FusionParams,
    routes: list[Route],
    control: ctl.Control,
    max_batch: int,
    follow: Follow | None = None,
    in_turn: bool = False,
) -> None:
    """Serve every source's queue pair: batches of up to `max_batch` frames (`Batcher`; `in_turn` for
    an offline run), `pool.size` batches at once, results in the order the frames were taken, each
    through `follow` (tracks, counts, the overlay on the models' device; default: none of them).
    Passes each source's END on after its last result; returns when all ended."""
    follow = follow or Follow(None, params.label_divisor)
    on_device = follow.overlay is not None
    batcher = Batcher(routes, max_batch, in_turn)
    jobs: collections.deque[Job] = collections.deque()
    try:
        while (batcher.waiting or jobs) and not control.abort.is_set():
            running = [job.future for job in jobs if job.future and not job.future.done()]
            took = False
            if len(running) < pool.size and len(jobs) < 2 * pool.size:
                batch, ended = batcher.take()
                if batch:
                    frames = [frame for _, frame in batch]
                    future = pool.submit(infer, models, params, frames, time.monotonic(), on_device)
                    jobs.append(Job([r for r, _ in batch], future))
                    running.append(future)
                if ended:
                    jobs.append(Job(ended))
                took = bool(batch or ended)
            if not _pass_on_finished(jobs, control, follow):
                return
            if not jobs:
                control.beat()  # idle; while a batch runs, only its end counts as progress (a hung model is caught)
            if not took:
                if running:
                    wait(running, timeout=IDLE_POLL_S, return_when=FIRST_COMPLETED)
                else:
                    time.sleep(IDLE_POLL_S)
    except Exception as exc:  # noqa: BLE001
        control.fail("worker", exc)
    finally:
        control.done()


def _pass_on_finished(jobs: collections.deque[Job], control: ctl.Control, follow: Follow) -> bool:
    """Results of the oldest finished jobs, through `follow`, onto their sources' result queues, in
    order (a model's exception is raised here). False when the pipeline aborted meanwhile."""
    while jobs and (jobs[0].future is None or jobs[0].future.done()):
        job = jobs.popleft()
        control.beat()
        if job.future is None:
            if not all(ctl.put(results, ctl.END, control) for _, results in job.routes):
                return False
            continue
        for (_, results), fused in zip(job.routes, job.future.result()):
            if not ctl.put(results, follow(fused), control):
                return False
    return True
