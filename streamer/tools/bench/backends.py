"""The semantic network alone, per inference backend: torch and each other backend whose library is
installed, on the same frames (resized to the network's input size and normalised beforehand, out
of the clock), one frame at a time, taking turns within every repeat so that a change in the
machine's load hits all of them alike. Reported as `backends.semantic.<backend>`."""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from streamer.config import Config
from streamer.inference.models import RANDOM_INIT_SEED, build_semantic, uses_autocast
from streamer.tools.bench.measure import ms_summary
from streamer.tools.bench.options import BenchOptions

log = logging.getLogger(__name__)

# One frame, 1 x 3 x H x W float32 normalised RGB at the network's input size -> its logits, computed
# (on a GPU: synchronised) by the time the call returns.
SemanticRun = Callable[[np.ndarray], object]


def torch_semantic(config: Config, device: torch.device) -> tuple[SemanticRun, dict[str, Any]]:
    """The configured semantic network in torch eager mode, as `streamer run` runs it (channels_last
    and float16 autocast on CUDA unless runtime.half is off), with what it ran as."""
    with torch.random.fork_rng(devices=[]):  # `weights: none`: the network streamer run would build
        torch.manual_seed(RANDOM_INIT_SEED)
        network = build_semantic(config.models.semantic)
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    network = network.to(device).eval().to(memory_format=layout)
    autocast = uses_autocast(device, config.runtime.half)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    uploaded: dict[int, torch.Tensor] = {}  # frames on the device once, outside the clock

    @torch.inference_mode()
    def run(batch: np.ndarray) -> object:
        x = uploaded.get(id(batch))
        if x is None:
            x = uploaded[id(batch)] = torch.from_numpy(batch).to(device).contiguous(memory_format=layout)
        precision = torch.autocast(device_type="cuda", dtype=torch.float16) if autocast else contextlib.nullcontext()
        with precision:
            logits = network(x)
        sync()
        return logits

    return run, {"dtype": "float16 (autocast)" if autocast else "float32", "threads": torch.get_num_threads()}


# backend name -> (module that must be importable, builder); other backends join through the inference seam
BUILDERS: dict[str, tuple[str | None, Callable[[Config, torch.device], tuple[SemanticRun, dict[str, Any]]]]] = {
    "torch": (None, torch_semantic),
}


def installed() -> list[str]:
    """The backends the bench can compare here: torch, and each other one whose library imports."""
    return [name for name, (module, _) in BUILDERS.items() if module is None or importlib.util.find_spec(module) is not None]


def semantic_inputs(images: list[np.ndarray], config: Config) -> list[np.ndarray]:
    """BGR uint8 frames -> 1 x 3 x H x W float32, RGB resized (bilinear) to models.semantic.input_size
    and normalised by its mean and std, as PanopticModels feeds the network."""
    settings = config.models.semantic
    width, height = settings.input_size
    mean = torch.tensor(settings.mean).view(1, 3, 1, 1) / 255.0
    std = torch.tensor(settings.std).view(1, 3, 1, 1) / 255.0
    out = []
    for image in images:
        rgb = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).flip(0).float()[None] / 255.0
        resized = F.interpolate(rgb, size=(height, width), mode="bilinear", align_corners=False)
        out.append(((resized - mean) / std).contiguous().numpy())
    return out


def semantic_backends(options: BenchOptions, config: Config, device: torch.device, images: list[np.ndarray]) -> dict[str, Any]:
    """ms per frame of the semantic network alone for each backend of options.backends (default:
    installed()), over the first options.semantic_frames frames, options.repeats times in turn.
    Per backend: `ms` (median over every frame of every repeat), `ms_stats`, `runs_ms` (each repeat's
    mean), `vs_torch` (torch's ms over this backend's: above 1 is faster), and what it ran as."""
    names = list(options.backends or installed())
    frames = semantic_inputs(images[: options.semantic_frames], config)
    runs: dict[str, SemanticRun] = {}
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        if name not in BUILDERS:
            log.warning("bench: no semantic backend called %r here (known: %s)", name, ", ".join(BUILDERS))
            continue
        runs[name], about = BUILDERS[name][1](config, device)
        runs[name](frames[0])  # warm-up: first-call allocations, kernel selection, graph optimisation
        rows[name] = {**about, "frames": len(frames)}
    per_frame: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(options.repeats):
        for name, run in runs.items():
            seconds = []
            for batch in frames:
                started = time.perf_counter()
                run(batch)
                seconds.append(time.perf_counter() - started)
            per_frame[name] += seconds
            rows[name].setdefault("runs_ms", []).append(round(1000 * float(np.mean(seconds)), 3))
            log.info("bench %d/%d: semantic network through %s %.1f ms per frame", repeat + 1, options.repeats, name,
                     1000 * float(np.mean(seconds)))
    for name, seconds in per_frame.items():
        rows[name]["ms_stats"] = ms_summary(seconds)
        rows[name]["ms"] = rows[name]["ms_stats"]["median"]
    if "torch" in rows:
        for row in rows.values():
            row["vs_torch"] = round(rows["torch"]["ms"] / row["ms"], 3)
    width, height = config.models.semantic.input_size
    return {"input_size": [width, height], "frames": len(frames), "semantic": rows}
