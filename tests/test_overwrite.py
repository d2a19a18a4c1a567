"""No output is replaced without being asked: an existing video file, export, synthetic scene or
benchmark report is refused in one line (exit 73) and left as it was; `--overwrite` (or
`output.overwrite: true`) replaces it. Segments never replace anything: each gets a new name."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from helpers import readable_frames, run_cli, run_in_process, the_error

EXIT_CANTCREAT = 73


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(fast_config: Path, source: Path, frames: int, *args: str):
    return run_in_process("run", "-c", str(fast_config), "--source", str(source), "--max-frames", str(frames), *args)


def test_an_existing_video_is_refused_then_replaced_with_overwrite(fast_config, small_video, tmp_path):
    video = tmp_path / "out" / "out.mp4"
    assert run(fast_config, small_video, 3, "--output", str(video)).returncode == 0
    before = digest(video)

    result = run(fast_config, small_video, 5, "--output", str(video))
    assert the_error(result, EXIT_CANTCREAT) == \
        f"{video}: already exists; --overwrite (output.overwrite: true) replaces it, or choose another name"
    assert "models ready" not in result.stderr, "refused before any model loads"
    assert digest(video) == before

    assert run(fast_config, small_video, 5, "--output", str(video), "--overwrite").returncode == 0
    assert readable_frames(video) == 5


def test_output_overwrite_in_the_config_file_means_the_same(fast_config, small_video, tmp_path):
    video = tmp_path / "out.mp4"
    video.write_bytes(b"an older video")
    assert run(fast_config, small_video, 2, "--output", str(video), "--set", "output.overwrite=true").returncode == 0
    assert readable_frames(video) == 2


def test_an_existing_export_is_refused_then_replaced_keeping_other_files(fast_config, small_video, tmp_path):
    export = tmp_path / "export"
    assert run(fast_config, small_video, 4, "--export-dir", str(export)).returncode == 0
    notes = export / "notes.txt"
    notes.write_text("the user's own file")
    before = {p: digest(p) for p in export.rglob("*") if p.is_file()}

    result = run(fast_config, small_video, 2, "--export-dir", str(export))
    assert the_error(result, EXIT_CANTCREAT) == \
        f"{export}: already holds an export; --overwrite (output.overwrite: true) replaces it, or choose an empty folder"
    assert {p: digest(p) for p in export.rglob("*") if p.is_file()} == before

    assert run(fast_config, small_video, 2, "--export-dir", str(export), "--overwrite").returncode == 0
    coco = json.loads((export / "panoptic.json").read_text())
    assert [image["id"] for image in coco["images"]] == [0, 1]
    assert sorted(p.name for p in (export / "panoptic").iterdir()) == ["000000.png", "000001.png"], "the old frames 2 and 3 are gone"
    assert len((export / "segments.jsonl").read_text().splitlines()) == 2
    assert notes.read_text() == "the user's own file"


def test_a_failed_start_leaves_the_export_it_would_replace_whole(fast_config, small_video, tmp_path):
    export = tmp_path / "export"
    assert run(fast_config, small_video, 2, "--export-dir", str(export)).returncode == 0
    before = {p: digest(p) for p in export.rglob("*") if p.is_file()}
    result = run(fast_config, tmp_path / "missing.mp4", 2, "--export-dir", str(export), "--overwrite")
    assert result.returncode == 66
    assert {p: digest(p) for p in export.rglob("*") if p.is_file()} == before


def test_segments_never_replace_an_existing_file(fast_config, small_video, tmp_path):
    folder = tmp_path / "segments"
    folder.mkdir()
    for _ in range(2):
        assert run(fast_config, small_video, 4, "--output", str(folder), "--set", "output.segment_seconds=60").returncode == 0
    segments = sorted(folder.glob("*.mp4"))
    assert len(segments) == 2 and all(readable_frames(p) == 4 for p in segments)


@pytest.mark.system
def test_synth_and_eval_and_bench_refuse_what_exists(fast_config, tmp_path):
    scene = tmp_path / "scene"  # synth's refusal itself: tests/test_export.py
    assert run_in_process("synth", "--seed", "3", "--frames", "2", "--size", "64x48", "--out", str(scene)).returncode == 0
    assert run_in_process("synth", "--seed", "4", "--frames", "3", "--size", "64x48", "--out", str(scene), "--overwrite").returncode == 0
    assert readable_frames(scene / "video.mp4") == 3
    assert len(json.loads((scene / "panoptic.json").read_text())["images"]) == 3

    result = run_in_process("eval", "-c", str(fast_config), "--source", "synthetic:street?seed=1000&frames=1&size=64x48",
                            "--export-dir", str(scene))
    assert the_error(result, EXIT_CANTCREAT).startswith(f"{scene}: already holds an export; --overwrite")

    report = tmp_path / "bench.json"
    report.write_text("{}")
    result = run_cli("bench", "-c", str(fast_config), "--json", str(report))  # a fresh process: the documented code
    assert the_error(result, EXIT_CANTCREAT) == f"--json {report}: already exists; --overwrite replaces it, or choose another name"
    assert report.read_text() == "{}"
