"""Command line: `streamer run`, `streamer check-config`, `streamer config-docs` and the tools' commands.

Every expected failure ends as one log line and a documented exit code (see errors.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

from streamer import __version__, presets
from streamer.arguments import Parser, add_config_arguments, config_overrides, frame_size, positive_int, quote
from streamer.config import Config, Runtime, default_config_path, load_config, to_yaml
from streamer.errors import EXIT_FAILURE, EXIT_OK, CannotCreate, ConfigError, StreamerError, UsageError
from streamer.logs import configure_logging, one_line
from streamer.openmp import apply_wait_policy
from streamer.uris import redact_uri

log = logging.getLogger("streamer")

EXIT_INTERRUPTED = 130  # 128 + SIGINT: a command stopped by Ctrl-C before its end, as a shell reports it


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="streamer", description="Live panoptic segmentation of video streams.")
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="process a source: overlay video, live window, annotations")
    add_config_arguments(run)
    run.add_argument("--source", action="append", metavar="URI",
                     help="camera index, /dev/videoN, file, image folder or glob, rtsp(s)://, http(s)://, synthetic:street?... "
                          "(repeat for several sources: cam0, cam1, ...)")
    run.add_argument("--output", metavar="PATH", help="write the overlaid video to this MP4 (H.264)")
    run.add_argument("--export-dir", metavar="DIR", help="write COCO panoptic annotations (PNG + JSON) to this folder")
    run.add_argument("--display", action=argparse.BooleanOptionalAction, default=None, help="show a live window (q or Esc stops)")
    run.add_argument("--device", metavar="DEV", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    run.add_argument("--overwrite", action="store_true", default=None, help="replace an existing --output video or --export-dir export")
    run.set_defaults(handler=cmd_run)

    synth = commands.add_parser("synth", help="render a synthetic street video with panoptic ground truth")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--frames", type=positive_int, default=150)
    synth.add_argument("--size", type=frame_size, metavar="WxH", help="frame size (default: the synthetic street's own)")
    synth.add_argument("--fps", type=float, help="frame rate (default: the synthetic street's own)")
    synth.add_argument("--out", required=True, metavar="DIR", help="gets video.mp4, panoptic/*.png and panoptic.json")
    synth.add_argument("--overwrite", action="store_true", help="replace a scene already in --out")
    synth.set_defaults(handler=cmd_synth)

    evaluate = commands.add_parser("eval", help="panoptic quality (PQ) of the models on synthetic scenes with ground truth")
    add_config_arguments(evaluate)
    evaluate.add_argument("--source", required=True, metavar="URI",
                          help="synthetic:street?seed=S&frames=N (use seeds >= 1000: never trained on)")
    evaluate.add_argument("--device", metavar="DEV", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    evaluate.add_argument("--export-dir", metavar="DIR", help="also write the fused predictions in COCO panoptic format")
    evaluate.add_argument("--overwrite", action="store_true", default=None, help="replace an export already in --export-dir")
    evaluate.set_defaults(handler=cmd_eval)

    # Listed for --help; main() hands its arguments to streamer.tools.train_demo untouched.
    commands.add_parser("train-demo", help="train the bundled demo models from scratch (see streamer/inference/weights/MODEL_CARD.md)")

    rebuild = commands.add_parser("export-json", help="rebuild panoptic.json of an export folder (after a crash)")
    rebuild.add_argument("folder", metavar="DIR")
    rebuild.set_defaults(handler=cmd_export_json)

    from streamer.tools import annotate, bench, calibrate, config_docs, models  # own flags; torch only imported when they run

    for tool in (annotate, bench, models, calibrate):
        tool.add_parser(commands)

    check = commands.add_parser("check-config", help="validate a configuration and print it resolved")
    add_config_arguments(check)
    check.set_defaults(handler=cmd_check_config)
    config_docs.add_parser(commands)
    return parser


def run_overrides(args: argparse.Namespace) -> list[str]:
    """CLI flags as `--set` items, so they are validated exactly like the file."""
    overrides = []
    if args.source and len(args.source) == 1:
        overrides.append(f"source.uri={quote(args.source[0])}")
    elif args.source:  # several: cam0, cam1, ... sharing the file's `source:` options
        listed = ", ".join(f"{{uri: {quote(uri)}, id: cam{i}}}" for i, uri in enumerate(args.source))
        overrides.append(f"sources=[{listed}]")
    if args.output is not None:
        overrides.append(f"output.video={quote(args.output)}")
    if args.export_dir is not None:
        overrides.append(f"output.export_dir={quote(args.export_dir)}")
    if args.display is not None:
        overrides.append(f"output.display={str(args.display).lower()}")
    if args.device is not None:
        overrides.append(f"runtime.device={quote(args.device)}")
    if args.max_frames is not None:
        overrides.append(f"runtime.max_frames={args.max_frames}")
    return overrides + overwrite_override(args) + config_overrides(args)


def overwrite_override(args: argparse.Namespace) -> list[str]:
    return ["output.overwrite=true"] if args.overwrite else []


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config, run_overrides(args))  # before importing torch: bad config fails fast
    configure_logging(args.log_level or config.runtime.log_level, args.log_format or config.runtime.log_format)
    from streamer.service import build
    from streamer.service.pipeline import Pipeline

    return Pipeline(config, build.outputs).run().exit_code


def cmd_synth(args: argparse.Namespace) -> int:
    """Frames and ground truth of one synthetic scene: video.mp4 + COCO panoptic export."""
    from streamer.frames import Frame, Panoptic
    from streamer.inputs.synthetic import CATEGORIES, SCENE_FPS, SCENE_SIZE, StreetScene
    from streamer.outputs.export import PanopticExport
    from streamer.outputs.recording import VideoOutput

    out = Path(args.out)
    if (out / "video.mp4").exists() and not args.overwrite:
        raise CannotCreate(f"{out}: already holds a synthetic scene; --overwrite replaces it, or choose another --out")
    fps = args.fps if args.fps is not None else SCENE_FPS
    scene = StreetScene(args.seed, args.size or SCENE_SIZE, fps)
    export = PanopticExport(out, CATEGORIES, images=False, overwrite=args.overwrite)
    video = VideoOutput(out / "video.mp4", fps)
    try:
        for index in range(args.frames):
            rendered = scene.render(index)
            frame = Frame("synthetic", index, rendered.image, index * 1000.0 / fps, time.time(), time.monotonic())
            truth = Panoptic(frame, rendered.panoptic, rendered.segments)
            video.write(truth, rendered.image)
            export.write(truth, rendered.image)
    finally:
        video.close()
        export.close()
    log.info("wrote %d frames of synthetic:street?seed=%d to %s", args.frames, args.seed, out)
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    overrides = [f"source.uri={quote(args.source)}"] + ([f"runtime.device={quote(args.device)}"] if args.device else [])
    config = load_config(args.config, overrides + overwrite_override(args) + config_overrides(args))
    configure_logging(args.log_level or config.runtime.log_level, args.log_format or config.runtime.log_format)
    from streamer.tools.evaluate import evaluate_synthetic

    report = evaluate_synthetic(config, args.source, args.export_dir)
    sys.stdout.write(json.dumps(report.to_dict(), indent=1) + "\n" if args.json else report.text() + "\n")
    return EXIT_OK


def cmd_export_json(args: argparse.Namespace) -> int:
    from streamer.outputs.export import build_coco_json

    count = build_coco_json(args.folder)
    log.info("%s: panoptic.json rebuilt with %d frames", args.folder, count)
    return EXIT_OK


def preset_note(config: Config) -> str:
    """YAML comment lines naming the preset and its licence, above check-config's output."""
    if config.models.preset == presets.NONE:
        return "# models: no preset, every key from the configuration\n"
    preset = presets.get(config.models.preset)
    classes = config.models.semantic.classes
    return (f"# preset {preset.name}: {preset.title}\n# {len(classes)} classes: {', '.join(c.name for c in classes)}\n"
            f"# licence: {preset.licence}\n")


def check_sources(config: Config, args: argparse.Namespace) -> None:
    """Every source's URI read as `run` reads it (inputs.spec.parse_source): one that `run` would refuse
    (an unknown scheme, a URL whose port cannot be read) is a bad configuration here, exit 78, named
    by its file or "command line" and key; the message never quotes the URL's secrets."""
    from streamer.inputs.spec import parse_source

    keys = ["source.uri"] if config.source and not config.sources else [f"sources.{i}.uri" for i in range(len(config.sources))]
    overridden = [item.partition("=")[0].strip() for item in config_overrides(args)]
    for key, source in zip(keys, config.all_sources()):
        try:
            parse_source(source.uri, source.shown)
        except UsageError as exc:
            from_command_line = any(key == k or key.startswith(k + ".") for k in overridden)
            origin = "command line" if from_command_line else args.config or default_config_path()
            raise ConfigError(f"{origin}: {key}: {exc}") from None


def cmd_check_config(args: argparse.Namespace) -> int:
    config: Config = load_config(args.config, config_overrides(args))
    check_sources(config, args)
    sys.stdout.write(preset_note(config) + to_yaml(config))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    apply_wait_policy()  # before anything imports torch: OpenMP threads that sleep while they wait (see openmp.py)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train-demo"]:
        from streamer.tools.train_demo import main as train_demo

        configure_logging(Runtime().log_level, Runtime().log_format)
        return train_demo(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    defaults = Runtime()  # until a command reads its configuration: the schema's runtime.log_level and log_format
    configure_logging(getattr(args, "log_level", None) or defaults.log_level, getattr(args, "log_format", None) or defaults.log_format)
    try:
        return args.handler(args)
    except StreamerError as exc:
        log.error("%s", one_line(redact_uri(str(exc))))  # one line, whatever a name in it holds
        return exc.exit_code
    except KeyboardInterrupt:
        log.warning("interrupted (Ctrl-C)")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a bug, still reported as one line (traceback at debug level)
        log.error("internal error: %s: %s (run with --log-level debug for the traceback)", type(exc).__name__,
                  one_line(redact_uri(str(exc))))
        log.debug("traceback", exc_info=exc)
        return EXIT_FAILURE


def entry() -> NoReturn:
    """The console command: main(), then exit. A thread still alive at that point is a camera read
    left behind inside native code (see capture.py); the interpreter's shutdown would stop it from
    under its C++ frames, which can abort the process ("FATAL: exception not rethrown") after a
    clean run. So with such a thread, flush the logs and leave at once."""
    code = main()
    if any(thread.is_alive() for thread in threading.enumerate() if thread is not threading.main_thread()):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
