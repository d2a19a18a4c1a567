"""Errors before heavy work: arguments, configuration, input paths, output paths and weight files are
checked before torch is imported, so a mistake answers at once instead of after the seconds torch
takes to load. Asserted on what a fresh process has imported when it exits, not on a clock (the
times are in README.md, measured by hand)."""
from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import cli_env

pytestmark = pytest.mark.system  # every test here starts a process or a server

PROBE = """
import sys
from streamer.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # argparse
    code = exc.code
print("exit", code, "torch imported" if "torch" in sys.modules else "torch not imported")
"""


def probe(*args: str, cwd) -> str:
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120, env=cli_env(), cwd=cwd)
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout.strip().splitlines()[-1] + "\n" + result.stderr


@pytest.mark.parametrize("case, code", [
    ("missing source", 66),
    ("unknown flag", 2),
    ("invalid config", 78),
    ("check-config on an invalid file", 78),
    ("existing output", 73),
    ("unwritable output", 73),
    ("missing weights", 66),
])
def test_an_error_answers_before_torch_is_imported(case, code, small_video, tmp_path):
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("runtime:\n  max_frames: -4\n")
    existing = tmp_path / "existing.mp4"
    existing.write_bytes(b"a video the user keeps")
    args = {
        "missing source": ["run", "--source", "missing.mp4"],
        "unknown flag": ["run", "--bogus"],
        "invalid config": ["run", "-c", str(bad_config), "--source", str(small_video)],
        "check-config on an invalid file": ["check-config", "-c", str(bad_config)],
        "existing output": ["run", "--source", str(small_video), "--output", str(existing)],
        "unwritable output": ["run", "--source", str(small_video), "--output", "/proc/no/out.mp4"],
        "missing weights": ["run", "--source", str(small_video), "--set", f"models.semantic.weights={tmp_path / 'gone.safetensors'}"],
    }[case]
    answer = probe(*args, cwd=tmp_path)
    assert answer.startswith(f"exit {code} torch not imported\n"), answer
