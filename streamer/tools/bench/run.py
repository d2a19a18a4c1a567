"""The whole bench, one part after the other (see the package's docstring)."""
from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import torch

from streamer.config import Config
from streamer.inference.models import resolve_device
from streamer.inference.worker import available_cores
from streamer.inputs.sources import open_source
from streamer.tools.bench.backends import semantic_backends
from streamer.tools.bench.detections import detection_cases
from streamer.tools.bench.end_to_end import codecs, end_to_end, memory_run
from streamer.tools.bench.load import QUIET_OTHERS_CORES, Neighbours, Window
from streamer.tools.bench.measure import peak_rss_mb, rss_mb
from streamer.tools.bench.micro import fusion_and_overlay, tracking_and_counting
from streamer.tools.bench.options import BenchOptions
from streamer.tools.bench.report import environment, settings, targets


def run_bench(options: BenchOptions, config: Config) -> dict[str, Any]:
    # torch's thread count is one setting for the whole process (each thread applies it to its own
    # OpenMP pool), and the pipeline's threads change it: (b) and the micro-benchmarks restate it.
    torch_threads = options.torch_threads or torch.get_num_threads()
    if options.cv2_threads:
        cv2.setNumThreads(options.cv2_threads)
    started = time.monotonic()
    device = resolve_device(config.runtime.device)
    report: dict[str, Any] = {
        "command": "streamer " + " ".join(sys.argv[1:]) if Path(sys.argv[0]).name in ("streamer", "__main__.py") else None,
        "settings": settings(options, config, device),
        "environment": environment(device),
    }
    reader = open_source(options.source())
    images = []
    while (item := reader.read()) is not None:
        images.append(item[0])
    fps = reader.fps
    reader.close()
    cores = available_cores()
    sections: dict[str, Any] = {}
    report["load"] = {"neighbours": options.neighbours, "quiet_limit_cores": QUIET_OTHERS_CORES, "sections": sections}

    def measured(section: str, call: Callable[[], Any]) -> Any:
        with Window(cores) as window:
            result = call()
        sections[section] = window.load
        return result

    with Neighbours(options.neighbours), Window(cores) as whole:
        with tempfile.TemporaryDirectory(prefix="streamer-bench-") as folder:
            workdir = Path(folder)
            report["end_to_end"] = measured("end_to_end", lambda: end_to_end(options, device, torch_threads, images, workdir))
            report["memory"] = measured("memory", lambda: memory_run(options, workdir)) if options.memory_frames else None
            report["codec"] = measured("codec", lambda: codecs(options, images, fps, workdir))
        torch.set_num_threads(torch_threads)
        report["backends"] = (measured("backends", lambda: semantic_backends(options, config, device, images))
                              if options.semantic_frames else None)
        images.clear()  # the frames are not needed past here
        torch.set_num_threads(torch_threads)
        report["fusion"], report["overlay"] = measured("fusion", lambda: fusion_and_overlay(options, config, device))
        report["tracking"] = measured("tracking", lambda: tracking_and_counting(options, config))
        report["detections"] = measured("detections", lambda: detection_cases(options, config, device))  # last: it holds the most memory
    report["load"]["run"] = whole.load
    report["environment"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    report["environment"]["rss_mb_end"] = rss_mb()
    report["environment"]["rss_mb_peak"] = peak_rss_mb()
    report["targets"] = targets(report)
    report["seconds"] = round(time.monotonic() - started, 1)
    return report
