"""The load a bench runs under: what other processes took of this process's CPUs while a part of the
bench ran, whether that leaves a timing target readable, and the CPU-bound neighbours that
`--neighbour N` starts to measure a shared machine on purpose.

"Others" is the CPU time the machine spent busy (user, nice, system, interrupts and, in a VM, time
stolen by the hypervisor) on the CPUs this process may run on, less this process's own CPU time,
over the wall time of the window: 1.0 means another process kept one core busy throughout. Read
from /proc/stat (Linux), else psutil when it is installed; unknown elsewhere.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A timing read while other processes used more than this many cores on average (a quarter of one
# core: more than the machine's own background, less than any real neighbour) is not called missed.
QUIET_OTHERS_CORES = 0.25
PROC_STAT = Path("/proc/stat")
# /proc/stat's cpu fields: user nice system idle iowait irq softirq steal (guest time is in user)
IDLE_FIELDS = (3, 4)
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)
# A CPU-bound process that ends by itself once the bench that started it (its argument) is gone.
NEIGHBOUR_CODE = "import os, sys\nwhile os.getppid() == int(sys.argv[1]):\n    for _ in range(200000):\n        pass\n"


@dataclass(frozen=True)
class Snapshot:
    wall_s: float  # time.monotonic()
    own_cpu_s: float  # this process's user + system CPU seconds, all threads
    busy_cpu_s: float | None  # busy CPU seconds of the CPUs this process may use, since boot; None: unknown
    load_average: float | None  # the 1-minute load average


def usable_cpus() -> set[int] | None:
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def busy_seconds(proc_stat: str, cpus: set[int] | None, ticks_per_s: float) -> float:
    """Busy CPU seconds since boot from the text of /proc/stat: summed over the `cpuN` lines of
    `cpus` (all of them when None), busy = user + nice + system + irq + softirq + steal."""
    total = 0
    for line in proc_stat.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or (cpus is not None and int(name[3:]) not in cpus):
            continue
        values = [int(v) for v in fields]
        total += sum(values[i] for i in BUSY_FIELDS if i < len(values))
    return total / ticks_per_s


def _machine_busy_s(cpus: set[int] | None) -> float | None:
    try:
        return busy_seconds(PROC_STAT.read_text(), cpus, os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError):
        pass
    try:
        import psutil  # type: ignore[import-untyped]  # optional: macOS, Windows
    except ImportError:
        return None
    per_cpu = psutil.cpu_times(percpu=True)
    chosen = [t for i, t in enumerate(per_cpu) if cpus is None or i in cpus]
    return float(sum(sum(t) - t.idle - getattr(t, "iowait", 0.0) for t in chosen))


def snapshot() -> Snapshot:
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        load = None
    return Snapshot(time.monotonic(), time.process_time(), _machine_busy_s(usable_cpus()), load)


def load_between(start: Snapshot, end: Snapshot, cores: int) -> dict[str, Any]:
    """The load over a window, in cores (CPU seconds per wall second): `own` (this process),
    `others` (the rest of the machine on this process's CPUs, never below 0; None when the machine's
    busy time is unknown), with the load average at both ends and the `cores` this process may use."""
    wall = max(end.wall_s - start.wall_s, 1e-9)
    own = (end.own_cpu_s - start.own_cpu_s) / wall
    others = None
    if start.busy_cpu_s is not None and end.busy_cpu_s is not None:
        others = max(0.0, (end.busy_cpu_s - start.busy_cpu_s) / wall - own)
    return {
        "seconds": round(wall, 2), "cores": cores, "own_cores": round(own, 3),
        "others_cores": None if others is None else round(others, 3),
        "load_average": [None if v is None else round(v, 2) for v in (start.load_average, end.load_average)],
    }


class Window:
    """The load while a `with` block runs: `.load` (load_between's dict) once it has ended."""

    def __init__(self, cores: int):
        self.cores = cores
        self.load: dict[str, Any] | None = None

    def __enter__(self) -> Window:
        self._start = snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        self.load = load_between(self._start, snapshot(), self.cores)


def verdict(met: bool | None, others_cores: float | None, quiet_limit: float = QUIET_OTHERS_CORES) -> str:
    """A timing target's verdict: "met"; "missed" only when the machine was quiet enough to tell (other
    processes used at most `quiet_limit` cores during the measurement, or their use is unknown);
    "busy" for a miss on a busier machine (it may be the neighbours' doing); "not measured" when
    the run did not measure it (met None). A target met under load stays met: load only slows."""
    if met is None:
        return "not measured"
    if met:
        return "met"
    if others_cores is not None and others_cores > quiet_limit:
        return "busy"
    return "missed"


class Neighbours:
    """`count` CPU-bound Python processes beside the bench while the block runs (each keeps one core
    busy), ended after it; each also ends by itself if the bench dies first."""

    def __init__(self, count: int):
        self.count = count
        self._processes: list[subprocess.Popen] = []

    def __enter__(self) -> Neighbours:
        for _ in range(self.count):
            self._processes.append(subprocess.Popen([sys.executable, "-c", NEIGHBOUR_CODE, str(os.getpid())],
                                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self._processes:
            process.kill()
        for process in self._processes:
            process.wait()
        self._processes.clear()

    def pids(self) -> list[int]:
        return [p.pid for p in self._processes]
