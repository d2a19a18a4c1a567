"""How torch's OpenMP threads wait: set in the environment before torch (and with it libgomp) loads.

OpenMP's threads wait for work at the end of each parallel region. libgomp's default (no
OMP_WAIT_POLICY) spins for about 300,000 iterations first; so does MKL's and oneDNN's work, which
runs on the same pool. On a machine where another process keeps a core busy, a spinning thread
takes its time slices from the thread it waits for, and a CPU-bound neighbour then costs many times
its share: `fusion.fuse` at 1920x1080 with 100 instances on 2 threads took 131 ms with one core
busy against 36 ms idle, and 32 ms with `OMP_WAIT_POLICY=PASSIVE`, where a waiting thread sleeps
at once (docs/benchmarks.md, "Sharing the machine"). So the `streamer` command asks for PASSIVE,
unless the environment already says how to wait (OMP_WAIT_POLICY or GOMP_SPINCOUNT, which libgomp
reads in its place: `GOMP_SPINCOUNT=300000` gives back libgomp's own default).

The setting must be in the environment before libgomp is loaded (it reads it once, when torch is
imported); child processes (annotate's workers, Ray's) inherit it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

WAIT_POLICY = "PASSIVE"
# Either of these in the environment is the user's choice of how OpenMP threads wait.
USER_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def wait_policy_update(environ: Mapping[str, str]) -> dict[str, str]:
    """What to add to `environ` so that OpenMP threads sleep while they wait: {"OMP_WAIT_POLICY":
    "PASSIVE"}, or nothing when `environ` already sets OMP_WAIT_POLICY or GOMP_SPINCOUNT (even to
    a value libgomp refuses: that is the user's to see)."""
    if any(key in environ for key in USER_KEYS):
        return {}
    return {"OMP_WAIT_POLICY": WAIT_POLICY}


def apply_wait_policy(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Put wait_policy_update's setting into `environ` (the process's own environment by default);
    returns the OMP_WAIT_POLICY now in force there (None: libgomp's default, or GOMP_SPINCOUNT's).
    Effective only when called before torch is imported."""
    environ.update(wait_policy_update(environ))
    return environ.get("OMP_WAIT_POLICY")
