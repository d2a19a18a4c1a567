"""Configuration: the shipped files, `check-config`, `--set` typing, and every kind of invalid
configuration through the real CLI (exit 78, or 66 for a missing file; one ERROR line naming the
file and the key; no traceback).
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, cli_env, error_lines, run_cli, the_error

from streamer import presets

EXIT_NOINPUT, EXIT_CONFIG = 66, 78
PACKAGED = ROOT / "streamer" / "default_config.yaml"
MINIMAL = {
    "source": {"uri": "clip.mp4"},
    "models": {"preset": "none", "semantic": {"classes": [{"name": "road", "color": [1, 2, 3]}]}},
}


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def check_config(*args: str, cwd: Path | None = None):
    return run_cli("check-config", *args, cwd=cwd)


def resolved(result) -> dict:
    assert result.returncode == 0, result.stderr
    assert not error_lines(result.stderr), result.stderr
    return yaml.safe_load(result.stdout)


# ---------------------------------------------------------------------------------------------
# The shipped configuration


def test_config_yaml_and_packaged_default_are_identical():
    assert (ROOT / "config.yaml").read_bytes() == PACKAGED.read_bytes()


@pytest.mark.system
@pytest.mark.parametrize("path", [ROOT / "config.yaml", PACKAGED], ids=["config.yaml", "default_config.yaml"])
def test_shipped_config_validates(path):
    from streamer.config import load_config

    config = load_config(path)
    assert [c.name for c in config.models.semantic.classes] == ["road", "sidewalk", "building", "sky", "car", "person"]
    printed = resolved(check_config("-c", str(path)))
    assert yaml.safe_load(path.read_text())["models"] == {"preset": "demo"}, "the models come from the preset, overridable"
    assert printed["models"]["semantic"]["input_size"] == presets.get("demo").models["semantic"]["input_size"]
    assert printed["models"]["semantic"]["weights"] == printed["models"]["instance"]["weights"] == "demo"


def schema_keys(model=None, prefix: str = "") -> dict:
    """Dotted key -> pydantic field for every leaf of the schema (a sub-section is walked into; a
    list or mapping value such as `sources` or `class_map` is one key)."""
    import types
    import typing

    from pydantic import BaseModel

    from streamer.config import Config

    keys = {}
    for name, field in (model or Config).model_fields.items():
        annotation = field.annotation
        options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
        section = next((o for o in options if isinstance(o, type) and issubclass(o, BaseModel)), None)
        if prefix and field.default is None:  # an optional section inside a section (source.calibration) is one value
            section = None
        keys.update(schema_keys(section, f"{prefix}{name}.") if section else {prefix + name: field})
    return keys


def yaml_keys(raw: dict, sections: set[str], prefix: str = "") -> set[str]:
    """Dotted keys of a YAML mapping, walking into the schema's sections only."""
    keys = set()
    for name, value in raw.items():
        key = prefix + name
        keys |= yaml_keys(value, sections, key + ".") if key in sections and isinstance(value, dict) else {key}
    return keys


def readme_configuration_keys() -> list[str]:
    """The first column of the README's configuration table."""
    text = (ROOT / "README.md").read_text().split("## Configuration", 1)[1]
    table = text.split("| key | default | meaning |", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", table, flags=re.M)


# Keys where config.yaml sets the demo models' values rather than the schema's defaults.
DEMO_VALUES = {"source.uri", "models.semantic.weights", "models.semantic.input_size", "models.semantic.classes",
               "models.instance.weights", "models.instance.min_size", "models.instance.max_size", "models.instance.class_map"}


def test_every_schema_key_is_in_config_yaml_and_the_readme_table_and_nothing_else_is():
    """config.yaml sets every key but the models' own, which the preset sets: those it shows as
    comments, ready to override."""
    schema = schema_keys()
    sections = {key.rsplit(".", i)[0] for key in schema for i in range(1, key.count(".") + 1)}
    text = (ROOT / "config.yaml").read_text()
    preset_keys = {key for key in schema if key.startswith(("models.semantic.", "models.instance."))}
    commented = {key for key in preset_keys if re.search(rf"^ *# +{key.rsplit('.', 1)[1]}:", text, flags=re.M)}
    in_yaml = yaml_keys(yaml.safe_load(text), sections) | commented
    assert set(schema) - in_yaml == set(), "schema keys missing from config.yaml"
    assert in_yaml - set(schema) == set(), "config.yaml keys the schema lacks"
    in_readme = readme_configuration_keys()
    assert len(in_readme) == len(set(in_readme)), "a key listed twice in the README"
    assert set(schema) - set(in_readme) == set(), "schema keys missing from the README's table"
    assert set(in_readme) - set(schema) == set(), "README keys the schema lacks"


def test_config_yaml_writes_the_schema_defaults_except_the_demo_models():
    """Defaults are written once, in streamer/config.py: config.yaml shows them and may not drift."""
    from streamer.config import load_config

    config = load_config(ROOT / "config.yaml")
    for key, field in schema_keys().items():
        if key in DEMO_VALUES:
            continue
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        assert value == field.get_default(call_default_factory=True), key


@pytest.mark.system
def test_without_c_the_packaged_default_is_used_where_there_is_no_config_yaml(tmp_path):
    here = resolved(check_config(cwd=tmp_path))
    assert here == resolved(check_config("-c", str(PACKAGED)))


@pytest.mark.system
def test_without_c_the_local_config_yaml_is_used(tmp_path):
    data = copy.deepcopy(MINIMAL)
    data["source"]["id"] = "from_cwd"
    write_yaml(tmp_path / "config.yaml", data)
    assert resolved(check_config(cwd=tmp_path))["source"]["id"] == "from_cwd"


@pytest.mark.system
def test_without_c_a_bad_local_config_yaml_names_itself(tmp_path):
    data = copy.deepcopy(MINIMAL)
    data["models"]["instance"] = {"score_threshold": 1.5}
    write_yaml(tmp_path / "config.yaml", data)
    message = the_error(check_config(cwd=tmp_path), EXIT_CONFIG)
    assert message == "config.yaml: models.instance.score_threshold: must be between 0 and 1, got 1.5"


# ---------------------------------------------------------------------------------------------
# check-config on good files


@pytest.mark.system
def test_check_config_prints_the_resolved_config(fast_config):
    result = check_config("-c", str(fast_config))
    printed = resolved(result)
    assert printed["runtime"]["device"] == "cpu"  # from the file
    assert printed["models"]["instance"]["min_size"] == 96
    assert printed["models"]["semantic"]["input_size"] == [128, 96]
    assert set(printed) == {"source", "sources", "models", "fusion", "render", "tracking", "output", "server", "runtime", "events",
                            "analytics"}
    # What it prints is itself a valid configuration that resolves to the same thing.
    again = write_yaml(fast_config.parent / "again.yaml", printed)
    assert check_config("-c", str(again)).stdout == result.stdout


@pytest.mark.system
def test_check_config_fills_in_defaults(tmp_path):
    printed = resolved(check_config("-c", str(write_yaml(tmp_path / "min.yaml", MINIMAL))))
    assert printed["source"] | {"uri": "clip.mp4", "id": "cam0", "buffer": "auto", "queue_size": 2, "fps": None} == printed["source"]
    assert printed["source"]["reconnect"]["max_attempts"] is None  # live sources retry forever by default
    assert printed["models"]["semantic"]["classes"] == [{"name": "road", "isthing": False, "color": [1, 2, 3]}]
    assert printed["models"]["instance"]["arch"] == "maskrcnn_resnet50_fpn"
    assert printed["fusion"]["label_divisor"] == 1000
    assert printed["runtime"]["half"] == "auto"
    assert printed["output"] == {"video": None, "segment_seconds": None, "keep_hours": None, "max_bytes": None,
                                 "display": False, "export_dir": None, "export_images": False, "min_free_mb": 100.0,
                                 "overwrite": False}
    assert printed["server"] == {"enabled": False, "host": "127.0.0.1", "port": 9108, "token": None, "allow_unauthenticated": False,
                                 "allowed_hosts": [], "max_viewers": 8, "live_width": 960, "live_fps": 10.0}


# ---------------------------------------------------------------------------------------------
# --set values are read as YAML


@pytest.mark.system
def test_set_values_are_typed_from_yaml(tmp_path):
    config = write_yaml(tmp_path / "min.yaml", MINIMAL)
    printed = resolved(
        check_config(
            "-c", str(config),
            "--set", "fusion.stuff_area_min=2048",
            "--set", "models.instance.score_threshold=0.3",
            "--set", "models.semantic.input_size=[256, 160]",
            "--set", "render.contours=false",
            "--set", "render.alpha=0.25",  # a section the file does not have
            "--set", "output.export_dir=null",
            "--set", "source.id=first",
            "--set", "source.id=second",  # the last one wins
            "--set", "models.instance.class_map={}",
        )
    )
    assert printed["fusion"]["stuff_area_min"] == 2048 and type(printed["fusion"]["stuff_area_min"]) is int
    assert printed["models"]["instance"]["score_threshold"] == 0.3
    assert printed["models"]["semantic"]["input_size"] == [256, 160]
    assert printed["render"]["contours"] is False
    assert printed["render"]["alpha"] == 0.25
    assert printed["output"]["export_dir"] is None  # YAML null, not the string 'null'
    assert printed["source"]["id"] == "second"
    assert printed["models"]["instance"]["class_map"] == {}


@pytest.mark.system
def test_set_quoted_string_stays_a_string(tmp_path):
    config = write_yaml(tmp_path / "min.yaml", MINIMAL)
    printed = resolved(check_config("-c", str(config), "--set", "source.uri='0'"))
    assert printed["source"]["uri"] == "0"


@pytest.mark.system
def test_a_bad_value_is_blamed_on_the_command_line_or_the_file_whichever_set_it(tmp_path):
    config = write_yaml(tmp_path / "min.yaml", MINIMAL)
    result = check_config("-c", str(config), "--set", "models.semantic.classes=[{name: a}]")  # no colour
    assert the_error(result, 78).startswith("command line: models.semantic.classes.0.color: "), result.stderr
    result = check_config("-c", str(config), "--set", "render.alpha=0.5", "--set", "runtime.bogus=1")
    assert the_error(result, 78).startswith("command line: runtime.bogus: unknown key"), result.stderr
    (tmp_path / "bad.yaml").write_text(config.read_text() + "runtime: {max_batch: 0}\n")
    result = check_config("-c", str(tmp_path / "bad.yaml"), "--set", "render.alpha=0.5")
    assert the_error(result, 78).startswith(f"{tmp_path / 'bad.yaml'}: runtime.max_batch: "), result.stderr


@pytest.mark.parametrize("uri", ["0", "007", "yes", "null", "1.5", "it's", "[a]", "#x", "a: b"])
def test_source_flag_stays_a_string(fast_config, uri):
    """`run --source 0` is the camera '0' (a string), whatever YAML would make of the text."""
    from streamer.cli import build_parser, run_overrides
    from streamer.config import load_config

    args = build_parser().parse_args(["run", "-c", str(fast_config), "--source", uri, "--output", uri])
    config = load_config(args.config, run_overrides(args))
    assert config.source.uri == uri
    assert config.output.video == uri


# ---------------------------------------------------------------------------------------------
# Invalid configuration files


def _set(path: str, value):
    def mutate(data):
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return mutate


def _drop(section: str):
    return lambda data: data.pop(section)


# id -> (change to the fast config, or raw file bytes), text the message must hold after "<file>: "
BAD_FILES = {
    "unknown-nested-key": (_set("models.instance.bogus", 1), "models.instance.bogus: unknown key"),
    "unknown-section": (_set("extras", {"a": 1}), "extras: unknown key"),
    "out-of-range": (
        _set("models.instance.score_threshold", 1.5),
        "models.instance.score_threshold: must be between 0 and 1, got 1.5",
    ),
    "negative": (_set("fusion.stuff_area_min", -5), "fusion.stuff_area_min: Input should be greater than or equal to 0"),
    "wrong-type-int": (_set("runtime.max_frames", "many"), "runtime.max_frames: Input should be a valid integer"),
    "wrong-type-bool": (_set("render.contours", "maybe"), "render.contours: Input should be a valid boolean"),
    "wrong-type-section": (_set("fusion", [1, 2]), "fusion: Input should be"),
    "input-size-not-32": (
        _set("models.semantic.input_size", [100, 96]),
        "models.semantic.input_size.0: must be a positive multiple of 32, at most 8192, got 100",
    ),
    "bad-choice": (_set("source.buffer", "newest"), "source.buffer: Input should be"),
    "bad-device": (_set("runtime.device", "gpu"), "runtime.device: String should match pattern"),
    "missing-section": (_drop("source"), "source: required key is missing"),
    "class-map-to-stuff": (
        _set("models.instance.class_map", {"car": "road"}),
        "instance.class_map.car: 'road' is not a thing class",
    ),
    "duplicate-class": (
        _set("models.semantic.classes", [{"name": "car", "isthing": True, "color": [0, 0, 0]}] * 2),
        "models.semantic.classes: class names must be unique, repeated: car",
    ),
    "unknown-preset": (_set("models.preset", "nope"), "models: unknown preset 'nope' (known: demo, ade20k, cityscapes, "
                                                       "cityscapes-fast, or none)"),
    "class-map-candidate-to-stuff": (
        _set("models.instance.class_map", {"person": ["person", "road"]}),
        "instance.class_map.person: 'road' is not a thing class",
    ),
    "zero-std": (_set("models.semantic.std", [0, 1, 1]), "models.semantic.std.0: Input should be greater than 0"),
    "yaml-syntax": (b"source:\n  uri: [unclosed\nmodels: {\n", "not valid YAML"),
    "not-utf8": (b"source:\n  uri: \xff\xfe\n", "not valid YAML"),
    "top-level-list": (b"- source\n- models\n", "the top level must be a mapping"),
}
RUN_TOO = {"unknown-nested-key", "out-of-range", "wrong-type-int", "input-size-not-32", "yaml-syntax"}


def commands(cases: dict, run_too: set[str]) -> list[tuple[str, str]]:
    """(command, case) pairs: every case through check-config, those in `run_too` through run as well."""
    return [("check-config", case) for case in cases] + [("run", case) for case in cases if case in run_too]


def write_bad(fast_config: Path, change) -> Path:
    path = fast_config.parent / "bad.yaml"
    if isinstance(change, bytes):
        path.write_bytes(change)
    else:
        data = yaml.safe_load(fast_config.read_text())
        change(data)
        write_yaml(path, data)
    return path


@pytest.mark.system
@pytest.mark.parametrize("command, case", commands(BAD_FILES, RUN_TOO))
def test_invalid_config_file(fast_config, command, case):
    change, expected = BAD_FILES[case]
    path = write_bad(fast_config, change)
    result = run_cli(command, "-c", str(path))
    message = the_error(result, EXIT_CONFIG)
    assert message.startswith(f"{path}: "), message
    assert expected in message
    assert result.stdout == ""


@pytest.mark.system
def test_the_first_problem_is_named_and_the_others_counted(fast_config):
    def two_problems(data):
        data["models"]["instance"]["bogus"] = 1
        data["fusion"]["mask_threshold"] = 2

    message = the_error(check_config("-c", str(write_bad(fast_config, two_problems))), EXIT_CONFIG)
    assert "(and 1 more problem)" in message


@pytest.mark.system
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_missing_config_file(tmp_path, command):
    missing = tmp_path / "nope" / "config.yaml"
    message = the_error(run_cli(command, "-c", str(missing)), EXIT_NOINPUT)
    assert str(missing) in message
    assert "config file not found" in message


# ---------------------------------------------------------------------------------------------
# The same errors through --set

BAD_SETS = {
    "unknown-nested-key": ("models.instance.bogus=1", "models.instance.bogus: unknown key"),
    "out-of-range": (
        "models.instance.score_threshold=1.5",
        "models.instance.score_threshold: must be between 0 and 1, got 1.5",
    ),
    "wrong-type": ("runtime.max_frames=many", "runtime.max_frames: Input should be a valid integer"),
    "input-size-not-32": (
        "models.semantic.input_size=[256, 100]",
        "models.semantic.input_size.1: must be a positive multiple of 32, at most 8192, got 100",
    ),
    "negative": ("fusion.stuff_area_min=-1", "fusion.stuff_area_min: Input should be greater than or equal to 0"),
    "null-required": ("source.uri=null", "source.uri: Input should be a valid string"),
    "int-for-string": ("source.id=7", "source.id: Input should be a valid string"),
}
BAD_SET_SYNTAX = {
    "no-equals": ("fusion.stuff_area_min", "--set fusion.stuff_area_min: expected dotted.key=value"),
    "empty-key": ("=3", "--set =3: expected dotted.key=value"),
    "into-a-value": ("source.uri.x=1", "--set source.uri.x=1: uri is not a section"),
}
SET_RUN_TOO = {"unknown-nested-key", "out-of-range", "no-equals"}


@pytest.mark.system
@pytest.mark.parametrize("command, case", commands(BAD_SETS, SET_RUN_TOO))
def test_invalid_set(fast_config, command, case):
    item, expected = BAD_SETS[case]
    result = run_cli(command, "-c", str(fast_config), "--set", item)
    message = the_error(result, EXIT_CONFIG)
    assert message.startswith("command line: "), message  # not the file: the value came from --set
    assert expected in message
    assert result.stdout == ""


@pytest.mark.system
@pytest.mark.parametrize("command, case", commands(BAD_SET_SYNTAX, SET_RUN_TOO))
def test_malformed_set(fast_config, command, case):
    item, expected = BAD_SET_SYNTAX[case]
    result = run_cli(command, "-c", str(fast_config), "--set", item)
    message = the_error(result, EXIT_CONFIG)
    assert message == expected


@pytest.mark.system
def test_source_uri_takes_credentials_from_the_environment_and_never_prints_them(fast_config):
    env = cli_env(CAM_URL="rtsp://admin:hunter2@10.0.0.7:554/stream1")
    result = run_cli("check-config", "-c", str(fast_config), "--set", "source.uri=${CAM_URL}", env=env)
    assert result.returncode == 0, result.stderr
    assert "uri: ${CAM_URL}" in result.stdout  # as written: the variable's value is never shown
    assert "hunter2" not in result.stdout + result.stderr and "admin" not in result.stdout
    missing = run_cli("check-config", "-c", str(fast_config), "--set", "source.uri=${NOT_SET_ANYWHERE}")
    assert "environment variable NOT_SET_ANYWHERE is not set" in the_error(missing, EXIT_CONFIG)


@pytest.mark.system
def test_an_older_files_metrics_section_is_read_as_server_with_a_warning(tmp_path):
    """`metrics:` became `server:` with the live view: a systemd unit's old file keeps working."""
    old = write_yaml(tmp_path / "old.yaml", {**MINIMAL, "metrics": {"enabled": True, "port": 9999}})
    result = check_config("-c", str(old))
    assert resolved(result)["server"] | {"enabled": True, "port": 9999, "host": "127.0.0.1"} == resolved(result)["server"]
    assert "metrics: is now server: (the same keys and more); rename it" in result.stderr
    both = write_yaml(tmp_path / "both.yaml", {**MINIMAL, "metrics": {"enabled": True}, "server": {"port": 1}})
    assert "metrics: is now server: (the same keys and more); give only server:" in the_error(check_config("-c", str(both)), 78)


def test_a_check_over_a_section_is_blamed_on_the_command_line_when_only_a_set_value_fails_it(tmp_path):
    """`--set server.host=0.0.0.0` without a token fails a check of the whole server section: the
    value came from the command line, so the message says so, not the (packaged) file."""
    from streamer.config import load_config
    from streamer.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^command line: server: host 0\.0\.0\.0 is reachable"):
        load_config(None, ["server.enabled=true", "server.host=0.0.0.0"])
    exposed = tmp_path / "exposed.yaml"
    exposed.write_text("server: {enabled: true, host: 0.0.0.0}\n")
    with pytest.raises(ConfigError, match=re.escape(f"{exposed}: server: host 0.0.0.0 is reachable")):
        load_config(exposed, ["server.port=9000"])  # the file's own fault, whatever else was set
    with pytest.raises(ConfigError, match=r"^command line: source cam0 has counting lines or zones"):
        load_config(None, ["source.lines={a: [[0, 0], [9, 9]]}", "tracking.enabled=false"])
