"""The semantic network alone, per inference backend: torch and each other backend whose library is
installed (streamer.inference.backends; on CUDA also ONNX Runtime's CUDA and TensorRT execution
providers where that ONNX Runtime has them), on the same frames, resized to the network's input
size and normalised beforehand, out of the clock; one frame at a time, backends taking turns within
every repeat so that a change in the machine's load hits all of them alike. Reported as
`backends.semantic.<backend>`. An exported backend's export is made (and verified against torch)
first when the cache has none, before any clock starts."""
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
from streamer.inference import backends as inference_backends
from streamer.inference import exports
from streamer.inference.models import RANDOM_INIT_SEED, build_semantic, uses_autocast
from streamer.tools.bench.measure import ms_summary
from streamer.tools.bench.options import BenchOptions

log = logging.getLogger(__name__)

# frame index -> that frame's logits, computed (on a GPU: synchronised) by the time the call returns
SemanticRun = Callable[[int], object]
# ONNX Runtime's GPU execution providers the bench tries on CUDA, by the name it reports them under
ORT_GPU_PROVIDERS = {"onnxruntime-cuda": "CUDAExecutionProvider", "onnxruntime-tensorrt": "TensorrtExecutionProvider"}


def seeded_network(config: Config) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):  # `weights: none`: the network `streamer run` would build
        torch.manual_seed(RANDOM_INIT_SEED)
        return build_semantic(config.models.semantic).eval()


def torch_semantic(config: Config, device: torch.device, frames: list[torch.Tensor]) -> tuple[SemanticRun, dict[str, Any]]:
    """torch eager, as `streamer run` runs it (channels_last and float16 autocast on CUDA unless
    runtime.half is off); the frames uploaded once."""
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    network = seeded_network(config).to(device).to(memory_format=layout)
    autocast = uses_autocast(device, config.runtime.half)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    uploaded = [frame.to(device).contiguous(memory_format=layout) for frame in frames]

    @torch.inference_mode()
    def run(index: int) -> object:
        precision = torch.autocast(device_type="cuda", dtype=torch.float16) if autocast else contextlib.nullcontext()
        with precision:
            logits = network(uploaded[index])
        sync()
        return logits

    return run, {"dtype": "float16 (autocast)" if autocast else "float32", "threads": torch.get_num_threads(), "device": str(device)}


def exported_semantic(backend: str) -> Callable[[Config, torch.device, list[torch.Tensor]], tuple[SemanticRun, dict[str, Any]]]:
    """ONNX Runtime or OpenVINO on the CPU, as `run` with models.semantic.backend set runs them
    (inference.exports.load_semantic, on this thread's torch thread count)."""

    def build(config: Config, device: torch.device, frames: list[torch.Tensor]) -> tuple[SemanticRun, dict[str, Any]]:
        settings = config.models.semantic.model_copy(update={"backend": backend})
        threads = torch.get_num_threads()
        network = exports.load_semantic(seeded_network(config), settings, threads, config.models.preset)

        @torch.inference_mode()
        def run(index: int) -> object:
            return network(frames[index])

        return run, {"dtype": "float32", "threads": threads, "device": "cpu", "library": inference_backends.library_version(backend)}

    return build


def ort_gpu_semantic(name: str) -> Callable[[Config, torch.device, list[torch.Tensor]], tuple[SemanticRun, dict[str, Any]]]:
    """The verified ONNX Runtime export (the cache's, made first when missing) in a session on one of
    ONNX Runtime's GPU providers; float32 host arrays in and out, so each call's copies to and from
    the GPU are counted (TensorRT builds its engine at the warm-up call, in float16 unless
    runtime.half is off)."""

    def build(config: Config, device: torch.device, frames: list[torch.Tensor]) -> tuple[SemanticRun, dict[str, Any]]:
        import onnxruntime as ort


        network = seeded_network(config)
        settings = config.models.semantic.model_copy(update={"backend": "onnxruntime"})
        exports.ensure(network, settings, "onnxruntime", torch.get_num_threads(), config.models.preset)
        model = exports.cache_root() / exports.export_key(network, settings, "onnxruntime").name / exports.MODEL_FILE
        provider = ORT_GPU_PROVIDERS[name]
        half = config.runtime.half != "off"
        options: dict[str, Any] = {"device_id": device.index or 0}
        if provider == "TensorrtExecutionProvider":
            options["trt_fp16_enable"] = half
        session = ort.InferenceSession(str(model), providers=[(provider, options), "CPUExecutionProvider"])
        if session.get_providers()[0] != provider:
            raise RuntimeError(f"{provider} did not load: ONNX Runtime fell back to {session.get_providers()[0]}")
        source = session.get_inputs()[0].name
        arrays = [frame.numpy() for frame in frames]

        def run(index: int) -> object:
            return session.run(None, {source: arrays[index]})[0]

        dtype = "float16 (TensorRT)" if provider == "TensorrtExecutionProvider" and half else "float32"
        return run, {"dtype": dtype, "device": str(device), "library": ort.__version__, "io": "host arrays, copies counted"}

    return build


def available(device: torch.device) -> dict[str, Callable[[Config, torch.device, list[torch.Tensor]], tuple[SemanticRun, dict[str, Any]]]]:
    """The backends the bench can compare here, by name: torch; onnxruntime and openvino where their
    library imports; on CUDA, ONNX Runtime's GPU providers that the installed ONNX Runtime lists."""
    found: dict[str, Callable[[Config, torch.device, list[torch.Tensor]], tuple[SemanticRun, dict[str, Any]]]] = {
        "torch": torch_semantic}
    for backend in inference_backends.EXPORTED:
        if importlib.util.find_spec(inference_backends.MODULES[backend]) is not None:
            found[backend] = exported_semantic(backend)
    if device.type == "cuda" and "onnxruntime" in found:
        import onnxruntime as ort

        for name, provider in ORT_GPU_PROVIDERS.items():
            if provider in ort.get_available_providers():
                found[name] = ort_gpu_semantic(name)
    return found


def semantic_inputs(images: list[np.ndarray], config: Config) -> list[torch.Tensor]:
    """BGR uint8 frames -> 1 x 3 x H x W float32 (CPU), RGB resized (bilinear) to
    models.semantic.input_size and normalised by its mean and std, as PanopticModels feeds the network."""
    settings = config.models.semantic
    width, height = settings.input_size
    mean = torch.tensor(settings.mean).view(1, 3, 1, 1) / 255.0
    std = torch.tensor(settings.std).view(1, 3, 1, 1) / 255.0
    out = []
    for image in images:
        rgb = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).flip(0).float()[None] / 255.0
        resized = F.interpolate(rgb, size=(height, width), mode="bilinear", align_corners=False)
        out.append(((resized - mean) / std).contiguous())
    return out


def semantic_backends(options: BenchOptions, config: Config, device: torch.device, images: list[np.ndarray]) -> dict[str, Any]:
    """ms per frame of the semantic network alone for each backend of options.backends (default: every
    one available()), over the first options.semantic_frames frames, options.repeats times in turn.
    Per backend: `ms` (median over every frame of every repeat), `ms_stats`, `runs_ms` (each
    repeat's mean), `vs_torch` (torch's ms over this backend's: above 1 is faster), what it ran as;
    a backend that cannot run here has `error` instead."""
    builders = available(device)
    names = list(options.backends or builders)
    frames = semantic_inputs(images[: options.semantic_frames], config)
    runs: dict[str, SemanticRun] = {}
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        if name not in builders:
            rows[name] = {"error": f"not available here (available: {', '.join(builders)})"}
            log.warning("bench: semantic backend %s %s", name, rows[name]["error"])
            continue
        try:
            runs[name], about = builders[name](config, device, frames)
            runs[name](0)  # warm-up: first-call allocations, kernel selection, graph optimisation, engine build
        except Exception as exc:  # noqa: BLE001 - one backend that cannot run is that backend's row, not the bench's end
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}
            runs.pop(name, None)
            log.warning("bench: semantic backend %s cannot run: %s", name, rows[name]["error"])
            continue
        rows[name] = {**about, "frames": len(frames), "runs_ms": []}
    per_frame: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(options.repeats):
        for name, run in runs.items():
            seconds = []
            for index in range(len(frames)):
                started = time.perf_counter()
                run(index)
                seconds.append(time.perf_counter() - started)
            per_frame[name] += seconds
            rows[name]["runs_ms"].append(round(1000 * float(np.mean(seconds)), 3))
            log.info("bench %d/%d: semantic network through %s %.1f ms per frame", repeat + 1, options.repeats, name,
                     1000 * float(np.mean(seconds)))
    for name, seconds in per_frame.items():
        rows[name]["ms_stats"] = ms_summary(seconds)
        rows[name]["ms"] = rows[name]["ms_stats"]["median"]
    if "torch" in per_frame:
        for name in per_frame:
            rows[name]["vs_torch"] = round(rows["torch"]["ms"] / rows[name]["ms"], 3)
    width, height = config.models.semantic.input_size
    return {"input_size": [width, height], "frames": len(frames), "semantic": rows}
