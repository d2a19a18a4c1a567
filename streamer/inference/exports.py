"""ONNX exports of the semantic network for ONNX Runtime and OpenVINO: made, verified, cached.

An export is the network traced at its input size (models.semantic.input_size; the batch dimension
left free) by torch's ONNX exporter, kept only once the backend that will run it gave torch's
classes: the argmax of its logits equals torch's on at least AGREEMENT_MIN of the pixels of
VERIFY_FRAMES frames (synthetic noise and synthetic street scenes, at the input size).

Cache: `$XDG_CACHE_HOME/streamer/exports` (else `~/.cache/streamer/exports`), beside the other
caches, one folder per export holding `model.onnx` and `export.json` (what it was made from, its
sha256, the agreement found). The folder's name ends in a key hashed from the weights (every
tensor's bytes), the architecture, the input size, the backend and the versions of torch and of the
backend's library: changed weights, size or library make a new export, never a stale one. An export
is written in a staging folder and renamed into place whole (a crash or a full disk leaves nothing
half-written: CannotCreate, exit 73); one whose files do not match its record, or whose record is
another model's, is refused (DataError, exit 65) and removed. Writing goes through cache_files
(nothing through a planted link) under a lock on the exports folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from streamer import config as cfg
from streamer.errors import CannotCreate, DataError
from streamer.inference import backends
from streamer.inference.cache_files import Folder, write_all
from streamer.inference.prediction import SemanticNetwork

log = logging.getLogger("streamer.models")

FORMAT = 1  # the layout of an export folder; part of the key
OPSET = 18  # the ONNX operator set exported (ONNX Runtime >= 1.14, OpenVINO >= 2023 read it)
AGREEMENT_MIN = 0.995  # an export whose argmax differs from torch's on more of the pixels is refused
MODEL_FILE = "model.onnx"
RECORD_FILE = "export.json"
NOISE_FRAMES = 2  # uniform noise: every class's logits exercised, no scene prior
STREET_FRAMES = 2  # synthetic streets (seeds 1000+, never trained on): frames as the models see them
STREET_SEED = 1000


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/streamer/exports`, else `~/.cache/streamer/exports`."""
    return Path(os.path.expanduser(os.environ.get("XDG_CACHE_HOME") or "~/.cache")) / "streamer" / "exports"


def weights_digest(network: torch.nn.Module) -> str:
    """sha256 over the network's state dict: every entry's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)  # 1-D: a 0-d tensor (a counter) has no byte view
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Key:
    """What an export is made from, and the folder name that holds it."""

    fields: dict
    digest: str  # sha256 of the fields

    @property
    def name(self) -> str:
        width, height = self.fields["input_size"]
        return f"{self.fields['network']}-{width}x{height}-{self.fields['backend']}-{self.digest[:16]}"


def export_key(network: torch.nn.Module, settings: cfg.SemanticModel, backend: str) -> Key:
    """The cache key of `network` exported at settings.input_size for `backend` with the installed libraries."""
    fields = {
        "format": FORMAT,
        "network": re.sub(r"[^a-z0-9]+", "", type(network).__name__.lower()) or "network",
        "weights": weights_digest(network),
        "classes": len(settings.classes),
        "input_size": list(settings.input_size),
        "backend": backend,
        "opset": OPSET,
        "versions": {"torch": torch.__version__, backend: backends.library_version(backend)},
    }
    return Key(fields, hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest())


# ---------------------------------------------------------------------------------------------
# Verification


@dataclass(frozen=True)
class Agreement:
    """How an export's output compares with torch's on the verification frames."""

    frames: int
    pixels: int  # at the network's input size, over all frames
    agreeing: int  # pixels whose argmax class is torch's
    max_logit_difference: float  # the largest |logit - torch's logit|

    @property
    def fraction(self) -> float:
        return self.agreeing / self.pixels if self.pixels else 0.0

    def describe(self) -> str:
        return (f"argmax agreement with torch {100 * self.fraction:.3f} % of {self.pixels} pixels, max logit difference "
                f"{self.max_logit_difference:.2g} ({self.frames} frames: {NOISE_FRAMES} noise, {STREET_FRAMES} synthetic street)")


def verification_frames(settings: cfg.SemanticModel) -> torch.Tensor:
    """VERIFY frames at the input size, preprocessed as PanopticModels does (RGB, normalised by the
    settings' mean and std): F x 3 x H x W float32. Deterministic."""
    from streamer.inputs.synthetic import StreetScene  # OpenCV: only when verifying

    width, height = settings.input_size
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(NOISE_FRAMES)]
    images += [StreetScene(STREET_SEED + i, (width, height)).render(0).image for i in range(STREET_FRAMES)]
    rgb = torch.stack([torch.from_numpy(np.ascontiguousarray(image[..., ::-1])).permute(2, 0, 1) for image in images]).float() / 255.0
    mean = torch.tensor(settings.mean).view(1, 3, 1, 1) / 255.0
    std = torch.tensor(settings.std).view(1, 3, 1, 1) / 255.0
    return (rgb - mean) / std


@torch.inference_mode()
def compare(reference: torch.nn.Module, candidate: SemanticNetwork, frames: torch.Tensor) -> Agreement:
    """Each frame through both networks (one at a time, as the pipeline runs them): the pixels whose
    argmax agrees and the largest logit difference."""
    reference = reference.eval()
    pixels = agreeing = 0
    worst = 0.0
    for frame in frames:
        expected = reference(frame[None]).float()
        got = candidate(frame[None]).float()
        if got.shape != expected.shape:
            raise DataError(f"the export gives logits of shape {list(got.shape)}, torch {list(expected.shape)}")
        pixels += expected[0, 0].numel()
        agreeing += int((got.argmax(1) == expected.argmax(1)).sum())
        worst = max(worst, float((got - expected).abs().max()))
    return Agreement(len(frames), pixels, agreeing, worst)


# ---------------------------------------------------------------------------------------------
# Export


def onnx_bytes(network: torch.nn.Module, settings: cfg.SemanticModel) -> bytes:
    """`network` (eval mode, on the CPU) as an ONNX model at settings.input_size with a free batch
    dimension: input `x`, output `logits`. torch's TorchScript-based exporter (seconds; the dynamo
    exporter takes ten times longer and needs onnxscript), the dynamo one where it fails."""
    width, height = settings.input_size
    example = torch.zeros(1, 3, height, width)
    network = network.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on tracing and its own deprecation
        try:
            torch.onnx.export(network, (example,), buffer, input_names=["x"], output_names=["logits"],  # type: ignore[arg-type]
                              opset_version=OPSET, dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        except Exception:  # noqa: BLE001 - an operator the old exporter lacks: the dynamo exporter may have it
            batch = torch.export.Dim("batch", min=1, max=64)
            program = torch.onnx.export(network, (example,), None, input_names=["x"], output_names=["logits"], opset_version=OPSET,
                                        dynamic_shapes={"x": {0: batch}}, dynamo=True, verbose=False)
            if program is None:
                raise
            return program.model_proto.SerializeToString()
    return buffer.getvalue()


def export(network: torch.nn.Module, settings: cfg.SemanticModel, backend: str, threads: int,
           reference: torch.nn.Module | None = None) -> tuple[Path, Agreement]:
    """Export `network` for `backend`, verify it against `reference` (default: `network` itself) and
    put it in the cache; its folder and the agreement found. An export already there is kept as it
    is. Raises DataError (65) when the agreement is below AGREEMENT_MIN (nothing kept), CannotCreate
    (73) when the cache cannot be written (nothing half-written kept)."""
    key = export_key(network, settings, backend)
    with Folder.root(cache_root()) as root, root.hold("the semantic network's export"):
        if root.lstat(key.name) is not None:  # made before (or meanwhile, by another process)
            folder_path = root.path / key.name
            load(folder_path, key, backend, threads)  # refuses one that is corrupt or another model's (65, removed)
            try:
                return folder_path, Agreement(**json.loads((folder_path / RECORD_FILE).read_text())["agreement"])
            except (KeyError, TypeError, ValueError) as exc:
                refuse(folder_path, f"its {RECORD_FILE} lacks the agreement found ({type(exc).__name__}: {first_line(exc)})")
        staging = f".{key.name}.{os.getpid()}.staging"
        discard(root, staging)  # a crashed export's leftover
        try:
            with root.sub(staging) as folder:
                data = onnx_bytes(network, settings)
                fd = folder.create(MODEL_FILE)
                try:
                    write_all(fd, data, folder.path / MODEL_FILE)
                finally:
                    os.close(fd)
                folder.sync(MODEL_FILE)
                try:
                    candidate = backends.open_exported(folder.path / MODEL_FILE, backend, threads)
                except Exception as exc:  # noqa: BLE001 - any library's refusal of the file is the same failure
                    raise DataError(f"{backend} cannot load the export of this network ({type(exc).__name__}: "
                                    f"{first_line(exc)}); it was not kept") from None
                agreement = compare(reference if reference is not None else network, candidate, verification_frames(settings))
                if agreement.fraction < AGREEMENT_MIN:
                    raise DataError(f"the {backend} export gives torch's class on {100 * agreement.fraction:.3f} % of the pixels, "
                                    f"below {100 * AGREEMENT_MIN:g} % ({agreement.describe()}); it was not kept: run this network "
                                    "with models.semantic.backend=torch")
                record = {"key": key.digest, "made_from": key.fields, "sha256": hashlib.sha256(data).hexdigest(),
                          "agreement": asdict(agreement), "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                folder.write_text(RECORD_FILE, json.dumps(record, indent=2) + "\n", folder)
                folder.sync()
            try:
                os.rename(staging, key.name, src_dir_fd=root.fd, dst_dir_fd=root.fd)
            except OSError as exc:
                raise CannotCreate(f"{root.path / key.name}: cannot put the export in place ({exc.strerror or exc})") from None
            root.sync()
        except CannotCreate as exc:
            discard(root, staging)
            raise CannotCreate(f"{exc}; nothing was kept: free some space (or point XDG_CACHE_HOME at another disk), "
                               "then export again") from None
        except BaseException:
            discard(root, staging)
            raise
    return root.path / key.name, agreement


def discard(root: Folder, name: str) -> None:
    """Remove the export or staging folder `name` of `root` and its files (a link by that name: the link only)."""
    info = root.lstat(name)
    if info is None:
        return
    try:
        folder = root.sub(name, create=False)
    except CannotCreate:
        root.remove(name)  # a link or a file where a folder belongs
        return
    with folder:
        for entry in os.listdir(folder.fd):
            with contextlib.suppress(IsADirectoryError, PermissionError):
                folder.remove(entry)
    root.rmdir(name)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


# ---------------------------------------------------------------------------------------------
# Loading


def load(folder: Path, key: Key, backend: str, threads: int) -> SemanticNetwork:
    """The export in `folder`, checked against its record and `key` and opened by `backend`. Raises
    DataError (65) for one that is corrupt or another model's, after removing it from the cache."""
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        refuse(folder, f"its {RECORD_FILE} cannot be read ({first_line(exc)})")
    if record.get("key") != key.digest:
        refuse(folder, "it was made from another model (its record's key is not this network's)")
    model = folder / MODEL_FILE
    try:
        data = model.read_bytes()
    except OSError as exc:
        refuse(folder, f"its {MODEL_FILE} cannot be read ({exc.strerror or exc})")
    if hashlib.sha256(data).hexdigest() != record.get("sha256"):
        refuse(folder, f"its {MODEL_FILE} is not the file that was verified (sha256 differs: corrupt or replaced)")
    try:
        return backends.open_exported(model, backend, threads)
    except Exception as exc:  # noqa: BLE001 - any library's refusal of the file is the same failure
        refuse(folder, f"{backend} cannot load it ({type(exc).__name__}: {first_line(exc)})")


def refuse(folder: Path, why: str) -> NoReturn:
    """Remove the export `folder` from the cache and raise DataError saying why."""
    with contextlib.suppress(CannotCreate), Folder.root(folder.parent) as root:
        discard(root, folder.name)
    raise DataError(f"{folder}: export refused: {why}; it was removed from the cache, the next run (or streamer models "
                    "export) makes it anew")


def ensure(network: torch.nn.Module, settings: cfg.SemanticModel, backend: str, threads: int, preset: str = "") -> SemanticNetwork:
    """`network`'s export for `backend` from the cache, made and verified first when missing (with a
    progress line). Raises DataError (65) for a corrupt export or a refused one, CannotCreate (73)
    naming the `streamer models export` command when the cache cannot be written."""
    key = export_key(network, settings, backend)
    folder = cache_root() / key.name
    if not folder.exists():
        width, height = settings.input_size
        log.info("models.semantic.backend %s: no export of these weights at %dx%d in %s yet; exporting it and checking it "
                 "against torch (once; seconds to a minute)", backend, width, height, folder.parent)
        command = f"streamer models export {preset or 'PRESET'} --backend {backend}"
        try:
            folder, agreement = export(network, settings, backend, threads)
        except CannotCreate as exc:
            raise CannotCreate(f"{exc}; or run `{command}` as a user who can write that cache, "
                               "or set XDG_CACHE_HOME to a writable folder") from None
        log.info("exported %s: %s", folder, agreement.describe())
    return load(folder, key, backend, threads)


def load_semantic(network: torch.nn.Module, settings: cfg.SemanticModel, threads: int, preset: str = "") -> SemanticNetwork:
    """The semantic network as `settings.backend` runs it, on `threads` intra-op threads per frame:
    `network` itself for torch, else its verified export from the cache, made first when missing
    (`ensure`: a progress line; CannotCreate, exit 73, naming `streamer models export PRESET` when
    the cache cannot be written). Raises ConfigError (78) when the backend's library is missing,
    DataError (65) for a corrupt export (removed from the cache)."""
    if settings.backend == "torch":
        return network
    backends.require_library(settings.backend)
    return ensure(network, settings, settings.backend, threads, preset)
