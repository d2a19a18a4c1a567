"""Progress: on a terminal a bar whose total is what the run will take (--max-frames caps a file's
count), the log lines above it; on a terminal without a size, periodic status lines; the bar's rate
measured from the first frame done. The CLI runs in a real pseudo-terminal."""
from __future__ import annotations

import re

import pytest
from helpers import RECORDER, cli_in_pty, screen_lines

from streamer.frames import Counts, Line, Zone
from streamer.service.status import RecentRate, counts_text

SOURCE = "synthetic:street?seed=1&frames=60&size=160x96"  # 60 frames, more than the runs take
BAR = re.compile(r"\d+%\|.*\| *\d+/\d+ \[")
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def run_in_pty(tmp_path, size: tuple[int, int], *args: str, timeout: float = 120) -> str:
    """`streamer run` (the demo models, small frames) in a pty of `size` (rows, columns); what it wrote there."""
    return cli_in_pty(tmp_path, size, "run", "--source", SOURCE, *RECORDER[2:], "--output", str(tmp_path / "o.mp4"), *args,
                      timeout=timeout)


@pytest.mark.system
def test_bar_counts_to_max_frames_with_the_log_lines_above_it(tmp_path):
    output = run_in_pty(tmp_path, (24, 100), "--max-frames", "12")
    lines = screen_lines(output)
    mixed = [line for line in lines if BAR.search(line) and LOG_LINE.search(line)]
    assert not mixed, f"log text on a line of the bar:\n{mixed}\n{output!r}"
    bars = [line for line in lines if BAR.search(line)]
    assert bars, output
    assert all("/12 [" in bar for bar in bars), bars  # the total is --max-frames from the start, not the file's 60
    assert bars[-1].startswith("100%") and "12/12 [" in bars[-1], bars[-1]
    assert re.search(r"\d+\.\d+frame/s\]$", bars[-1]), bars[-1]  # a rate was measured
    # Every log line is whole, on a line of its own, and the bar is drawn again below the last one.
    logs = [line for line in lines if LOG_LINE.search(line)]
    assert all(LOG_LINE.match(line) for line in logs), logs
    assert any("ready: models loaded" in line for line in logs) and "done: 12 frames read" in logs[-1], logs
    for part in output.split("\r"):  # each redraw of the bar alone (no log text glued to it)
        if BAR.search(part):
            assert not LOG_LINE.search(part), repr(part)


@pytest.mark.system
def test_a_terminal_without_a_size_gets_status_lines(tmp_path):
    output = run_in_pty(tmp_path, (0, 0), "--max-frames", "12", "--set", "runtime.status_interval_s=0.1")
    lines = screen_lines(output)
    assert not [line for line in lines if BAR.search(line) or "frame/s" in line], output
    status = [line for line in lines if re.match(LOG_LINE.pattern + r"streamer\.service\.status: status: [\d.]+ fps, \d+ processed", line)]
    assert len(status) >= 2, output
    assert any("done: 12 frames read" in line for line in lines), output


def test_rate_leaves_out_the_warm_up_and_follows_the_recent_frames():
    rate = RecentRate(window_s=10)
    rate.add(0.0, 0)
    assert rate.rate(0.0) == 0  # unknown: tqdm shows "?"
    rate.add(5.0, 1)  # the first frame took 5 s: the models warming up
    assert rate.rate(5.0) == 0
    for k in range(1, 21):  # then 10 frames a second
        rate.add(5.0 + k / 10, 1 + k)
    assert abs(rate.rate(7.0) - 10) < 0.01  # tqdm's average since the start would say 3
    for k in range(1, 201):  # slower: 2 frames a second; after the window only those count
        rate.add(7.0 + k / 2, 21 + k)
    assert abs(rate.rate(107.0) - 2) < 0.01
    rate.add(127.0, 221)  # nothing done for 20 s: the rate falls
    assert rate.rate(127.0) < 0.1


def test_the_status_line_reads_each_sources_counts():
    lines = (Line("north", (0, 10), (100, 10)), Line("south", (0, 90), (100, 90)))
    counts = Counts({"person": 4, "car": 12}, {"car": 3}, {("north", "car", "in"): 2, ("north", "person", "in"): 1,
                                                          ("north", "car", "out"): 1}, {("crosswalk", "person"): 4},
                    lines, (Zone("crosswalk", ((0, 0), (9, 0), (9, 9))),))
    assert counts_text(counts) == ": car 12 (3 now), person 4 (0 now); north in 3 out 1; south in 0 out 0; crosswalk 4"
    assert counts_text(Counts({}, {}, {}, {})) == ": no objects yet"
    assert counts_text(None) == ""
