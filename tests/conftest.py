"""Fixtures shared by the tests; plain helper functions are in helpers.py."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_video, write_fast_config
from published import build as build_published


@pytest.fixture
def fast_config(tmp_path: Path) -> Path:
    """A config file: config.yaml with small random-init models on the CPU."""
    return write_fast_config(tmp_path)


@pytest.fixture(scope="module")
def module_config(tmp_path_factory) -> Path:
    """The same fast configuration, for module-scoped fixtures that run a command once for several tests."""
    return write_fast_config(tmp_path_factory.mktemp("config"))


@pytest.fixture
def small_video(tmp_path: Path) -> Path:
    return make_video(tmp_path / "input.mp4")


@pytest.fixture(scope="session")
def published(tmp_path_factory) -> dict[str, Path]:
    """The presets' weights in their published layouts (random values), built once: tests/published.py."""
    return build_published(tmp_path_factory.mktemp("published"))
