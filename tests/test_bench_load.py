"""The bench's load: what other processes took of the CPUs (read from /proc/stat's text), the verdict
that refuses to call a target missed on a busy machine, and the CPU-bound neighbours of --neighbour."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from streamer.tools.bench.load import Neighbours, Snapshot, busy_seconds, load_between, verdict
from streamer.tools.bench.report import targets

PROC_STAT = """cpu  1000 10 300 5000 40 0 20 30 0 0
cpu0 400 5 100 2500 20 0 10 10 0 0
cpu1 600 5 200 2500 20 0 10 20 0 0
intr 12345 0 0
ctxt 99
"""


def test_busy_seconds_sums_the_busy_fields_of_the_usable_cpus():
    # user + nice + system + irq + softirq + steal; idle and iowait left out; ticks -> seconds
    assert busy_seconds(PROC_STAT, None, 100) == pytest.approx((400 + 5 + 100 + 10 + 10 + 600 + 5 + 200 + 10 + 20) / 100)
    assert busy_seconds(PROC_STAT, {1}, 100) == pytest.approx((600 + 5 + 200 + 10 + 20) / 100)
    assert busy_seconds(PROC_STAT, {5}, 100) == 0.0


def test_others_are_the_machines_busy_time_less_our_own():
    start = Snapshot(wall_s=10.0, own_cpu_s=3.0, busy_cpu_s=100.0, load_average=0.5)
    # 4 s: the CPUs were busy 7 s, 3 of them ours -> others kept one core busy
    load = load_between(start, Snapshot(14.0, 6.0, 107.0, 1.7), cores=2)
    assert load == {"seconds": 4.0, "cores": 2, "own_cores": 0.75, "others_cores": 1.0, "load_average": [0.5, 1.7]}
    # our own time counted a little more than the machine's (different clocks): never below 0
    assert load_between(start, Snapshot(14.0, 6.0, 102.0, None), 2)["others_cores"] == 0.0
    assert load_between(start, Snapshot(14.0, 6.0, None, None), 2)["others_cores"] is None


@pytest.mark.parametrize("met,others,expected", [
    (True, 0.0, "met"), (True, 1.5, "met"),  # load only slows: a target met under load is met
    (False, 0.1, "missed"), (False, 0.25, "missed"), (False, None, "missed"),  # quiet, or unknown: a miss is a miss
    (False, 0.26, "busy"), (False, 1.0, "busy"),
    (None, 1.0, "not measured"), (None, 0.0, "not measured"),
])
def test_a_miss_on_a_busy_machine_is_not_called_missed(met, others, expected):
    assert verdict(met, others) == expected


def report(fusion_speedup: float, others: float | None) -> dict:
    row = {"size": [1920, 1080], "instances": 50, "speedup_vs_reference": fusion_speedup, "identical": True}
    return {"end_to_end": {"ratios": {"pipeline_vs_models_only": 0.95, "pipeline_vs_sequential": 0.8}}, "fusion": [row],
            "overlay": [], "tracking": [], "memory": None,
            "load": {"quiet_limit_cores": 0.25, "sections": {"end_to_end": {"others_cores": 0.05}, "fusion": {"others_cores": others}}}}


def by_name(data: dict) -> dict:
    return {t["name"].split(" ")[0] + (" " + t["name"].split(" ")[2] if t["name"].startswith("pipeline") else ""): t
            for t in targets(data)}


def test_targets_read_the_load_of_their_own_part_of_the_run():
    quiet = by_name(report(0.31, 0.1))
    assert quiet["fusion"]["verdict"] == "missed" and quiet["fusion"]["met"] is False and quiet["fusion"]["others_cores"] == 0.1
    busy = by_name(report(0.31, 1.2))
    assert busy["fusion"]["verdict"] == "busy" and busy["fusion"]["met"] is None and busy["fusion"]["compared"] is False
    assert busy["fusion"]["value"] == 0.31
    # the end-to-end part was quiet: its miss stands, its pass too
    assert busy["pipeline 1.0"]["verdict"] == "missed" and busy["pipeline 0.90"]["verdict"] == "met"
    assert busy["every"]["verdict"] == "met" and "others_cores" not in busy["every"]  # identity does not depend on load
    assert by_name(report(20.0, 1.2))["fusion"]["verdict"] == "met"


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.system
def test_neighbours_burn_cpu_while_the_block_runs_and_end_with_it():
    with Neighbours(1) as neighbours:
        (pid,) = neighbours.pids()
        deadline = time.monotonic() + 20
        while cpu_seconds(pid) < 0.2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cpu_seconds(pid) >= 0.2, "the neighbour keeps a core busy"
    assert wait_gone(pid, 5)


@pytest.mark.system
def test_a_neighbour_ends_by_itself_when_the_bench_dies():
    program = ("import os, sys\nfrom streamer.tools.bench.load import Neighbours\n"
               "n = Neighbours(1).__enter__()\nprint(n.pids()[0], flush=True)\nos._exit(0)\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert wait_gone(int(result.stdout.split()[0]))
