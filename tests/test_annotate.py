"""`streamer annotate`: which videos a set of inputs names, and real runs over real videos in real
worker processes: every export written, a rerun that does nothing, a deleted export redone alone,
an undecodable file failed without stopping the others, a kill in the middle survived."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest
from helpers import RECORDER, cli_in_pty, make_video, popen_cli, run_cli, run_in_process, screen_lines, the_error, wait_until

from streamer.errors import InputNotFound, UsageError
from streamer.tools.annotate.jobs import find_videos

EXIT_FAILURE, EXIT_USAGE, EXIT_NOINPUT = 1, 2, 66
MODELS = RECORDER[2:]  # the demo models at a small input size: quick on the CPU
ARCHIVE_BAR = re.compile(r"\d+/\d+ videos.*: +\d+%\|.*\| *\d+/\S+ frames \[")


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


@pytest.mark.system
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
    assert re.search(r"; 3/3 videos \(0 failed\), 19 frames, [\d.]+ fps", first.stderr), "the status after the last video"

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


@pytest.mark.system
def test_a_terminal_gets_one_bar_over_all_videos_counting_frames_as_workers_go(tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        make_video(tmp_path / "in" / f"{name}.mp4", frames=30)
    output = cli_in_pty(tmp_path, (24, 120), "annotate", "in", "--out", "out", *MODELS, "--workers", "2", timeout=240)
    bars = [line for line in screen_lines(output) if ARCHIVE_BAR.search(line)]
    assert bars and re.match(r"2/2 videos: 100%\|.*\| 60/60 frames \[.*frame/s\]$", bars[-1]), output
    drawn = [part.strip() for part in re.split(r"[\r\n]+", output) if ARCHIVE_BAR.search(part)]  # each redraw
    midway = [line for line in drawn if line.startswith("0/2 videos") and not re.search(r"\| 0/", line)]
    assert any("/60 frames" in line for line in midway), f"frames counted before any video ended, of 2 x 30 expected:\n{drawn}"
    logs = [line for line in screen_lines(output) if " INFO streamer." in line]
    assert all(not ARCHIVE_BAR.search(line) for line in logs) and sum(": 30 frames in " in line for line in logs) == 2, output


@pytest.mark.system
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


def processes(match: bytes) -> list[int]:
    """The pids of the processes whose command line contains `match`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and match in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile
            pass
    return pids


def survives_a_dead_worker(tmp_path, kill: Callable[[subprocess.Popen, Path], None], *args: str) -> None:
    """Two 30-frame videos through one worker (`args`: the engine's flags); `kill(process, out)`
    kills the worker in the middle of the first. The run must end well, that video done on its
    second attempt by a new worker."""
    root = tmp_path / "in"
    root.mkdir()
    for name in ("a", "b"):
        make_video(root / f"{name}.mp4", frames=30)
    out = tmp_path / "out"
    process = popen_cli("annotate", str(root), "--out", str(out), *MODELS, "--workers", "1", *args)
    try:
        kill(process, out)
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert re.search(r"in/a.mp4 failed \(.*the worker process died\), trying again", stderr), stderr
    done = manifest(out)
    assert {name: (line["status"], line["frames"]) for name, line in done.items()} == {"in/a.mp4": ("done", 30), "in/b.mp4": ("done", 30)}
    assert sorted(line["attempts"] for line in done.values()) == [1, 2], "the video in flight, once more, on a new worker"


@pytest.mark.system
def test_a_worker_that_dies_is_replaced_and_its_video_tried_again(tmp_path):
    def kill(process: subprocess.Popen, out: Path) -> None:
        log = out / "logs" / "worker-0.log"
        wait_until(lambda: log.exists() and "first frame read" in log.read_text(), timeout=120, what="a video in flight")
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        workers = [int(pid) for pid in children if int(pid) in processes(b"spawn_main")]
        assert len(workers) == 1, children
        os.kill(workers[0], signal.SIGKILL)  # as the kernel's out-of-memory killer would

    survives_a_dead_worker(tmp_path, kill)


@pytest.mark.system
def test_nothing_to_annotate_is_one_clear_line(tmp_path):
    result = run_cli("annotate", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert the_error(result, EXIT_NOINPUT).endswith("missing: no such file or folder")


def test_the_ray_engine_where_ray_is_not_installed_is_one_clear_line(tmp_path, archive, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as without the extra
    for name in ("RAY_USAGE_STATS_ENABLED", "RAY_AUTH_MODE"):  # the engine sets them for Ray
        monkeypatch.setenv(name, "0")
    result = run_in_process("annotate", str(archive), "--out", str(tmp_path / "out"), *MODELS, "--engine", "ray")
    assert the_error(result, EXIT_USAGE) == "--engine ray needs Ray: pip install 'streamer[ray]'"
    assert "3 videos" not in result.stderr and not (tmp_path / "out").exists(), "said first, before anything else"


@pytest.mark.system
def test_missing_weights_are_one_line_before_any_worker_starts(tmp_path, archive):
    result = run_cli("annotate", str(archive), "--out", str(tmp_path / "out"), "--set", "models.semantic.weights=/nowhere/w.safetensors")
    assert the_error(result, EXIT_NOINPUT) == "/nowhere/w.safetensors: weights file not found"
    assert not (tmp_path / "out" / "logs").exists() and not (tmp_path / "out" / "manifest.jsonl").exists()
