"""Where the weights a configuration names live, and whether they are there.

Four kinds: the bundled demo weights; files the config names by path; torchvision's published COCO
checkpoints, kept in torch's hub cache (`$TORCH_HOME/hub/checkpoints`, as torchvision's own
downloads); and smp models published on the Hugging Face hub, kept in its cache (`$HF_HUB_CACHE`,
default `~/.cache/huggingface/hub`). Nothing here downloads: `streamer models fetch` fills the caches.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from streamer import config as cfg
from streamer import presets
from streamer.errors import InputNotFound

HUB_FILES = ("config.json", "model.safetensors")  # what smp's save_pretrained writes and a model is built from
COCO_URLS = {  # torchvision's published COCO weights per Mask R-CNN builder; the 8 hex digits start the file's sha256
    "maskrcnn_resnet50_fpn": "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
    "maskrcnn_resnet50_fpn_v2": "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
}
WEIGHTS_SUFFIXES = {".pth", ".pt", ".safetensors"}


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


def torch_checkpoints() -> Path:
    """torch's checkpoint cache: `torch.hub.get_dir()/checkpoints` ($TORCH_HOME/hub/checkpoints)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_repo_folder(repo_id: str) -> Path:
    """Where the Hugging Face cache keeps `repo_id`: HF_HUB_CACHE/models--ORG--NAME."""
    from huggingface_hub.file_download import repo_folder_name

    return hub_cache() / repo_folder_name(repo_id=repo_id, repo_type="model")


def hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder holding every file of HUB_FILES for `repo_id` (its `main`), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(repo_id, name) for name in HUB_FILES]
    if not all(isinstance(path, str) for path in found):
        return None
    folders = {Path(path).parent for path in found}
    return folders.pop() if len(folders) == 1 else None


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
    """Raise InputNotFound (exit 66) for the first cached weights that are not there, naming the
    command that puts them there and the place. (Files named by path are checked where they load.)"""
    for weights in needed(models):
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
