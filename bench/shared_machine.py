"""What a CPU-bound neighbour costs `streamer bench`, with OpenMP threads that sleep while they wait
(OMP_WAIT_POLICY=PASSIVE, what the `streamer` command sets) and with libgomp's own default (they
spin first: GOMP_SPINCOUNT=300000). Four benches, in turn, `--rounds` times: {passive, spinning} x
{no neighbour, --neighbour 1}; then one table of medians (docs/benchmarks.md, "Sharing the machine").

    python bench/shared_machine.py [--rounds 1] [--out shared-machine.json] [-- extra bench arguments]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ["--frames", "8", "--repeats", "1", "--micro-sizes", "1920x1080", "--instances", "50,100", "--micro-repeats", "7",
         "--tracking-frames", "20", "--detections", "none", "--semantic-frames", "6"]
POLICIES = {"passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "spinning": {"GOMP_SPINCOUNT": "300000"}}


def numbers(report: dict[str, Any]) -> dict[str, float | None]:
    fusion = {row["instances"]: row["fuse_ms"]["median"] for row in report["fusion"]}
    semantic = (report.get("backends") or {}).get("semantic", {})
    e2e = report["end_to_end"]
    return {
        "fuse 1080p x 50, ms": fusion.get(50), "fuse 1080p x 100, ms": fusion.get(100),
        **{f"semantic {name}, ms": row.get("ms") for name, row in semantic.items()},
        "models only, fps": e2e["models_only"]["fps"]["median"], "pipeline, fps": e2e["pipeline"]["fps"]["median"],
        "sequential loop, fps": e2e["sequential"]["fps"]["median"],
        "others' cores": report["load"]["run"]["others_cores"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", default="shared-machine.json")
    parser.add_argument("extra", nargs="*", help="more `streamer bench` arguments (after --)")
    args = parser.parse_args()
    python = os.environ.get("PYTHON", sys.executable)
    results: dict[str, list[dict[str, float | None]]] = {}
    with tempfile.TemporaryDirectory(prefix="streamer-shared-") as folder:
        for round_ in range(args.rounds):
            for policy, env in POLICIES.items():
                for neighbours in (0, 1):
                    name = f"{policy}, {neighbours} neighbour"
                    path = Path(folder) / f"{policy}-{neighbours}-{round_}.json"
                    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
                    command = [python, "-m", "streamer", "bench", *BENCH, *args.extra, "--neighbour", str(neighbours), "--json", str(path)]
                    print(f"shared_machine: round {round_ + 1}: {name}", flush=True)
                    result = subprocess.run(command, cwd=ROOT, env={**environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                            text=True)
                    if result.returncode != 0:
                        print(result.stderr[-2000:], file=sys.stderr)
                        return result.returncode
                    results.setdefault(name, []).append(numbers(json.loads(path.read_text())))
    table: dict[str, dict[str, float | None]] = {}
    for name, rounds in results.items():
        table[name] = {key: (statistics.median(v for v in values if v is not None) if any(v is not None for v in values) else None)
                       for key in rounds[0] for values in [[r.get(key) for r in rounds]]}
    Path(args.out).write_text(json.dumps({"bench": BENCH + args.extra, "rounds": args.rounds, "runs": results, "medians": table},
                                         indent=1) + "\n")
    keys = list(next(iter(table.values())))
    print("| | " + " | ".join(table) + " |\n| --- |" + " --- |" * len(table))
    for key in keys:
        cells = ["-" if row[key] is None else f"{row[key]:.2f}" for row in table.values()]
        print(f"| {key} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
