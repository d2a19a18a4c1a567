"""`streamer bench`: how fast each stage is, and what the threaded pipeline gains.

In one process, on the same frames of the synthetic street:
  (a) models only: both models on frames already in memory, as many at once and on as many
      threads as the pipeline runs them (the limit);
  (b) the sequential loop a tutorial would write: read, models, naive overwrite fusion, overlay,
      H.264 encode, one frame after the other in one thread, at torch's default thread count;
  (c) the threaded pipeline (`streamer run`) from the same source to the same kind of MP4;
plus micro-benchmarks (fusion against a plain per-instance numpy loop of the same rule and the
naive loop; overlay at one thread; tracking + counting per frame at one thread; H.264 decode and
encode alone), big frames with many detections through the models and the fusion with their peak
memory (--detections), the semantic network alone through each inference backend installed
(--semantic-frames, --backends) and, with --memory-frames, RSS over a long pipeline run. Modes
(a)-(c) take turns within every repeat, and so do the backends, so a change in the machine's load
hits all of them alike.

The report says what load it ran under (the CPU time other processes took, per part), and a timing
target missed while the machine was busy is "not measured: machine busy", not missed; --neighbour N
keeps N CPU-bound processes running beside the measurements, to see what a busy machine costs.

Nothing here asserts a timing: the report's `targets` says which goals were met. Without -c the
packaged default configuration (the bundled demo models) is used, not ./config.yaml, so numbers
from different machines compare.

This package: the command line and the whole run here; options.py (what to measure, the
configuration), end_to_end.py (a)-(c), codecs and memory; micro.py (fusion, overlay, tracking + counting);
detections.py (many detections, peak memory); backends.py (the semantic network per backend);
load.py (the load, the verdicts, the neighbours); measure.py (timing, RSS, CPU per thread);
report.py (settings, targets, text). Importing it for the CLI loads
neither torch nor the models.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from streamer.arguments import add_config_arguments, config_overrides, frame_size, positive_int
from streamer.errors import EXIT_OK, CannotCreate
from streamer.outputs import preflight
from streamer.tools.bench.options import BenchOptions, load_bench_config

log = logging.getLogger(__name__)

DEFAULT_FRAMES = 60
DEFAULT_REPEATS = 3
DEFAULT_SEED = 1000
MICRO_SIZES = ((1280, 720), (1920, 1080))
MICRO_INSTANCES = (10, 50, 100)
MICRO_REPEATS = 5
TRACKING_FRAMES = 60
DETECTION_CASES = (((3840, 2160), 100), ((1920, 1080), 300))
SEMANTIC_FRAMES = 10
MAX_NEIGHBOURS = 64


def add_parser(commands: Any) -> None:
    """The `bench` subcommand; torch and the models are only imported when it runs."""

    parser = commands.add_parser(
        "bench",
        help="measure the models alone, a sequential loop and the threaded pipeline; fusion, overlay, tracking and codec micro-benchmarks",
    )
    add_config_arguments(parser)
    for action in parser._actions:  # the bench has its own default configuration
        if action.dest == "config":
            action.help = "configuration file (default: the packaged default with the demo models, not ./config.yaml)"
    parser.add_argument("--device", metavar="DEV", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--size", type=frame_size, metavar="WxH", help="synthetic street frame size (default: the synthetic street's own)")
    parser.add_argument("--frames", type=positive_int, default=DEFAULT_FRAMES, metavar="N",
                        help=f"frames per run (default {DEFAULT_FRAMES})")
    parser.add_argument("--repeats", type=positive_int, default=DEFAULT_REPEATS, metavar="R",
                        help=f"runs of each mode (default {DEFAULT_REPEATS})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"synthetic scene seed (default {DEFAULT_SEED})")
    parser.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.add_argument("--micro-sizes", type=size_list, default=MICRO_SIZES, metavar="WxH,...",
                        help="fusion/overlay/tracking frame sizes (default 1280x720,1920x1080; none: off)")
    parser.add_argument("--instances", type=count_list, default=MICRO_INSTANCES, metavar="N,...",
                        help="fusion/overlay instance counts, tracked objects (default 10,50,100)")
    parser.add_argument("--micro-repeats", type=positive_int, default=MICRO_REPEATS, metavar="R",
                        help=f"repeats of each micro-benchmark (default {MICRO_REPEATS})")
    parser.add_argument("--tracking-frames", type=positive_int, default=TRACKING_FRAMES, metavar="N",
                        help=f"frames of moving objects per tracking + counting run, the first few for warm-up (default {TRACKING_FRAMES})")
    parser.add_argument("--memory-frames", type=memory_frames, default=0, metavar="N",
                        help="also run the pipeline over N frames and compare RSS at frame N/10 and N "
                             "(default 0: off; 5000 takes ~25 min on 2 CPU cores)")
    parser.add_argument("--detections", type=detection_list, default=DETECTION_CASES, metavar="WxH:N,...",
                        help="many-detections cases: frame size and detections forced (default 3840x2160:100,1920x1080:300; none: off)")
    parser.add_argument("--torch-threads", type=positive_int, metavar="N",
                        help="torch threads per frame in the models (runtime.torch_threads) and for the sequential loop "
                             "(default: the cores shared out; torch's choice for the loop)")
    parser.add_argument("--cv2-threads", type=positive_int, metavar="N",
                        help="cv2.setNumThreads for the whole bench (default: OpenCV's choice)")
    parser.add_argument("--neighbour", "--neighbours", dest="neighbours", type=neighbour_count, default=0, metavar="N",
                        help="keep N CPU-bound processes running beside every measurement, to see what a busy machine costs "
                             "(default 0; the report's load says what other processes took either way)")
    parser.add_argument("--semantic-frames", type=zero_or_more, default=SEMANTIC_FRAMES, metavar="N",
                        help=f"frames of the semantic network alone through each backend, in turn (default {SEMANTIC_FRAMES}; 0: off)")
    parser.add_argument("--backends", type=name_list, metavar="NAME,...",
                        help="semantic backends to compare (default: torch and each one installed)")
    parser.set_defaults(handler=command)


def size_list(text: str) -> tuple[tuple[int, int], ...]:
    if text == "none":
        return ()
    return tuple(frame_size(item) for item in text.split(","))


def count_list(text: str) -> tuple[int, ...]:
    items = text.split(",")
    if not all(item.strip().isdigit() and 0 < int(item) < 1000 for item in items):
        raise argparse.ArgumentTypeError(f"expected instance counts between 1 and 999 separated by commas, got {text!r}")
    return tuple(int(item) for item in items)


def detection_list(text: str) -> tuple[tuple[tuple[int, int], int], ...]:
    if text == "none":
        return ()
    cases = []
    for item in text.split(","):
        size, _, count = item.partition(":")
        cases.append((frame_size(size), count_list(count)[0]))
    return tuple(cases)


def neighbour_count(text: str) -> int:
    if not text.isdigit() or int(text) > MAX_NEIGHBOURS:
        raise argparse.ArgumentTypeError(f"expected 0 to {MAX_NEIGHBOURS} neighbour processes, got {text!r}")
    return int(text)


def zero_or_more(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text!r}")
    return int(text)


def name_list(text: str) -> tuple[str, ...]:
    names = tuple(item.strip() for item in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected names separated by commas, got {text!r}")
    return names


def memory_frames(text: str) -> int:
    if not text.isdigit() or 0 < int(text) < 10:
        raise argparse.ArgumentTypeError(f"expected 0 (off) or at least 10 frames, got {text!r}")
    return int(text)


def command(args: argparse.Namespace) -> int:
    from streamer.inputs.synthetic import SCENE_SIZE  # here, not at the top: it imports OpenCV
    from streamer.logs import configure_logging

    options = BenchOptions(
        config=args.config, overrides=tuple(config_overrides(args)), device=args.device, size=args.size or SCENE_SIZE, frames=args.frames,
        repeats=args.repeats, seed=args.seed, micro_sizes=args.micro_sizes, instances=args.instances,
        micro_repeats=args.micro_repeats, tracking_frames=args.tracking_frames, memory_frames=args.memory_frames,
        detection_cases=args.detections,
        torch_threads=args.torch_threads, cv2_threads=args.cv2_threads, neighbours=args.neighbours,
        semantic_frames=args.semantic_frames, backends=args.backends,
    )
    config = load_bench_config(options)  # a bad configuration fails here, before anything slow
    configure_logging(args.log_level or config.runtime.log_level, args.log_format or config.runtime.log_format)
    json_path = Path(args.json) if args.json else None
    if json_path is not None:
        check_writable(json_path, args.overwrite)
    from streamer.tools.bench.report import format_report  # torch and the models from here on
    from streamer.tools.bench.run import run_bench

    report = run_bench(options, config)
    sys.stdout.write(format_report(report) + "\n")
    if json_path is not None:
        from streamer.outputs.export import write_atomic

        write_atomic(json_path, (json.dumps(report, indent=1) + "\n").encode())
        log.info("wrote %s", json_path)
    return EXIT_OK


def check_writable(path: Path, overwrite: bool) -> None:
    """Before anything slow: the report's folder can be written, and an existing report is replaced
    only with --overwrite (CannotCreate)."""
    if path.exists() and not (overwrite and path.is_file()):
        raise CannotCreate(f"--json {path}: already exists; --overwrite replaces it, or choose another name")
    preflight.folder_target(path.parent, "benchmark report")
