"""The worker: batches of queued frames, one per source in turn, results in each source's order,
and a batch gives the same segmentation as frames one at a time."""
from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest
import torch

from streamer import control as ctl
from streamer.config import load_config
from streamer.frames import Frame
from streamer.models import PanopticModels
from streamer.pipeline import fusion_params
from streamer.synthetic import StreetScene
from streamer.worker import gather, worker_loop


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


@pytest.fixture(scope="module")
def models():
    config = load_config(None, ["models.semantic.input_size=[160,96]", "models.instance.min_size=96",
                                "models.instance.max_size=160", "runtime.device=cpu"])
    return config, PanopticModels(config.models, config.categories(), torch.device("cpu"), "off")


def test_a_batch_segments_like_single_frames_and_keeps_each_sources_order(models):
    config, loaded = models
    scenes = {"a": StreetScene(3, (160, 96), 10.0), "b": StreetScene(4, (128, 96), 10.0)}  # two sizes in one batch
    frames = {name: [frame(name, i, scene.render(i * 5).image) for i in range(3)] for name, scene in scenes.items()}
    routes = {name: route(*items, ctl.END) for name, items in frames.items()}
    control = ctl.Control()
    worker = threading.Thread(target=worker_loop, args=(loaded, fusion_params(config), list(routes.values()), control, 4))
    worker.start()
    worker.join(120)
    assert not worker.is_alive() and control.failure is None
    for name, (_, results) in routes.items():
        out = [results.get_nowait() for _ in range(4)]
        assert out[-1] is ctl.END
        assert [r.frame.index for r in out[:-1]] == [0, 1, 2]
        assert all(r.panoptic_map.shape == r.frame.image.shape[:2] for r in out[:-1])
        image = out[0].frame.image
        (alone,) = loaded.predict([image])
        batched = loaded.predict([image, frames["a"][1].image])[0]
        assert (alone.semantic == batched.semantic).float().mean() > 0.999
        assert torch.equal(alone.categories, batched.categories)
