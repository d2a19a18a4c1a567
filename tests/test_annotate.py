"""`streamer annotate`: which videos a set of inputs names, and real runs over real videos in real
worker processes: every export written, a rerun that does nothing, a deleted export redone alone,
an undecodable file failed without stopping the others, a kill in the middle survived."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path, PurePosixPath

import pytest
from helpers import RECORDER, make_video, popen_cli, run_cli, the_error, wait_until

from streamer.errors import InputNotFound, UsageError
from streamer.tools.annotate.jobs import find_videos

EXIT_FAILURE, EXIT_NOINPUT = 1, 66
MODELS = RECORDER[2:]  # the demo models at a small input size: quick on the CPU


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def names(jobs) -> list[str]:
    return [job.name.as_posix() for job in jobs]


def test_folders_are_searched_for_videos_files_taken_as_given_and_globs_expanded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("cams/north/b.mp4", "cams/north/a.MOV", "cams/south/c.mkv", "cams/notes.txt", "cams/.hidden/d.mp4",
                 "cams/north/.e.mp4", "loose/x.avi", "loose/y.mp4", "other.bin"):
        touch(tmp_path / name)
    assert names(find_videos(["cams"])) == ["cams/north/a.MOV", "cams/north/b.mp4", "cams/south/c.mkv"]
    assert names(find_videos(["other.bin", "loose/*.mp4"])) == ["other.bin", "y.mp4"], "a file as given; a glob's videos"
    assert names(find_videos(["cams/**/*.mkv", "cams/south/c.mkv", "cams/south/../south/c.mkv"])) == ["c.mkv"], "each once"
    assert names(find_videos(["cams/north/"])) == ["north/a.MOV", "north/b.mp4"]
    assert all(job.name == PurePosixPath(job.name) and ".." not in job.name.parts for job in find_videos(["cams", "loose"]))


@pytest.mark.parametrize("inputs, error, message", [
    (["missing.mp4"], InputNotFound, "missing.mp4: no such file or folder"),
    (["*.webm"], InputNotFound, "*.webm: no video matches"),
    (["empty"], InputNotFound, "empty: no videos in it"),
    (["one/same.mp4", "two/same.mp4"], UsageError, "one/same.mp4 and two/same.mp4 would both be annotated into same.mp4/"),
])
def test_inputs_that_name_nothing_or_collide_are_one_clear_error(tmp_path, monkeypatch, inputs, error, message):
    monkeypatch.chdir(tmp_path)
    touch(tmp_path / "one/same.mp4")
    touch(tmp_path / "two/same.mp4")
    touch(tmp_path / "empty/notes.txt")
    with pytest.raises(error, match=message.replace("*", r"\*").replace(".", r"\.")):
        find_videos(inputs)


def manifest(out: Path) -> dict[str, dict]:
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return {line["output"]: line for line in lines}


def annotations(out: Path, name: str) -> int:
    return len(json.loads((out / name / "panoptic.json").read_text())["annotations"])


@pytest.fixture
def archive(tmp_path) -> Path:
    root = tmp_path / "archive"
    (root / "day2").mkdir(parents=True)
    make_video(root / "a.mp4", frames=6)
    make_video(root / "day2" / "b.mp4", frames=8)
    make_video(root / "day2" / "c.mp4", frames=5)
    return root


def test_an_archive_is_annotated_once_and_a_rerun_redoes_only_what_is_missing(tmp_path, archive):
    out = tmp_path / "out"
    args = ("annotate", str(archive), "--out", str(out), *MODELS, "--workers", "2")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    done = manifest(out)
    assert {name: (line["status"], line["frames"]) for name, line in done.items()} == {
        "archive/a.mp4": ("done", 6), "archive/day2/b.mp4": ("done", 8), "archive/day2/c.mp4": ("done", 5)}
    assert [annotations(out, name) for name in sorted(done)] == [6, 8, 5]
    assert "3 videos, 0 done before, 3 to do" in first.stderr
    assert "the demo models know only synthetic streets" in first.stderr, "on the terminal, not only in the workers' logs"

    again = run_cli(*args)
    assert again.returncode == 0 and "3 videos, 3 done before, 0 to do" in again.stderr
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 3, "nothing redone"

    kept = (out / "archive/a.mp4/panoptic.json").stat().st_mtime_ns
    for path in (out / "archive/day2/b.mp4").rglob("*"):
        if path.is_file():
            path.unlink()
    (out / "archive/day2/b.mp4/panoptic.json").unlink(missing_ok=True)
    touch(archive / "day2" / "broken.mp4", b"\x00\x00\x00\x18ftypisom" + os.urandom(4000))  # not a video at all
    third = run_cli(*args, "--retries", "0")
    assert "broken.mp4 failed: " in the_error(third, EXIT_FAILURE), "one line for the failed video, the others go on"
    assert "4 videos, 2 done before, 2 to do" in third.stderr
    done = manifest(out)
    assert done["archive/day2/b.mp4"]["status"] == "done" and annotations(out, "archive/day2/b.mp4") == 8
    assert done["archive/day2/broken.mp4"]["status"] == "failed" and "broken.mp4" in done["archive/day2/broken.mp4"]["error"]
    assert (out / "archive/a.mp4/panoptic.json").stat().st_mtime_ns == kept, "a finished export is never touched"


def test_a_kill_in_the_middle_loses_only_the_videos_in_flight(tmp_path):
    root = tmp_path / "long"
    root.mkdir()
    for index in range(4):
        make_video(root / f"v{index}.mp4", frames=40)
    out = tmp_path / "out"
    args = ("annotate", str(root), "--out", str(out), *MODELS, "--workers", "1")
    process = popen_cli(*args)
    try:
        wait_until(lambda: (out / "manifest.jsonl").exists() and (out / "manifest.jsonl").read_text().count("\n") >= 1,
                   timeout=240, every=0.1, what="the first finished video")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    finished = {name: (out / name / "panoptic.json").stat().st_mtime_ns for name in manifest(out)}
    assert 1 <= len(finished) < 4, "killed in the middle"
    time.sleep(1.0)  # the killed run's worker notices and exits
    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert {name: line["frames"] for name, line in manifest(out).items()} == {f"long/v{i}.mp4": 40 for i in range(4)}
    assert all((out / name / "panoptic.json").stat().st_mtime_ns == mtime for name, mtime in finished.items())


def test_nothing_to_annotate_is_one_clear_line(tmp_path):
    result = run_cli("annotate", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert the_error(result, EXIT_NOINPUT).endswith("missing: no such file or folder")


def test_missing_weights_are_one_line_before_any_worker_starts(tmp_path, archive):
    result = run_cli("annotate", str(archive), "--out", str(tmp_path / "out"), "--set", "models.semantic.weights=/nowhere/w.safetensors")
    assert the_error(result, EXIT_NOINPUT) == "/nowhere/w.safetensors: weights file not found"
    assert not (tmp_path / "out" / "logs").exists() and not (tmp_path / "out" / "manifest.jsonl").exists()
