"""The worker: batches of queued frames, one per source in turn, several in the models at once,
results in each source's order, and a batch gives the same segmentation as frames one at a time."""
from __future__ import annotations

import itertools
import os
import queue
import threading
import time

import numpy as np
import pytest
import torch

from streamer import control as ctl
from streamer.config import load_config
from streamer.frames import Frame
from streamer.inference.models import PanopticModels, build_models
from streamer.inference.worker import Batcher, InferencePool, available_cores, gather, thread_layout, worker_loop
from streamer.inputs.synthetic import StreetScene
from streamer.service.build import fusion_params


def frame(source: str, index: int, image=None) -> Frame:
    image = np.zeros((8, 8, 3), np.uint8) if image is None else image
    return Frame(source, index, image, index * 100.0, time.time(), time.monotonic())


def route(*items) -> tuple[queue.Queue, queue.Queue]:
    frames: queue.Queue = queue.Queue()
    for item in items:
        frames.put(item)
    return frames, queue.Queue()


def test_gather_takes_one_frame_per_source_in_turn_and_stops_at_max_batch():
    busy = route(*(frame("a", i) for i in range(5)))
    quiet = route(frame("b", 0), ctl.END)
    batch, ended = gather([busy, quiet], max_batch=4)
    assert [(f.source_id, f.index) for _, f in batch] == [("a", 0), ("b", 0), ("a", 1), ("a", 2)]
    assert ended == [quiet]
    batch, ended = gather([busy], max_batch=4)
    assert [f.index for _, f in batch] == [3, 4] and ended == []


def batches(batcher: Batcher, feeds: list[tuple[queue.Queue, list]], arrivals: list[int]) -> list[list[tuple[str, int]]]:
    """Every batch `batcher` hands out while the frames of `feeds` arrive `arrivals[k]` at a time
    (taking after each arrival): a run's timing, played back."""
    out: list[list[tuple[str, int]]] = []
    pending = [list(items) for _, items in feeds]
    for step in itertools.cycle(arrivals):
        for (frames, _), items in zip(feeds, pending):
            for item in items[:step]:
                frames.put(item)
            del items[:step]
        batch, ended = batcher.take()
        if batch:
            out.append([(f.source_id, f.index) for _, f in batch])
        if not batcher.waiting:
            return out


def play(arrivals: list[int], max_batch: int, in_turn: bool) -> list[list[tuple[str, int]]]:
    """The batches of two offline sources (7 and 4 frames) whose frames arrive `arrivals` at a time."""
    feeds = [(queue.Queue(), [frame(name, i) for i in range(count)] + [ctl.END]) for name, count in (("a", 7), ("b", 4))]
    return batches(Batcher([(frames, queue.Queue()) for frames, _ in feeds], max_batch, in_turn), feeds, arrivals)


@pytest.mark.parametrize("max_batch", [2, 3])
def test_an_offline_runs_batches_hold_the_same_frames_whatever_the_timing(max_batch):
    """Frames that arrive at once or trickle in give the same batches (a frame's floats through the
    models depend on its batch-mates); a live run's batches take what is there."""
    at_once = play([100], max_batch, in_turn=True)
    for timing in ([1], [0, 1, 0, 0, 2], [3, 0]):
        assert play(timing, max_batch, in_turn=True) == at_once
    assert all(len(batch) == max_batch for batch in at_once[:-2])
    assert [f for batch in at_once for f in batch][:4] == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert play([1], 3, in_turn=False) != play([100], 3, in_turn=False)


@pytest.fixture(scope="module")
def models():
    config = load_config(None, ["models.semantic.input_size=[160,96]", "models.instance.min_size=96",
                                "models.instance.max_size=160", "runtime.device=cpu"])
    return config, build_models(config.models, config.categories(), torch.device("cpu"), "off")


def test_thread_layout_runs_two_frames_at_once_on_a_cpu_and_one_on_a_gpu():
    assert thread_layout("cpu", 2, None, None) == (2, 1)
    assert thread_layout("cpu", 16, None, None) == (2, 8)
    assert thread_layout("cpu", 1, None, None) == (1, 1)
    assert thread_layout("cuda", 16, None, None) == (1, 16)
    assert thread_layout("cpu", 16, 4, None) == (4, 4)
    assert thread_layout("cpu", 2, 3, 2) == (3, 2)


@pytest.mark.parametrize("files, cores", [
    ({"cpu.max": "max 100000\n"}, 8),  # cgroup v2, no quota
    ({"cpu.max": "200000 100000\n"}, 2),  # docker --cpus=2
    ({"cpu.max": "150000 100000\n"}, 1),  # 1.5 CPUs: one thread per core, never more
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 8),  # v1, no quota
    ({"cpu.max": "garbage"}, 8),
    ({}, 8),
])
def test_available_cores_heeds_a_cgroup_cpu_quota(tmp_path, monkeypatch, files, cores):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert available_cores(tmp_path) == cores


def run_worker(loaded, config, routes: list, max_batch: int, parallel: int) -> ctl.Control:
    control = ctl.Control()
    pool = InferencePool(parallel, 1)
    worker = threading.Thread(target=worker_loop, args=(pool, loaded, fusion_params(config), routes, control, max_batch))
    worker.start()
    worker.join(120)
    pool.close()
    assert not worker.is_alive()
    return control


@pytest.mark.parametrize("max_batch, parallel", [(4, 1), (1, 3)])
def test_batches_and_parallel_frames_segment_like_single_frames_and_keep_each_sources_order(models, max_batch, parallel):
    config, loaded = models
    scenes = {"a": StreetScene(3, (160, 96), 10.0), "b": StreetScene(4, (128, 96), 10.0)}  # two sizes in one batch
    frames = {name: [frame(name, i, scene.render(i * 5).image) for i in range(3)] for name, scene in scenes.items()}
    routes = {name: route(*items, ctl.END) for name, items in frames.items()}
    control = run_worker(loaded, config, list(routes.values()), max_batch, parallel)
    assert control.failure is None
    for name, (_, results) in routes.items():
        out = [results.get_nowait() for _ in range(4)]
        assert out[-1] is ctl.END and results.empty()
        assert [r.frame.index for r in out[:-1]] == [0, 1, 2]
        assert all(r.panoptic_map.shape == r.frame.image.shape[:2] for r in out[:-1])
        image = out[0].frame.image
        (alone,) = loaded.predict([image])
        batched = loaded.predict([image, frames["a"][1].image])[0]
        assert (alone.semantic == batched.semantic).float().mean() > 0.999
        assert torch.equal(alone.categories, batched.categories)


class FirstFrameLast:
    """The real models, except that the first frame's call returns only after two later frames' have."""

    def __init__(self, models: PanopticModels, first: np.ndarray):
        self.models, self.first, self.is_thing = models, first, models.is_thing
        self.later_done = threading.Semaphore(0)
        self.order: list[int] = []

    def predict(self, images):
        if images[0] is self.first:
            assert self.later_done.acquire(timeout=60) and self.later_done.acquire(timeout=60)
        predictions = self.models.predict(images)
        self.order.append(0 if images[0] is self.first else 1)
        if images[0] is not self.first:
            self.later_done.release()
        return predictions


def test_parallel_frames_leave_in_the_order_they_came_even_when_a_later_one_finishes_first(models):
    config, loaded = models
    scene = StreetScene(5, (160, 96), 10.0)
    items = [frame("a", i, scene.render(i).image) for i in range(6)]
    slow_first = FirstFrameLast(loaded, items[0].image)
    frames, results = route(*items, ctl.END)
    control = run_worker(slow_first, config, [(frames, results)], 1, 3)
    assert control.failure is None
    assert slow_first.order.index(0) >= 2  # later frames did finish first
    out = [results.get_nowait() for _ in range(7)]
    assert [r.frame.index for r in out[:-1]] == list(range(6)) and out[-1] is ctl.END


def test_a_model_error_in_a_pool_thread_fails_the_run_with_that_error(models):
    config, loaded = models
    bad = np.zeros((96, 160), np.uint8)  # no colour channels: the models cannot take it
    with pytest.raises(RuntimeError) as direct:
        loaded.predict([bad])
    frames, results = route(frame("a", 0), frame("a", 1, bad), frame("a", 2), ctl.END)
    control = run_worker(loaded, config, [(frames, results)], 1, 2)
    assert type(control.failure) is RuntimeError and str(control.failure) == str(direct.value)
    assert control.abort.is_set()
