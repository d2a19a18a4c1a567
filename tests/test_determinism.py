"""The same input gives the same answer: offline runs (a synthetic street, a video file, an archive
through `streamer annotate`) repeated give byte-identical exports (every PNG, panoptic.json with
its track ids, the heatmaps) and counts, with frames in parallel and batched."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from helpers import DEMO_MODELS, cli_env, make_video, run_cli

pytestmark = pytest.mark.system

SMALL = ["--set", "models.semantic.input_size=[320,192]", "--set", "models.instance.min_size=180"]
# a line and a zone, so that the counts hold crossings and entries too
COUNTING = ["--set", "source.lines={middle: [[160, 0], [160, 180]]}", "--set", "source.zones={left: [[0, 90], [150, 90], [150, 180], [0, 180]]}"]


def digest(folder: Path) -> dict[str, str]:
    """Every file of an export (PNGs, panoptic.json with its counts), by name -> sha256."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file() and path.suffix in (".png", ".json")}


@pytest.mark.parametrize("layout", [
    ["--set", "runtime.parallel_frames=2", "--set", "runtime.torch_threads=1"],
    ["--set", "runtime.parallel_frames=1", "--set", "runtime.max_batch=3"],
])
def test_three_runs_of_a_synthetic_street_export_the_same_bytes(tmp_path, layout):
    exports = []
    for run in range(3):
        export = tmp_path / f"export{run}"
        result = run_cli("run", "--source", "synthetic:street?seed=1000&frames=80&size=320x180", "--export-dir", str(export),
                         *DEMO_MODELS, *SMALL, *COUNTING, *layout, env=cli_env())
        assert result.returncode == 0, result.stderr
        exports.append(digest(export))
    frames = [name for name in exports[0] if name.endswith(".png") and not name.startswith("heatmap")]
    assert len(frames) == 80 and {"panoptic.json", "categories.json", "heatmap.json"} <= set(exports[0])
    assert exports[0] == exports[1] == exports[2]


def test_an_archive_annotated_twice_gets_the_same_ids_and_counts(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    for n in range(2):
        make_video(archive / f"clip{n}.mp4", frames=30, size=(160, 120))
    outs = [tmp_path / "first", tmp_path / "second"]
    for out in outs:
        result = run_cli("annotate", str(archive), "--out", str(out), *DEMO_MODELS, *SMALL, "--workers", "2")
        assert result.returncode == 0, result.stderr
    assert digest(outs[0] / "clip0") == digest(outs[1] / "clip0") and digest(outs[0] / "clip1") == digest(outs[1] / "clip1")
