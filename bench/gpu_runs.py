"""`streamer bench` on a GPU for the demo models and each preset's networks, fp16 and fp32, within a
time budget, into one JSON (see bench/gpu.sh, which installs the missing wheels first, and
docs/benchmarks.md, "GPU, in one command").

Each run is one `python -m streamer bench` process; the runs go in order of importance (the demo
models in fp16 with every micro-benchmark first) and a run that would not end inside the budget is
recorded as skipped, so that one command of a fixed length always leaves a report. A preset whose
weights are not in the local caches runs with random weights of its published layout (`weights:
none`: the same layers, sizes and work). Every report carries the semantic network alone through
each backend installed (torch; ONNX Runtime's CUDA and TensorRT providers where that ONNX Runtime
has them). With --quick the networks see small inputs and the micro-benchmarks are cut down: a
dry run of the wiring on a CPU, not a measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("cityscapes-fast", "ade20k", "cityscapes")
MARGIN_S = 15  # kept back from the budget for writing the report
MIN_RUN_S = 45  # a run is not started with less than this left
GPU_BACKENDS = "torch,onnxruntime-cuda,onnxruntime-tensorrt"  # those not installed get a row saying so
# the fp32 runs and the presets' runs leave out what does not depend on the models or the dtype
LIGHT = ["--micro-sizes", "none", "--detections", "none"]
QUICK = ["--micro-sizes", "320x180", "--instances", "5", "--micro-repeats", "1", "--tracking-frames", "6", "--detections", "none",
         "--semantic-frames", "2", "--set", "models.semantic.input_size=[128,64]", "--set", "models.instance.min_size=96",
         "--set", "models.instance.max_size=160"]


def missing_weights(preset: str) -> list[str]:
    """`--set models.ROLE.weights=none` for each of the preset's networks whose weights are not in the
    local caches (a random network of the same layout runs instead)."""
    from streamer.config import load_config, packaged_config_path
    from streamer.inference import checkpoints

    config = load_config(packaged_config_path(), [f"models.preset={preset}"])
    return [item for weights in checkpoints.needed(config.models) if not weights.present
            for item in ("--set", f"models.{weights.role}.weights=none")]


def plan(quick: bool) -> list[tuple[str, list[str]]]:
    """(name, bench arguments) of every run, most important first."""
    runs = [("demo-fp16", ["--set", "runtime.half=on"]), ("demo-fp32", ["--set", "runtime.half=off", *LIGHT])]
    for half in ("on", "off"):
        for preset in PRESETS:
            runs.append((f"{preset}-fp{16 if half == 'on' else 32}",
                         ["--preset", preset, *missing_weights(preset), "--set", f"runtime.half={half}", *LIGHT]))
    if quick:
        runs = [(name, args + QUICK) for name, args in runs]
    return runs


def gpu_facts() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    result = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                            capture_output=True, text=True, timeout=30)
    return result.stdout.strip() or None


def summary(name: str, report: dict[str, Any]) -> dict[str, Any]:
    """The numbers a table in docs/benchmarks.md wants from one run."""
    e2e = report["end_to_end"]
    row: dict[str, Any] = {
        "run": name, "dtype": report["settings"]["dtype"],
        "semantic": report["settings"]["semantic_model"]["arch"], "instance": report["settings"]["instance_model"]["arch"],
        "weights": [report["settings"]["semantic_model"]["weights"], report["settings"]["instance_model"]["weights"]],
        "models_only_fps": round(e2e["models_only"]["fps"]["median"], 2), "pipeline_fps": round(e2e["pipeline"]["fps"]["median"], 2),
        "sequential_fps": round(e2e["sequential"]["fps"]["median"], 2),
        "pipeline_vs_models_only": round(e2e["ratios"]["pipeline_vs_models_only"], 3),
    }
    semantic = (report.get("backends") or {}).get("semantic", {})
    row["semantic_ms"] = {backend: r.get("ms", r.get("error")) for backend, r in semantic.items()}
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budget", type=float, default=540, help="seconds for all runs (default 540)")
    parser.add_argument("--runs", help="only these runs, by name, comma-separated (default: all, in order)")
    parser.add_argument("--quick", action="store_true", help="small inputs and micro-benchmarks: a dry run of the wiring")
    parser.add_argument("--out", default="bench-gpu.json", help="the report (default bench-gpu.json)")
    args = parser.parse_args()
    started = time.monotonic()
    sys.path.insert(0, str(ROOT))  # this checkout's streamer, as the runs (python -m streamer in ROOT) use
    runs = plan(args.quick)
    if args.runs:
        wanted = args.runs.split(",")
        unknown = sorted(set(wanted) - {name for name, _ in runs})
        if unknown:
            print(f"gpu_runs: unknown run(s) {', '.join(unknown)}; known: {', '.join(name for name, _ in runs)}", file=sys.stderr)
            return 64
        runs = [run for run in runs if run[0] in wanted]
    common = ["--device", args.device, "--size", args.size, "--frames", str(args.frames), "--repeats", str(args.repeats)]
    if args.device.startswith("cuda"):  # the GPU's backends only: the CPU ones would spend the budget on CPU numbers
        common += ["--backends", GPU_BACKENDS]
    report: dict[str, Any] = {"device": args.device, "gpu": gpu_facts(), "size": args.size, "budget_s": args.budget,
                              "quick": args.quick, "runs": [], "summary": []}
    with tempfile.TemporaryDirectory(prefix="streamer-gpu-bench-") as folder:
        for name, extra in runs:
            left = args.budget - MARGIN_S - (time.monotonic() - started)
            command = [sys.executable, "-m", "streamer", "bench", *common, *extra, "--json", str(Path(folder) / f"{name}.json")]
            entry: dict[str, Any] = {"name": name, "command": " ".join(["streamer", *command[3:-2]])}
            if left < MIN_RUN_S:
                entry["skipped"] = f"time budget: {max(left, 0):.0f} s left"
                report["runs"].append(entry)
                print(f"gpu_runs: {name}: skipped ({entry['skipped']})", flush=True)
                continue
            print(f"gpu_runs: {name}: {entry['command']} (up to {left:.0f} s)", flush=True)
            run_started = time.monotonic()
            try:
                result = subprocess.run(command, cwd=ROOT, timeout=left, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                entry["exit_code"] = result.returncode
                if result.returncode != 0:
                    entry["error"] = result.stdout[-3000:]
                    print(result.stdout[-3000:], flush=True)
            except subprocess.TimeoutExpired:
                entry["exit_code"], entry["error"] = None, f"stopped at the time budget ({left:.0f} s)"
            entry["seconds"] = round(time.monotonic() - run_started, 1)
            path = Path(folder) / f"{name}.json"
            if entry.get("exit_code") == 0 and path.exists():
                entry["report"] = json.loads(path.read_text())
                report["summary"].append(summary(name, entry["report"]))
                print(f"gpu_runs: {name}: {json.dumps(report['summary'][-1])}", flush=True)
            report["runs"].append(entry)
            Path(args.out).write_text(json.dumps(report, indent=1) + "\n")  # after every run: a cut-off command keeps the rest
    report["seconds"] = round(time.monotonic() - started, 1)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"gpu_runs: wrote {args.out} ({len(report['summary'])} of {len(runs)} runs measured, {report['seconds']:.0f} s)")
    return 0 if report["summary"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
