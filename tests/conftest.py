"""Fixtures shared by the tests; plain helper functions are in helpers.py."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from helpers import FAST_OVERRIDES, ROOT, deep_merge, make_video


@pytest.fixture
def fast_config(tmp_path: Path) -> Path:
    """A config file: config.yaml with small random-init models on the CPU."""
    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    path = tmp_path / "fast.yaml"
    path.write_text(yaml.safe_dump(deep_merge(base, FAST_OVERRIDES)))
    return path


@pytest.fixture
def small_video(tmp_path: Path) -> Path:
    return make_video(tmp_path / "input.mp4")
