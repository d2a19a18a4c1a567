"""The semantic network alone through torch, ONNX Runtime and OpenVINO, on 1 and 2 threads: the demo
U-Net at 640x352 and a Segformer-b0 of the published layout (random weights) at 1280x640.

    python bench/semantic_backends.py [--repeats 7] [--json out.json]

Each backend runs the same synthetic street frames at the network's input size, one frame at a time,
the backends taking turns within every repeat (a change in the machine's load hits all alike);
the median ms per frame and the ratio to torch are printed, with the load average. The exports are
made (and verified against torch) first where the cache has none, before any clock starts.
`streamer bench --backends` measures the configured network the same way inside the full bench.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from streamer.config import Models, SemanticModel
from streamer.inference import backends, exports
from streamer.inference.models import RANDOM_INIT_SEED, build_semantic


def cases() -> dict[str, SemanticModel]:
    segformer = Models.model_validate({"preset": "cityscapes-fast"}).semantic.model_copy(update={"weights": "none"})
    return {"demo U-Net 640x352": Models.model_validate({"preset": "demo"}).semantic, "Segformer-b0 1280x640": segformer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    installed = [b for b in backends.EXPORTED if _installed(b)]
    results = {}
    for name, settings in cases().items():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            network = build_semantic(settings).eval()
        frames = exports.verification_frames(settings)[exports.NOISE_FRAMES:]
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs = {"torch": network, **{b: exports.ensure(network, settings, b, threads) for b in installed}}
            times: dict[str, list[float]] = {b: [] for b in runs}
            with torch.inference_mode():
                for run in runs.values():
                    run(frames[:1])  # warm-up: first-call allocations
                for repeat in range(args.repeats):
                    frame = frames[repeat % len(frames)][None]
                    for backend, run in runs.items():
                        started = time.perf_counter()
                        run(frame)
                        times[backend].append(1000 * (time.perf_counter() - started))
            median = {b: statistics.median(t) for b, t in times.items()}
            results[f"{name}, {threads} thread{'s' if threads > 1 else ''}"] = {"ms": median, "load_average": os.getloadavg()}
            row = "  ".join(f"{b} {ms:.0f} ms ({median['torch'] / ms:.2f}x)" for b, ms in median.items())
            print(f"{name}, {threads} thread(s): {row}   load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)


def _installed(backend: str) -> bool:
    try:
        backends.require_library(backend)
    except Exception:  # noqa: BLE001 - not installed: not measured
        return False
    return True


if __name__ == "__main__":
    main()
