"""Where the weights a configuration names live, and whether they are there.

Four kinds: the bundled demo weights; files the config names by path; torchvision's published COCO
checkpoints, kept in torch's hub cache (`$TORCH_HOME/hub/checkpoints`, as torchvision's own
downloads); and smp models published on the Hugging Face hub, kept in its cache (`$HF_HUB_CACHE`,
default `~/.cache/huggingface/hub`). Nothing here downloads: `streamer models fetch` fills the caches.
"""
from __future__ import annotations

import enum
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from streamer import config as cfg
from streamer import presets
from streamer.errors import DataError, InputNotFound

HUB_FILES = ("config.json", "model.safetensors")  # what smp's save_pretrained writes and a model is built from
COCO_URLS = {  # torchvision's published COCO weights per Mask R-CNN builder; the 8 hex digits start the file's sha256
    "maskrcnn_resnet50_fpn": "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
    "maskrcnn_resnet50_fpn_v2": "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
}
WEIGHTS_SUFFIXES = {".pth", ".pt", ".safetensors"}
COMMIT = re.compile(r"[0-9a-f]{40}")  # a hub commit id: the only name a snapshot folder may have


class Kind(str, enum.Enum):
    BUNDLED = "bundled"  # the demo weights inside the package
    FILE = "file"  # a state dict file or save_pretrained folder named by path
    TORCH = "torch"  # a torchvision checkpoint in torch's hub cache
    HUB = "hub"  # an smp model in the Hugging Face cache


@dataclass(frozen=True)
class Weights:
    """One weights file (or hub model) a configuration needs."""

    role: str  # "semantic" or "instance"
    kind: Kind
    name: str  # hub id, checkpoint file name, or the path as configured
    path: Path | None  # where it is; TORCH: where it belongs; HUB: the cached snapshot folder, None if absent
    url: str = ""  # TORCH: where torchvision publishes it

    @property
    def present(self) -> bool:
        if self.path is None:
            return False
        return self.path.exists() if self.kind in (Kind.FILE, Kind.HUB) else self.path.is_file()

    @property
    def file(self) -> Path:
        """`path` where there must be one: FILE and TORCH weights, and a HUB model found in the cache."""
        assert self.path is not None, f"{self.name}: {self.kind.name} weights with no path"
        return self.path


def torch_checkpoints() -> Path:
    """torch's checkpoint cache, `torch.hub.get_dir()/checkpoints`, found as torch finds it
    ($TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch; then hub/checkpoints) but
    without importing torch, so the `models` commands and their errors answer at once."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "torch")
    return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_repo_folder(repo_id: str) -> Path:
    """Where the Hugging Face cache keeps `repo_id`: HF_HUB_CACHE/models--ORG--NAME."""
    from huggingface_hub.file_download import repo_folder_name

    return hub_cache() / repo_folder_name(repo_id=repo_id, repo_type="model")


def hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of `repo_id`'s `main` that holds every file of HUB_FILES, or None.
    Read as the hub's cache lays it out, trusting none of it (a mirror or another user may have
    written it): refs/main must name a commit (40 hex digits, never a path), the folders on the way
    must be real folders, and each file a regular file or a link to one in the repo's own blobs/."""
    repo = hub_repo_folder(repo_id)
    ref = repo / "refs" / "main"
    try:
        if any(p.is_symlink() for p in (repo / "refs", ref, repo / "snapshots", repo / "blobs")) or not ref.is_file():
            return None
        with open(ref, "rb") as handle:
            revision = handle.read(64).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    if not COMMIT.fullmatch(revision):
        return None
    folder = repo / "snapshots" / revision
    if folder.is_symlink() or not folder.is_dir():
        return None
    blobs = (repo / "blobs").resolve()
    for name in HUB_FILES:
        path = folder / name
        if path.is_symlink():
            target = path.resolve()
            if target.parent != blobs or not target.is_file():
                return None
        elif not path.is_file():
            return None
    return folder


def is_hub_id(text: str) -> bool:
    """`org/name` that is not a path on this machine."""
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and not Path(text).exists()


def semantic_weights(settings: cfg.SemanticModel) -> Weights | None:
    weights = settings.weights
    if weights == "none":
        return None
    if weights == "demo":
        return Weights("semantic", Kind.BUNDLED, "demo", None)
    if Path(weights).suffix in WEIGHTS_SUFFIXES or not is_hub_id(weights):
        return Weights("semantic", Kind.FILE, weights, Path(weights))
    return Weights("semantic", Kind.HUB, weights, hub_snapshot(weights))


def instance_weights(settings: cfg.InstanceModel) -> Weights | None:
    weights = settings.weights
    if weights == "none":
        return None
    if weights == "demo":
        return Weights("instance", Kind.BUNDLED, "demo", None)
    if weights == "coco":
        url = COCO_URLS[settings.arch]
        name = url.rsplit("/", 1)[1]
        return Weights("instance", Kind.TORCH, name, torch_checkpoints() / name, url)
    return Weights("instance", Kind.FILE, weights, Path(weights))


def needed(models: cfg.Models) -> list[Weights]:
    """The weights the models section names (random-init networks need none)."""
    return [w for w in (semantic_weights(models.semantic), instance_weights(models.instance)) if w is not None]


def require(models: cfg.Models) -> None:
    """Raise InputNotFound (exit 66) for the first weights that are not there: a file named by path,
    or cached weights (the message names the command that puts them there and the place). Their
    content is checked where they load."""
    for weights in needed(models):
        if weights.kind is Kind.FILE and not weights.present:
            raise InputNotFound(f"{weights.path}: weights file not found" if weights.file.suffix in WEIGHTS_SUFFIXES
                                else f"{weights.name}: {weights.role} weights not found (no such file or folder)")
        if weights.kind in (Kind.TORCH, Kind.HUB) and not weights.present:
            raise InputNotFound(missing_message(weights, models.preset))


def missing_message(weights: Weights, preset: str) -> str:
    where = weights.path if weights.kind is Kind.TORCH else hub_repo_folder(weights.name)
    cache = "torch's cache" if weights.kind is Kind.TORCH else "the Hugging Face cache"
    if preset != presets.NONE and weights.name in presets.get(preset).weights:
        how = (f"run `streamer models fetch {preset}` (or `streamer models import {preset} PATH...` "
               "with the files copied from a machine that has them)")
    elif weights.kind is Kind.TORCH:
        how = f"place {weights.url} there"
    else:
        how = f"download it once where there is network (hf download {weights.name}) and copy the cache"
    return f"{weights.name}: {weights.role} weights not in {cache} ({where}); {how}"


def pretrained_config(folder: Path, settings: cfg.SemanticModel, origin: str) -> dict:
    """config.json of an smp save_pretrained folder, checked against the settings: its architecture,
    encoder and number of classes must be the configured ones (without importing torch, so a wrong
    folder is refused at once). Raises InputNotFound, DataError."""
    path = folder / "config.json"
    if not path.is_file():
        raise InputNotFound(f"{origin}: no config.json in {folder} (expected an smp save_pretrained folder)")
    try:
        arguments = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{origin}: config.json is not valid JSON ({exc})") from None
    if not isinstance(arguments, dict):
        raise DataError(f"{origin}: config.json does not hold an object")
    found = {"arch": arguments.get("_model_class"), "encoder": arguments.get("encoder_name"), "classes": arguments.get("classes")}
    expected = {"arch": settings.arch, "encoder": settings.encoder, "classes": len(settings.classes)}
    words = {"arch": "architecture", "encoder": "encoder", "classes": "classes"}
    problems = [f"{words[key]} {found[key]} where models.semantic.{key} expects {expected[key]}"
                for key in found if str(found[key]).lower() != str(expected[key]).lower()]
    if problems:
        raise DataError(f"{origin}: the model does not fit the configuration: {'; '.join(problems)}")
    return arguments
