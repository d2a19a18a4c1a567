"""Logs: one line per event on stderr; JSON lines on request; journald priority prefixes under systemd."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import RECORDER, cli_env, run_cli

pytestmark = pytest.mark.system  # every test here starts a process or a server


def test_json_logs_are_one_object_per_line_errors_included(tmp_path):
    result = run_cli("run", *RECORDER, "--max-frames", "3", "--log-format", "json", "--output", str(tmp_path / "o.mp4"))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert {"time", "level", "logger", "message"} <= set(events[0])
    assert any(e["message"].startswith("done: 3 frames read") for e in events)

    missing = run_cli("run", "--source", str(tmp_path / "nope.mp4"), "--log-format", "json")
    assert missing.returncode == 66
    (event,) = [json.loads(line) for line in missing.stderr.splitlines()]
    assert event["level"] == "error" and "no such file" in event["message"]


def test_under_journald_lines_carry_syslog_priorities_and_no_timestamp(tmp_path):
    read_end, write_end = os.pipe()
    stat = os.fstat(write_end)
    env = cli_env(JOURNAL_STREAM=f"{stat.st_dev}:{stat.st_ino}")
    process = subprocess.Popen([sys.executable, "-m", "streamer", "run", "--source", str(tmp_path / "nope.mp4")],
                               stdout=subprocess.DEVNULL, stderr=write_end, env=env)
    os.close(write_end)
    with os.fdopen(read_end) as stderr:
        lines = stderr.read().splitlines()
    assert process.wait(60) == 66
    assert lines == [f"<3>ERROR streamer: {tmp_path / 'nope.mp4'}: no such file; check the path given as source"]
