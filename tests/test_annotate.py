"""`streamer annotate`: which videos a set of inputs names, and real runs over real videos in real
worker processes: every export written, a rerun that does nothing, a deleted export redone alone,
an undecodable file failed without stopping the others, a kill in the middle survived."""
from __future__ import annotations

import contextlib
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
from helpers import RECORDER, cli_env, cli_in_pty, make_video, popen_cli, run_cli, run_in_process, screen_lines, the_error, wait_until

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


def test_the_output_folder_is_never_searched_for_videos(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("data/cam/a.mp4", "data/annotated/data/cam/a.mp4/annotated.mp4", "data/annotated/x.mp4"):
        touch(tmp_path / name)
    (tmp_path / "link").symlink_to("data/annotated")
    assert names(find_videos(["data"], Path("data/annotated"))) == ["data/cam/a.mp4"]
    assert names(find_videos(["data"], Path("link"))) == ["data/cam/a.mp4"], "by any path to it"
    assert names(find_videos(["data/**/*.mp4"], tmp_path / "data/annotated")) == ["a.mp4"]
    assert names(find_videos(["data/annotated/x.mp4"], Path("data/annotated"))) == ["x.mp4"], "unless named itself"
    assert len(find_videos(["data"])) == 3


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


def log_lines(stderr: str, name: str) -> list[str]:
    """The coordinator's lines that name `name`."""
    return [line for line in stderr.splitlines() if name in line]


def replace_with_video(path: Path, frames: int) -> None:
    """Another video put in `path`'s place, as a copy tool would (a new file renamed over it)."""
    fresh = make_video(path.with_name(f".new-{path.name}"), frames=frames)
    os.replace(fresh, path)


@pytest.mark.system
def test_files_deleted_replaced_or_changed_during_a_run_fail_alone_and_the_rest_goes_on(tmp_path):
    root = tmp_path / "archive"
    root.mkdir()
    for name, frames in (("a", 40), ("b", 40), ("c", 6), ("d", 6), ("e", 6), ("f", 6)):
        make_video(root / f"{name}.mp4", frames=frames)
    out = tmp_path / "out"
    worker_log = out / "logs" / "worker-0.log"
    process = popen_cli("annotate", str(root), "--out", str(out), *MODELS, "--workers", "1", "--retries", "1")
    try:
        in_flight = lambda name: worker_log.exists() and f"streaming ({root / name})" in worker_log.read_text()  # noqa: E731
        wait_until(lambda: in_flight("a.mp4"), timeout=180, what="a.mp4 in flight")
        with open(root / "a.mp4", "ab") as handle:  # in flight: grows (a copy still being written)
            handle.write(b"\x00" * 100)
        grown = (root / "a.mp4").stat().st_size
        (root / "c.mp4").unlink()  # queued: deleted
        replace_with_video(root / "d.mp4", frames=4)  # queued: another video in its place
        os.truncate(root / "e.mp4", 1500)  # queued: cut short
        wait_until(lambda: in_flight("b.mp4"), timeout=180, every=0.05, what="b.mp4 in flight")
        (root / "b.mp4").unlink()  # in flight: deleted
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == EXIT_FAILURE, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    done = manifest(out)
    assert {name: (line["status"], line["frames"], line["attempts"]) for name, line in done.items()} == {
        "archive/a.mp4": ("done", 40, 2),  # changed in flight: read again
        "archive/b.mp4": ("failed", 40, 1),  # deleted in flight: its export would match no file; not tried again
        "archive/c.mp4": ("failed", 0, 1),  # gone: not tried again
        "archive/d.mp4": ("done", 4, 1),  # annotated as it was when its turn came
        "archive/e.mp4": ("failed", 0, 2),
        "archive/f.mp4": ("done", 6, 1)}
    assert done["archive/a.mp4"]["size"] == grown and done["archive/d.mp4"]["size"] == (root / "d.mp4").stat().st_size
    assert annotations(out, "archive/a.mp4") == 40 and annotations(out, "archive/d.mp4") == 4
    changed = r"a\.mp4 failed \(.*a\.mp4: changed while it was annotated \(\d+ -> \d+ bytes, modified\)\), trying again"
    assert re.search(changed, stderr), stderr
    [b_line] = log_lines(stderr, "b.mp4")
    assert " ERROR " in b_line and b_line.endswith("b.mp4: deleted while it was annotated"), b_line
    [c_line] = log_lines(stderr, "c.mp4")
    assert " ERROR " in c_line and c_line.endswith("c.mp4: no such file (deleted since the run found it)"), c_line
    assert "annotate done: 3 annotated, 0 skipped (done before), 3 failed" in stderr

    again = run_cli("annotate", str(root), "--out", str(out), *MODELS, "--workers", "1", "--retries", "0")
    assert "4 videos, 3 done before, 1 to do" in again.stderr, again.stderr  # b and c are gone; e failed again
    assert "e.mp4 failed: " in the_error(again, EXIT_FAILURE)


def record(name: str, **fields) -> str:
    line = {"input": f"/somewhere/{name}", "output": name, "size": 1, "mtime": 1.0, "status": "done", "frames": 1,
            "seconds": 1.0, "attempts": 1, "error": None}
    return json.dumps({**line, **fields})


def test_the_manifest_reader_survives_any_damage_and_keeps_every_whole_record(tmp_path, caplog):
    from streamer.tools.annotate.manifest import Manifest

    lines = [
        record("a").encode(),
        record("b").encode()[:30] + record("c").encode(),  # an older streamer glued c onto b's cut-off line
        b'{"input": "caf\xe9", "output": "d"}',  # Latin-1
        record("e", output=["e"]).encode(),  # a field of the wrong type (unhashable as well)
        record("f", size="big").encode(),
        record("g", frames=True).encode(),
        b"\x00" * 64 + record("h").encode(),  # NULs where a crash left a hole
        b"[" * 100_000,  # too deep for the parser
        b"9" * 5_000,  # too long a number for int()
        record("i", added_later="kept").encode(),  # a field a newer streamer may add
        record("j").encode()[:20],  # the last line, cut off by a kill
    ]
    (tmp_path / "manifest.jsonl").write_bytes(b"\n".join(lines))
    with caplog.at_level("WARNING"):
        read = Manifest(tmp_path)
    assert sorted(read.latest) == ["a", "c", "h", "i"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "9 damaged lines skipped (lines 2, 3, 4, 5, 6 and 4 more;" in warnings[0], warnings


@pytest.mark.system
def test_a_damaged_manifest_loses_no_finished_video_and_a_new_record_starts_on_a_fresh_line(tmp_path, archive):
    out = tmp_path / "out"
    args = ("annotate", str(archive), "--out", str(out), *MODELS, "--workers", "2")
    assert run_cli(*args).returncode == 0
    a, b, c = (out / "manifest.jsonl").read_bytes().splitlines()
    by_name = {json.loads(line)["output"]: line for line in (a, b, c)}
    whole_a, whole_c = by_name["archive/a.mp4"], by_name["archive/day2/c.mp4"]
    cut_b = by_name["archive/day2/b.mp4"][:40]  # b's line cut off by a kill: b is done again
    (out / "manifest.jsonl").write_bytes(b"\n".join([
        whole_a, b"\xe9t\xe9 " + b"\x00" * 8, record("archive/a.mp4", size="6").encode(), b"[" * 50_000, whole_c, cut_b]))

    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert "3 videos, 2 done before, 1 to do" in second.stderr, second.stderr
    [warning] = [line for line in second.stderr.splitlines() if " WARNING " in line and "manifest.jsonl" in line]
    assert "4 damaged lines skipped (lines 2, 3, 4, 6;" in warning, warning
    assert "Traceback" not in second.stderr and "internal error" not in second.stderr
    last = (out / "manifest.jsonl").read_bytes().splitlines()
    assert last[-2] == cut_b and json.loads(last[-1])["output"] == "archive/day2/b.mp4", "b's new record on a line of its own"

    third = run_cli(*args)
    assert third.returncode == 0 and "3 videos, 3 done before, 0 to do" in third.stderr, third.stderr


@pytest.mark.system
def test_a_second_run_on_the_same_out_is_refused_naming_the_first_ones_pid(tmp_path, archive):
    make_video(archive / "long.mp4", frames=60)
    out = tmp_path / "out"
    first = popen_cli("annotate", str(archive), "--out", str(out), *MODELS, "--workers", "1")
    try:
        log = out / "logs" / "worker-0.log"
        wait_until(lambda: log.exists() and "first frame read" in log.read_text(), timeout=180, what="a video in flight")
        second = run_cli("annotate", str(archive), "--out", str(out), *MODELS, "--workers", "1")
        _, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    message = the_error(second, 73)
    assert message == (f"{out}: the annotation output is being written by another streamer (PID {first.pid}); "
                       "stop it, or choose another output")
    assert "videos" not in second.stderr, "refused before it read anything there"
    assert first.returncode == 0, stderr
    done = manifest(out)
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 4, "each video recorded once"
    assert {name: (line["frames"], annotations(out, name)) for name, line in done.items()} == {
        "archive/a.mp4": (6, 6), "archive/day2/b.mp4": (8, 8), "archive/day2/c.mp4": (5, 5), "archive/long.mp4": (60, 60)}


@pytest.mark.system
def test_names_that_are_not_utf8_or_hold_a_newline_are_annotated_and_logged_on_one_line(tmp_path):
    root = os.fsencode(tmp_path / "archive")
    names = [b"d\xe9j\xe0/caf\xe9.mp4", b"\xff.mp4", b"a\nb.mp4", b"\x1b[31mred.mp4", b"plain.mp4"]
    for name in names:
        os.makedirs(os.path.dirname(root + b"/" + name), exist_ok=True)
        make_video(Path(os.fsdecode(root + b"/" + name)), frames=4)
    out = tmp_path / "out"
    args = ("annotate", os.fsdecode(root), "--out", str(out), *MODELS, "--workers", "2", "--video")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert {name: line["status"] for name, line in manifest(out).items()} == {os.fsdecode(b"archive/" + n): "done" for n in names}
    for name in names:
        assert annotations(out, os.fsdecode(b"archive/" + name)) == 4
        assert os.path.isfile(os.fsencode(out) + b"/archive/" + name + b"/panoptic.json"), "its folder under the same bytes"
        assert os.path.getsize(os.fsencode(out) + b"/archive/" + name + b"/annotated.mp4") > 0
    logs = result.stderr + "".join(path.read_text(errors="replace") for path in (out / "logs").iterdir())
    assert "Logging error" not in logs and "Traceback" not in logs and "\x1b" not in logs, logs
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ", line) for line in result.stderr.splitlines()), \
        "one name, one line: no line forged"
    for shown in (r"$'archive/d\xe9j\xe0/caf\xe9.mp4'", r"$'archive/\xff.mp4'", r"$'archive/a\nb.mp4'", r"$'archive/\x1b[31mred.mp4'"):
        assert f"annotate: {shown}: 4 frames in " in result.stderr, (shown, result.stderr)
    again = run_cli(*args)
    assert "5 videos, 5 done before, 0 to do" in again.stderr, again.stderr


@pytest.mark.system
def test_max_frames_annotates_the_first_frames_as_partial_and_a_run_without_it_finishes_them(tmp_path, archive):
    out = tmp_path / "out"
    args = ("annotate", str(archive), "--out", str(out), *MODELS, "--workers", "2")
    limited = run_cli(*args, "--set", "runtime.max_frames=6")
    assert limited.returncode == 0, limited.stderr
    assert "(runtime.max_frames 6: the first 6 frames of each, recorded partial)" in limited.stderr
    assert {name: (line["status"], line["frames"], annotations(out, name)) for name, line in manifest(out).items()} == {
        "archive/a.mp4": ("partial", 6, 6),  # 6 frames read, the limit: whether more follow is not known
        "archive/day2/b.mp4": ("partial", 6, 6), "archive/day2/c.mp4": ("done", 5, 5)}
    assert "annotate done: 3 annotated (2 partial), 0 skipped" in limited.stderr

    assert "3 videos, 3 done before, 0 to do" in run_cli(*args, "--set", "runtime.max_frames=5").stderr, "enough for a lower limit"
    higher = run_cli(*args, "--set", "runtime.max_frames=7")
    assert "3 videos, 1 done before, 2 to do" in higher.stderr, higher.stderr
    assert {name: (line["status"], line["frames"]) for name, line in manifest(out).items()} == {
        "archive/a.mp4": ("done", 6), "archive/day2/b.mp4": ("partial", 7), "archive/day2/c.mp4": ("done", 5)}, "a ended before 7"
    whole = run_cli(*args)
    assert whole.returncode == 0 and "3 videos, 2 done before, 1 to do" in whole.stderr, whole.stderr
    assert {name: (line["status"], line["frames"], annotations(out, name)) for name, line in manifest(out).items()} == {
        "archive/a.mp4": ("done", 6, 6), "archive/day2/b.mp4": ("done", 8, 8), "archive/day2/c.mp4": ("done", 5, 5)}


def descendants(pid: int) -> set[int]:
    """The processes below `pid`, children of children included."""
    found: set[int] = set()
    try:
        children = {int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()}
    except OSError:  # gone meanwhile
        return found
    for child in children:
        found |= {child} | descendants(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def stopped_by(tmp_path, stop: Callable[[subprocess.Popen], None], *args: str) -> tuple[subprocess.Popen, str, Path]:
    """A run of two 40-frame videos through one worker (`args`: the engine's flags), stopped by
    `stop(process)` once the first is in flight; (the process, its stderr, OUT). Every process it
    started is gone soon after."""
    root = tmp_path / "in"
    root.mkdir()
    for name in ("a", "b"):
        make_video(root / f"{name}.mp4", frames=40)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "streamer", "annotate", str(root), "--out", str(out), *MODELS,
                                "--workers", "1", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=cli_env(), start_new_session=True)  # its own process group, as a shell's job
    try:
        wait_until(lambda: any((out / "in").glob("*.mp4/panoptic/*.png")), timeout=240, what="a video in flight")
        started = descendants(process.pid)
        assert started, "its workers"
        stop(process)
        _, stderr = process.communicate(timeout=120)
        wait_until(lambda: not any(alive(pid) for pid in started), timeout=15, what="every process it started gone")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    return process, stderr, out


@pytest.mark.system
@pytest.mark.parametrize("name, stop, code", [
    ("SIGINT", lambda process: os.killpg(process.pid, signal.SIGINT), 130),  # Ctrl-C: the terminal signals the whole job
    ("SIGTERM", lambda process: process.send_signal(signal.SIGTERM), 143),
])
def test_a_stop_signal_stops_the_workers_at_once_and_exits_as_a_shell_expects(tmp_path, name, stop, code):
    process, stderr, out = stopped_by(tmp_path, stop)
    assert process.returncode == code, stderr
    [line] = [line for line in stderr.splitlines() if " WARNING " in line and "stopped" in line]
    assert line.endswith(f"annotate: stopped by {name}: the videos in flight are annotated again next time")
    assert "Traceback" not in stderr and "leaked semaphore" not in stderr and "ERROR" not in stderr, stderr
    rerun = run_cli("annotate", str(out.parent / "in"), "--out", str(out), *MODELS, "--workers", "1")
    assert rerun.returncode == 0 and {line["frames"] for line in manifest(out).values()} == {40}, rerun.stderr


@pytest.mark.system
def test_link_loops_links_to_nothing_and_fifos_named_as_videos_fail_alone(tmp_path):
    root = tmp_path / "archive"
    root.mkdir()
    make_video(root / "ok.mp4", frames=4)
    (root / "loop.mp4").symlink_to("loop.mp4")
    (root / "dangling.mp4").symlink_to("nowhere.mp4")
    os.mkfifo(root / "fifo.mp4")  # opening it would wait for a writer forever
    out = tmp_path / "out"
    result = run_cli("annotate", str(root), "--out", str(out), *MODELS, "--workers", "1", "--retries", "2")
    assert result.returncode == EXIT_FAILURE and "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert "4 videos, 0 done before, 4 to do" in result.stderr, result.stderr
    assert {name: (line["status"], line["attempts"]) for name, line in manifest(out).items()} == {
        "archive/ok.mp4": ("done", 1), "archive/loop.mp4": ("failed", 1), "archive/dangling.mp4": ("failed", 1),
        "archive/fifo.mp4": ("failed", 1)}, "never tried again: another attempt cannot go better"
    for name, why in (("loop.mp4", "cannot be read (Too many levels of symbolic links)"), ("dangling.mp4", "a link to nothing"),
                      ("fifo.mp4", "not a regular file")):
        [line] = log_lines(result.stderr, name)
        assert line.endswith(f"{name}: {why}"), line


def test_a_failure_line_in_the_manifest_never_holds_a_secret(tmp_path):
    """Whatever path a failure took (a worker's exception quotes what it was given), its manifest line
    hides a URL's credentials and query."""
    from streamer.tools.annotate.jobs import Job
    from streamer.tools.annotate.manifest import entry

    job = Job(tmp_path / "clip.mp4", PurePosixPath("clip.mp4"))
    line = entry(job, "failed", 0, 1.0, 1, "OSError: cannot reach rtsp://admin:S3cret@cam/x?token=abc")
    assert "S3cret" not in line.error and "abc" not in line.error and "rtsp://***@cam/x" in line.error
