"""What validation accepts, the run can use: every number in the configuration is finite and bounded
(an absurd value is exit 78 naming the key, not a crash at run time that systemd restarts forever),
and runs at the extremes that validation accepts finish normally."""
from __future__ import annotations

import math
import re

import pytest
from helpers import run_in_process, the_error

from streamer.config import Config, ConfigError, validate

EXIT_CONFIG = 78


def numeric_keys() -> list[tuple[str, bool]]:
    """(dotted key, is a list of numbers) for every number the configuration schema has."""
    schema = Config.model_json_schema()
    found = []

    def kinds(node: dict) -> set[str]:
        node = resolve(node)
        if "anyOf" in node:
            return set().union(*(kinds(option) for option in node["anyOf"]))
        return {node.get("type", "")}

    def resolve(node: dict) -> dict:
        while "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
        return node

    def walk(node: dict, prefix: str) -> None:
        node = resolve(node)
        for name, prop in node.get("properties", {}).items():
            key = f"{prefix}{name}"
            options = [resolve(o) for o in prop.get("anyOf", [prop])]
            for option in options:
                if option.get("type") == "object" and "properties" in option:
                    walk(option, key + ".")
            if kinds(prop) & {"integer", "number"}:
                found.append((key, False))
            elif any(o.get("type") == "array" and kinds(o.get("items") or (o.get("prefixItems") or [{}])[0]) & {"integer", "number"}
                     for o in options):
                found.append((key, True))

    walk(schema, "")
    return found


def with_value(key: str, value) -> dict:
    raw: dict = {"source": {"uri": "synthetic:street"}}
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return raw


KEYS = numeric_keys()


def test_the_schema_walk_finds_the_numbers():
    keys = dict(KEYS)
    assert {"source.fps", "output.max_bytes", "runtime.max_frames", "models.semantic.input_size", "server.port"} <= set(keys)
    assert len(keys) > 30


@pytest.mark.parametrize("key, is_list", KEYS, ids=[key for key, _ in KEYS])
def test_every_number_is_finite_and_bounded(key, is_list):
    for bad in (1e300, -1e300, math.inf, -math.inf, math.nan):
        value = [bad] * 3 if is_list else bad
        with pytest.raises(ConfigError, match=re.escape(key)):
            validate(with_value(key, value))


@pytest.mark.parametrize("value", ["..", ".", ".hidden", "a/b", "../../etc", "x" * 65, ""])
def test_a_source_id_is_a_name_never_a_path(value):
    with pytest.raises(ConfigError, match="source.id: must be a name of 1-64 letters"):
        validate(with_value("source.id", value))


def test_a_run_at_the_bounds_validation_accepts_finishes(tmp_path):
    """The extremes of the timing keys together: frames 1 ms apart, and 100 s apart."""
    for fps, segment in (("1000", "0.1"), ("0.01", "86400")):
        output = tmp_path / f"fps-{fps.replace('.', '_')}"  # a folder: segments
        result = run_in_process(
            "run", "--source", "synthetic:street?frames=3&size=96x64", "--output", str(output),
            "--set", f"source.fps={fps}", "--set", f"output.segment_seconds={segment}", "--set", "runtime.device=cpu",
            "--set", "source.open_timeout_s=3600", "--set", "source.read_timeout_s=0.1", "--set", "runtime.status_interval_s=0.1",
            "--set", "runtime.stage_timeout_s=86400", "--set", "runtime.drain_timeout_s=86400", "--set", "output.keep_hours=876000",
            "--set", "output.max_bytes=1MB", "--set", "models.semantic.input_size=[96,64]")
        assert result.returncode == 0, result.stderr
        assert list(output.glob("*.mp4"))


def test_max_bytes_that_holds_no_segment_is_a_configuration_error(fast_config):
    message = the_error(run_in_process("check-config", "-c", str(fast_config), "--set", "output.max_bytes=0"), EXIT_CONFIG)
    assert message.startswith("command line: output.max_bytes: Input should be greater than or equal to 1000000")


@pytest.mark.parametrize("counting, message", [
    ({"lines": {"north": [[0, 10], [0, 10]]}}, "source.lines: north: its two points are the same"),
    ({"lines": {"north": [[0, 10]]}}, "source.lines.north"),
    ({"lines": {"north": [[0, 10], [5, math.nan]]}}, "source.lines.north.1.1"),
    ({"lines": {"../x": [[0, 10], [5, 10]]}}, "source.lines.../x.[key]"),
    ({"zones": {"walk": [[0, 0], [10, 0], [0, 0]]}}, "source.zones: walk: a zone needs 3 distinct points or more"),
    ({"zones": {"walk": [[0, 0], [10, 0], [1e9, 5]]}}, "source.zones.walk.points.2.0"),
    ({"zones": {"walk": [[0, 0], [10, 10], [20, 20], [5, 5]]}}, "source.zones: walk: its points lie on one line"),
    ({"zones": {"walk": [[0, 100], [300, 100.2], [600, 100]]}}, "source.zones: walk: its points lie on one line"),
    ({"lines": {"north": [[0, 10], [5, 10]]}, "tracking": False},
     "source cam0 has counting lines or zones, which need tracking.enabled: true"),
])
def test_a_bad_counting_line_or_zone_is_a_configuration_error_naming_it(counting, message):
    raw = {"source": {"uri": "synthetic:street", **{k: v for k, v in counting.items() if k != "tracking"}}}
    if "tracking" in counting:
        raw["tracking"] = {"enabled": counting["tracking"]}
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(raw)


def test_good_lines_and_zones_become_points():
    source = validate({"source": {"uri": "synthetic:street", "lines": {"north gate": [[0, 10.5], [640, 10.5]]},
                                  "zones": {"walk": [[0, 0], [10, 0], [10, 10]]}}}).source
    assert source.lines == {"north gate": ((0.0, 10.5), (640.0, 10.5))} and source.zones["walk"][2] == (10.0, 10.0)


@pytest.mark.parametrize("key, value", [
    ("calibration", {"image": [[250, 320], [590, 320], [450, 203], [315, 203]],
                     "ground": [[-6.1, 15.2], [6.1, 15.2], [6.1, 38.0], [-6.1, 38.0]]}),
    ("lines", {"north": [[0, 10], [640, 10]]}),
    ("zones", {"walk": [[0, 0], [10, 0], [10, 10]]}),
])
def test_a_single_cameras_pixels_are_never_shared_by_source_beside_sources(key, value):
    raw = {"source": {key: value}, "sources": [{"id": "a", "uri": "synthetic:street"}, {"id": "b", "uri": "synthetic:street"}]}
    with pytest.raises(ConfigError, match=re.escape(f"source.{key} beside sources: belongs to one camera")):
        validate(raw)
    shared = validate({"source": {"fps": 5}, "sources": raw["sources"]})  # what is not a camera's own is still shared
    assert [s.fps for s in shared.sources] == [5, 5]
