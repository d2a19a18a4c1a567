"""The inference backends of the semantic network: torch, ONNX Runtime, OpenVINO.

`models.semantic.backend` picks one. `torch` runs the module itself; `onnxruntime` and `openvino`
run an ONNX export of it that streamer.inference.exports makes, verifies against torch and keeps in
the user's cache (exports.load_semantic gives the network as the configured backend runs it). Each
backend's library is imported only when it is chosen (extras `streamer[onnx]`, `streamer[openvino]`);
whichever ran, the result is the same `SemanticNetwork` (inference.prediction): logits as a torch
tensor on the input's device.

Threads: each frame in the models runs on as many threads as torch would give it
(runtime.parallel_frames and runtime.torch_threads, worker.thread_layout), so the backends share
the cores out as the torch path does: ONNX Runtime with that many intra-op threads per session run
(one thread: the run stays on the calling thread, so two frames run side by side), OpenVINO with one
compiled model of that many threads per calling thread.
"""
from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from streamer.errors import ConfigError
from streamer.inference.prediction import SemanticNetwork

EXPORTED = ("onnxruntime", "openvino")  # the backends that run an export
MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}  # the library each imports
EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino"}  # the pip extra that installs it


def import_library(backend: str) -> ModuleType:
    """The backend's library, imported. ONNX Runtime (1.2x on Linux) otherwise starts its telemetry,
    which keeps a database in ~/.cache/Microsoft and may send events: streamer never sends anything,
    so it is turned off (ORT_DISABLE_TELEMETRY) unless the environment says otherwise. Raises ImportError."""
    if backend == "onnxruntime":
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    return importlib.import_module(MODULES[backend])


def require_library(backend: str) -> None:
    """Nothing when `backend` can run here; ConfigError (exit 78) naming the extra to install when its
    library is not installed."""
    if backend not in EXPORTED:
        return
    try:
        import_library(backend)
    except ImportError:
        raise ConfigError(f"models.semantic.backend: {backend} is not installed; install it with "
                          f"pip install 'streamer[{EXTRAS[backend]}]', or set models.semantic.backend to torch") from None


def library_version(backend: str) -> str:
    """The installed version of the backend's library (torch's for `torch`)."""
    if backend == "torch":
        return torch.__version__
    return str(import_library(backend).__version__)


def open_exported(path: Path, backend: str, threads: int) -> SemanticNetwork:
    """The ONNX file at `path` run by `backend` on `threads` threads per call. Raises whatever the
    library raises for a file it cannot load (exports turns it into DataError)."""
    if backend == "onnxruntime":
        return OnnxRuntimeNetwork(path, threads)
    if backend == "openvino":
        return OpenVinoNetwork(path, threads)
    raise ValueError(f"not an export backend: {backend}")


def _to_numpy(batch: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(batch.detach().float().cpu().numpy())


class OnnxRuntimeNetwork:
    """An ONNX model in an ONNX Runtime session on the CPU: float32 N x 3 x H x W -> N x C x H x W.
    Sessions are safe to run from several threads at once."""

    def __init__(self, path: Path, threads: int):
        ort = import_library("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # its threads sleep while they wait, as torch's do (streamer.openmp): spinning ones made a busy machine's 640x352
        # U-Net 1.3-1.7x slower (docs/benchmarks.md, "Sharing the machine")
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: its notes on graph rewrites are not the user's business
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.session.run(None, {self.input: _to_numpy(batch)})[0]
        return torch.from_numpy(logits).to(batch.device)


class OpenVinoNetwork:
    """An ONNX model compiled by OpenVINO for the CPU in float32 (never its bf16 default on CPUs
    that have it: the export must give torch's classes), one compiled model per calling thread so
    that frames on different threads run side by side, each on `threads` threads."""

    def __init__(self, path: Path, threads: int):
        import openvino as ov

        self.core = ov.Core()
        self.model = self.core.read_model(str(path))
        self.config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                       "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False}
        self.local = threading.local()
        self._request()  # compiled here too: a model OpenVINO cannot compile fails at load, not mid-run

    def _request(self):
        request = getattr(self.local, "request", None)
        if request is None:
            request = self.local.request = self.core.compile_model(self.model, "CPU", self.config).create_infer_request()
        return request

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        logits = np.array(self._request().infer({0: _to_numpy(batch)})[0], copy=True)  # the request reuses its buffer
        return torch.from_numpy(logits).to(batch.device)
