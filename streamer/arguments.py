"""Command-line argument helpers shared by the commands (cli.py, the bench): a leaf module, so
the commands need not import each other."""
from __future__ import annotations

import argparse
from typing import NoReturn

from streamer import presets
from streamer.config import LOG_FORMATS, LOG_LEVELS
from streamer.uris import redact_uri


class Parser(argparse.ArgumentParser):
    """argparse, whose errors quote what was typed (`unrecognized arguments: --source rtsp://...`):
    every URL in them has its secrets hidden. Sub-commands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        super().error(redact_uri(message))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", help="configuration file (default ./config.yaml, else the packaged default)")
    parser.add_argument("--preset", choices=presets.names() + [presets.NONE], metavar="NAME",
                        help=f"model pairing: {', '.join(presets.names())} (streamer models list); keys in the file or --set override it")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. --set fusion.stuff_area_min=2048")
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="default: runtime.log_level")
    parser.add_argument("--log-format", choices=LOG_FORMATS, help="default: runtime.log_format (json: one object per line)")


def config_overrides(args: argparse.Namespace) -> list[str]:
    """--preset and the --set items, as `dotted.key=value` overrides."""
    return ([f"models.preset={quote(args.preset)}"] if args.preset else []) + list(args.set)


def quote(text: str) -> str:
    """A YAML scalar that stays a string (so '0' is the camera index '0', not the number 0)."""
    return "'" + text.replace("'", "''") + "'"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def frame_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 16 or int(height) < 16:
        raise argparse.ArgumentTypeError(f"expected WxH of at least 16x16, got {text!r}")
    return int(width), int(height)
