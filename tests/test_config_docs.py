"""Settings from one place: every key's default and description are written once, in the schema
(streamer/config.py); config.yaml, the packaged default and the README's configuration table are
generated from it (`streamer config-docs`) and may not drift. The tracker names are listed once, and
an unknown one is a configuration error."""
from __future__ import annotations

import shutil

import pytest
from helpers import ROOT, run_in_process, the_error

from streamer.config import Source, load_config, validate
from streamer.frames import LABEL_DIVISOR
from streamer.inference.tracking import SourceTracker, TrackingParams
from streamer.tools import config_docs

EXIT_FAILURE, EXIT_CONFIG = 1, 78
FIX = "run `streamer config-docs --write` (after changing streamer/config.py)"


def test_config_yaml_the_packaged_default_and_the_readme_table_are_what_the_schema_generates():
    stale = [str(path.relative_to(ROOT)) for path in config_docs.out_of_date(ROOT)]
    assert stale == [], f"out of date with the schema: {', '.join(stale)}; {FIX}"


def test_every_key_has_a_description():
    missing = [key for key, field in config_docs.leaves() if not (field.description or "").strip()]
    assert missing == [], "describe these keys in streamer/config.py"


def test_the_generated_yaml_writes_the_defaults_and_the_first_example_of_a_required_key(tmp_path):
    """Loaded, it is the schema's defaults with the demo preset's models and the example source:
    exactly the Config of a file that gives only `source.uri`."""
    path = tmp_path / "config.yaml"
    path.write_text(config_docs.config_yaml())
    assert load_config(path) == validate({"source": {"uri": Source.model_fields["uri"].examples[0]}})


def test_check_names_the_files_out_of_date_and_write_brings_them_back(tmp_path):
    for name in ("README.md", "config.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "streamer").mkdir()
    shutil.copy(ROOT / "streamer" / "default_config.yaml", tmp_path / "streamer" / "default_config.yaml")
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text().replace("| `fusion.label_divisor` | `1000` |", "| `fusion.label_divisor` | `999` |"))
    (tmp_path / "config.yaml").write_text((tmp_path / "config.yaml").read_text().replace("queue_size: 2", "queue_size: 3"))

    message = the_error(run_in_process("config-docs", "--check", "--root", str(tmp_path)), EXIT_FAILURE)
    assert message == ("config-docs: out of date with streamer/config.py: config.yaml, README.md; "
                       "run `streamer config-docs --write`")
    assert run_in_process("config-docs", "--write", "--root", str(tmp_path)).returncode == 0
    assert config_docs.out_of_date(tmp_path) == []
    assert (tmp_path / "config.yaml").read_bytes() == (ROOT / "config.yaml").read_bytes()


def test_the_readme_without_the_table_markers_is_a_usage_error(tmp_path):
    (tmp_path / "streamer").mkdir()
    (tmp_path / "README.md").write_text("# streamer\n\nno table here\n")
    message = the_error(run_in_process("config-docs", "--check", "--root", str(tmp_path)), 2)
    assert message.startswith("README.md: no configuration table markers")


def test_without_a_flag_it_prints_the_commented_yaml():
    result = run_in_process("config-docs")
    assert result.returncode == 0
    assert result.stdout == (ROOT / "config.yaml").read_text()


def test_an_unknown_tracker_is_a_configuration_error_of_one_line():
    message = the_error(run_in_process("check-config", "--set", "tracking.tracker=nope"), EXIT_CONFIG)
    assert message == "command line: tracking.tracker: Input should be 'ocsort', 'bytetrack' or 'sort', got 'nope'"


def test_an_unknown_tracker_never_becomes_sort():
    """The configuration refuses it first; past it (a TrackingParams built by hand), still no fallback."""
    from helpers import boxes_frame

    tracker = SourceTracker(TrackingParams(True, "nope", 1.0, 1), LABEL_DIVISOR)
    panoptic, segments = boxes_frame([(3, 10, 20, 30, 20)])
    with pytest.raises(ValueError, match="unknown tracker 'nope'"):
        tracker.update(panoptic, segments, 0.0)
