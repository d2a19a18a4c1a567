"""Model presets: named, documented pairings of a semantic and an instance model.

Each preset is a YAML file in this folder: a `models:` section written exactly as in config.yaml
(architectures, weights ids, input size, normalisation, the category table, the instance class
map), plus what a user needs to choose one: a title, the licences, the download sizes, the speed.
`models.preset` (or `--preset`) picks one; keys written in the config or given with `--set`
override the preset's, section by section (see `merge`).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

DEFAULT = "demo"
NONE = "none"  # no preset: every models key comes from the config


@dataclass(frozen=True)
class WeightsInfo:
    """What `models list` says about one weights file of a preset."""

    size_mb: float  # download size in MB (10^6 bytes; torchvision lists MiB)
    licence: str
    source: str  # where it is published
    # Hub models: the commit and each file's sha256 (the hub's LFS oid) that fetch and import check,
    # None where not recorded yet (then a copy from a mirror or an import is not verified, and says so).
    # torchvision's checkpoints carry theirs in the file name.
    revision: str | None = None
    sha256: dict[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.revision is not None and not re.fullmatch(r"[0-9a-f]{40}", self.revision):
            raise ValueError(f"revision {self.revision!r}: not a commit id (40 hex digits)")
        for name, digest in self.sha256.items():
            if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"sha256 of {name}: {digest!r} is not a sha256 (64 hex digits)")


@dataclass(frozen=True)
class Preset:
    name: str
    title: str  # one line: what it segments, with which models
    licence: str  # one line: the terms that bind the user (shown by check-config, list, fetch)
    non_commercial: bool  # some weights may only be used for research or evaluation
    speed: str  # measured or published per-frame times
    weights: dict[str, WeightsInfo]  # weights id (hub id or checkpoint file name) -> facts
    models: dict[str, Any]  # the `models:` section, as in config.yaml


def names() -> list[str]:
    """Every preset, the default first."""
    found = sorted(p.name.removesuffix(".yaml") for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))
    return [DEFAULT] + [n for n in found if n != DEFAULT]


@functools.cache
def get(name: str) -> Preset:
    """The preset called `name`. Raises KeyError naming the known presets."""
    if name not in names():
        raise KeyError(f"unknown preset '{name}' (known: {', '.join(names())}, or {NONE})")
    raw = yaml.safe_load((resources.files(__name__) / f"{name}.yaml").read_text(encoding="utf-8"))
    weights = {key: WeightsInfo(**value) for key, value in raw.pop("weights", {}).items()}
    return Preset(name=name, weights=weights, **raw)


def merge(preset_models: dict[str, Any], explicit: dict[str, Any]) -> dict[str, Any]:
    """The preset's `models:` section with the explicit one laid over it: within `semantic` and
    `instance`, every key given explicitly replaces the preset's whole value (so a `classes` list
    or a `class_map` is replaced, never mixed)."""
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in preset_models.items()}
    for key, value in explicit.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
