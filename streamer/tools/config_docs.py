"""`streamer config-docs`: the commented config.yaml, the packaged default (the same file) and the
README's configuration table, generated from the schema in streamer/config.py, where each key's
default, description and examples are written once.

The YAML sets every key to its default, except `source.uri`, which is required and gets its first
example; the `models.semantic` and `models.instance` keys come from the default preset and are
shown commented out, with the preset's values, ready to override. A value's allowed choices are
added to its description when the description does not name them all.
"""
from __future__ import annotations

import argparse
import enum
import logging
import math
import re
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from streamer import presets
from streamer.config import Config, Models
from streamer.errors import EXIT_OK, StreamerError, UsageError

log = logging.getLogger(__name__)

WIDTH = 100  # the YAML's comment lines wrap here
PRESET_SECTIONS = ("models.semantic.", "models.instance.")  # the preset's keys: commented out, with its values
BEGIN = "<!-- config-table:begin: generated from streamer/config.py by `streamer config-docs --write` -->"
END = "<!-- config-table:end -->"
HEADER = """\
# streamer configuration: every key with its default and meaning. Every key is optional unless
# marked required; unknown keys are errors.
# Generated from the schema, streamer/config.py, by `streamer config-docs --write`: change a
# default or a description there, not here.
# Validate with:  streamer check-config -c config.yaml
# Override any key on the command line:  streamer run --set fusion.stuff_area_min=2048
"""


def options(field: FieldInfo) -> list[Any]:
    """The types a field may hold: the members of a union (None left out), else its one type."""
    if typing.get_origin(field.annotation) in (typing.Union, types.UnionType):
        return [option for option in typing.get_args(field.annotation) if option is not type(None)]
    return [field.annotation]


def section_of(field: FieldInfo) -> type[BaseModel] | None:
    """The sub-section a field holds (`Source | None` too), or None for a value."""
    return next((o for o in options(field) if isinstance(o, type) and issubclass(o, BaseModel)), None)


def walked_into(field: FieldInfo, prefix: str) -> type[BaseModel] | None:
    """The sub-section to write key by key: an optional one inside a section (`source.calibration`,
    `null` by default) is written as one value, with its examples."""
    return None if prefix and field.default is None else section_of(field)


def choices(field: FieldInfo) -> tuple[str, ...]:
    """The values a Literal or enum field (optional or not) allows; () for anything else."""
    kinds = options(field)
    if len(kinds) != 1:
        return ()
    if typing.get_origin(kinds[0]) is typing.Literal:
        return tuple(str(value) for value in typing.get_args(kinds[0]))
    if isinstance(kinds[0], type) and issubclass(kinds[0], enum.Enum):
        return tuple(str(member.value) for member in kinds[0])
    return ()


def meaning(field: FieldInfo, examples: list[Any], required: bool = False) -> str:
    """The description (markdown), with the allowed values it does not name and the examples."""
    text = field.description or ""
    allowed = choices(field)
    if allowed and not all(f"`{value}`" in text for value in allowed):
        text += "; one of " + ", ".join(f"`{value}`" for value in allowed)
    if required:
        text += "; required"
    if examples:
        text += "; e.g. " + ", ".join(f"`{flow(example)}`" for example in examples)
    return text


def plain(value: Any) -> Any:
    """A default as YAML writes it: enums by value, tuples as lists, sections as mappings."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def flow(value: Any) -> str:
    """One value in YAML flow style, on one line."""
    text = yaml.safe_dump(plain(value), default_flow_style=True, width=math.inf, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def shown(key: str, field: FieldInfo) -> Any:
    """The value written for a key: the default preset's for its models, the first example of a
    required key, else the default."""
    if key.startswith(PRESET_SECTIONS):
        value: Any = Models.model_validate({}).model_dump(mode="json")
        for part in key.split(".")[1:]:
            value = value[part]
        return value
    if field.is_required():
        return (field.examples or [None])[0]
    return field.get_default(call_default_factory=True)


def examples_of(key: str, field: FieldInfo) -> list[Any]:
    """The examples a description shows: all, or those after the one a required key is written with."""
    examples = list(field.examples or [])
    return examples[1:] if field.is_required() and not key.startswith(PRESET_SECTIONS) else examples


def leaves(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, FieldInfo]]:
    """(dotted key, field) of every value, walking into sections, in the schema's order."""
    found = []
    for name, field in model.model_fields.items():
        section = walked_into(field, prefix)
        found += leaves(section, f"{prefix}{name}.") if section else [(prefix + name, field)]
    return found


# ---------------------------------------------------------------------------------------------
# config.yaml


def comment(text: str, pad: str) -> list[str]:
    """Markdown as YAML comment lines: links and backticks dropped, wrapped."""
    text = re.sub(r"\[([^\]]+)\]\(#[^)]*\)", r"\1", text).replace("`", "")
    return textwrap.wrap(text, WIDTH - len(pad) - 2, initial_indent=f"{pad}# ", subsequent_indent=f"{pad}# ",
                         break_long_words=False, break_on_hyphens=False)


def yaml_lines(model: type[BaseModel], prefix: str = "", depth: int = 0) -> list[str]:
    pad, lines = "  " * depth, []
    for name, field in model.model_fields.items():
        key, section = prefix + name, walked_into(field, prefix)
        if depth == 0:
            lines.append("")
        required = field.is_required() and not section and not key.startswith(PRESET_SECTIONS)
        block = comment(meaning(field, [], required), pad)
        block += [f"{pad}# e.g. {name}: {flow(example)}" for example in ([] if section else examples_of(key, field))]
        if section:
            block += [f"{pad}{name}:"] + yaml_lines(section, key + ".", depth + 1)
        else:
            value = shown(key, field)
            if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
                block += [f"{pad}{name}:"] + [f"{pad}  - {flow(item)}" for item in value]
            else:
                block.append(f"{pad}{name}: {flow(value)}")
        if key + "." in PRESET_SECTIONS:  # the preset sets it: commented out, ready to override
            block = [f"{pad}# {line[len(pad):]}" for line in block]
            if key + "." == PRESET_SECTIONS[0]:
                block.insert(0, f"{pad}# The {presets.DEFAULT} preset's values, to override here or with --set:")
        lines += block
    return lines


def config_yaml() -> str:
    return HEADER + "\n".join(yaml_lines(Config)) + "\n"


# ---------------------------------------------------------------------------------------------
# the README's table


def default_cell(key: str, field: FieldInfo) -> str:
    if field.is_required() and not key.startswith(PRESET_SECTIONS):
        return "required"
    value = shown(key, field)
    if isinstance(value, list) and value and all(isinstance(item, dict) and "name" in item for item in value):
        return ", ".join(item["name"] for item in value)
    return f"`{flow(value)}`"


def readme_table() -> str:
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, field in leaves():
        cells = (f"`{key}`", default_cell(key, field), meaning(field, list(field.examples or [])))
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


def with_table(readme: str) -> str:
    """The README with the text between the markers replaced by the generated table."""
    before, begin, rest = readme.partition(BEGIN)
    _, end, after = rest.partition(END)
    if not begin or not end:
        raise UsageError(f"README.md: no configuration table markers ({BEGIN} ... {END})")
    return f"{before}{BEGIN}\n\n{readme_table()}\n{END}{after}"


# ---------------------------------------------------------------------------------------------
# the files, the command


def generated(root: Path) -> dict[Path, str]:
    """Each generated file under the source checkout `root` -> the text it should hold."""
    text = config_yaml()
    readme = root / "README.md"
    return {root / "config.yaml": text, root / "streamer" / "default_config.yaml": text,
            readme: with_table(readme.read_text(encoding="utf-8"))}


def out_of_date(root: Path) -> list[Path]:
    return [path for path, text in generated(root).items() if not path.is_file() or path.read_text(encoding="utf-8") != text]


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("config-docs", help="config.yaml and the README's configuration table, from the schema")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite config.yaml, streamer/default_config.yaml and the README's table")
    mode.add_argument("--check", action="store_true", help="exit 1 naming the files that differ from what the schema generates")
    parser.add_argument("--root", metavar="DIR", help="the source checkout (default: the one streamer is imported from)")
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    """Without --write or --check: the generated config.yaml on stdout."""
    root = Path(args.root) if args.root else Path(__file__).resolve().parents[2]
    if not args.write and not args.check:
        sys.stdout.write(config_yaml())
        return EXIT_OK
    if not (root / "README.md").is_file() or not (root / "streamer").is_dir():
        raise UsageError(f"config-docs: {root} is not a streamer source checkout (no README.md or streamer/); pass --root DIR")
    stale = out_of_date(root)
    names = ", ".join(str(path.relative_to(root)) for path in stale)
    if args.check and stale:
        raise StreamerError(f"config-docs: out of date with streamer/config.py: {names}; run `streamer config-docs --write`")
    if args.write:
        texts = generated(root)
        for path in stale:
            path.write_text(texts[path], encoding="utf-8")
    log.info("config-docs: %s", f"rewrote {names}" if args.write and stale else "up to date")
    return EXIT_OK
