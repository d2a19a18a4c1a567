"""Writing and recovery never lose footage, on real tmpfs mounts: a disk that fills mid-run keeps what
was written and says so (exit 74); a leftover is removed only once its copy is verified and durable,
and stays untouched while the copy cannot be written; retention makes room before a refusal."""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from helpers import DEMO_MODELS, probe, readable_frames, run_cli, run_in_process, the_error, tmpfs

from streamer.outputs.recovery import recover_partial

EXIT_CANTCREAT, EXIT_IOERR = 73, 74

# The demo models on a 320x192 synthetic street: about 3 KB a frame, so a 48 KiB disk fills in seconds.
STREET = [
    "--source", "synthetic:street?seed=3&size=320x192&fps=8", *DEMO_MODELS,
    "--set", "models.semantic.input_size=[160,96]", "--set", "models.instance.min_size=96",
    "--set", "models.instance.max_size=160", "--set", "runtime.device=cpu", "--set", "runtime.torch_threads=1",
]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def remount(folder: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)


@pytest.mark.system
def test_a_disk_that_fills_keeps_every_frame_until_there_is_room_to_recover(tmp_path):
    with tmpfs(tmp_path / "disk", "size=48k") as disk:
        video = disk / "out.mp4"
        leftover = disk / "out.mp4.partial"
        # the disk fills mid-run: one line naming the file and the reason, what was written stays
        first = run_cli("run", *STREET, "--output", str(video), "--set", "output.min_free_mb=0", "--max-frames", "100")
        message = the_error(first, EXIT_IOERR)
        assert message.startswith(f"{video}: No space left on device while ")
        assert "kept in out.mp4.partial, and the next start recovers it" in message
        held = readable_frames(leftover)
        assert held > 5
        before = sha(leftover)

        # started again on the still-full disk: the copy cannot be written, so the leftover stays as it was
        again = run_in_process("run", *STREET, "--output", str(video), "--set", "output.min_free_mb=0", "--max-frames", "5")
        message = the_error(again, EXIT_CANTCREAT)
        assert message.startswith(f"{leftover}, left by a run that did not finish, could not be recovered "
                                  f"(No space left on device writing {disk / 'out.recovered.mp4.recovering'}); it is kept untouched")
        assert sha(leftover) == before
        assert sorted(p.name for p in disk.iterdir()) == [".out.mp4.lock", "out.mp4.partial"]  # no empty copy, no scratch

        # with room, the next start recovers every frame, then records
        remount(disk, "size=2m")
        third = run_in_process("run", *STREET, "--output", str(video), "--max-frames", "3", "--set", "output.min_free_mb=0.5")
        assert third.returncode == 0, third.stderr
        recovered = probe(disk / "out.recovered.mp4")["frames"]
        assert recovered >= held  # a decoder stopped by the cut-off fragment drops the frames it still held
        assert f"recovered {disk / 'out.recovered.mp4'}: {recovered} frames from out.mp4.partial" in third.stderr
        assert not leftover.exists()
        assert probe(video)["frames"] == 3


@pytest.mark.system
def test_a_leftover_on_a_read_only_disk_stays_untouched(tmp_path):
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        # a recording cut off mid-run, as a kill leaves it
        recorded = run_in_process("run", *STREET, "--output", str(disk / "cam.mp4"), "--max-frames", "12",
                                  "--set", "output.min_free_mb=0")
        assert recorded.returncode == 0, recorded.stderr
        leftover = disk / "cam.mp4.partial"
        (disk / "cam.mp4").rename(leftover)
        before = sha(leftover)
        remount(disk, "ro")
        failure = recover_partial(leftover)
        assert failure == f"{leftover}, left by a run that did not finish, could not be recovered (Read-only file system " \
                          f"writing {disk / 'cam.mp4.recovering'}); it is kept untouched"
        assert sha(leftover) == before
        remount(disk, "rw")
        assert recover_partial(leftover) is None
        assert probe(disk / "cam.mp4")["frames"] == 12 and not leftover.exists()


@pytest.mark.system
def test_a_full_export_keeps_the_frames_written_and_says_how_to_finish(tmp_path):
    with tmpfs(tmp_path / "disk", "size=96k") as disk:
        export = disk / "export"
        result = run_in_process("run", *STREET, "--export-dir", str(export), "--set", "output.export_images=true",
                                "--set", "output.min_free_mb=0", "--max-frames", "100")
        message = the_error(result, EXIT_IOERR)
        assert message.startswith(f"{export}/")
        assert "No space left on device while exporting; the " in message
        assert message.endswith(f"free some space, then `streamer export-json {export}` writes their panoptic.json")
        lines = (export / "segments.jsonl").read_text().splitlines()
        assert f"the {len(lines)} frames exported before are kept" in message
        assert not list(export.rglob(".*.tmp"))  # a cut-off write leaves no temporary file
        remount(disk, "size=2m")
        finished = run_cli("export-json", str(export))
        assert finished.returncode == 0, finished.stderr
        assert (export / "panoptic.json").is_file()


@pytest.mark.system
@pytest.mark.parametrize("retention", ["output.keep_hours=1000", None])
def test_retention_makes_room_for_new_segments_where_configured(tmp_path, retention):
    with tmpfs(tmp_path / "disk", "size=160k") as disk:
        segments = disk / "rec"
        args = ["run", *STREET, "--output", str(segments), "--set", "output.segment_seconds=0.5",
                "--set", "output.min_free_mb=0.06", "--max-frames", "64"]
        if retention is None:  # no retention: the run stops, in one line, when a new segment finds no room
            message = the_error(run_in_process(*args), EXIT_CANTCREAT)
            assert message.startswith(f"{segments}: only ")
            assert message.endswith("less than output.min_free_mb (0.06 MB) for the video segments; free some space or choose another disk")
            return
        result = run_in_process(*args, "--set", retention)
        assert result.returncode == 0, result.stderr
        assert "retention: removed" in result.stderr and "to keep output.min_free_mb = 0.06 MB free" in result.stderr
        kept = sorted(segments.glob("*.mp4"))
        assert 0 < len(kept) < 16  # 64 frames at 8 fps in 0.5 s segments made 16
        assert sum(probe(p)["frames"] for p in kept) == 4 * len(kept)  # the newest, whole


def test_a_copy_a_killed_recovery_left_is_removed_and_the_leftover_recovered_again(tmp_path):
    video = tmp_path / "cam.mp4"
    first = run_in_process("run", *STREET, "--output", str(video), "--max-frames", "6", "--set", "output.min_free_mb=0")
    assert first.returncode == 0, first.stderr
    video.rename(tmp_path / "cam.mp4.partial")  # as a kill leaves a recording
    scratch = tmp_path / "cam.recovered.mp4.recovering"
    scratch.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 500)  # a recovery copy cut off by a kill
    again = run_in_process("run", *STREET, "--output", str(video), "--max-frames", "2", "--set", "output.min_free_mb=0")
    assert again.returncode == 0, again.stderr
    assert "removed cam.recovered.mp4.recovering, an unfinished recovery copy" in again.stderr
    assert not scratch.exists() and not (tmp_path / "cam.mp4.partial").exists()
    assert probe(tmp_path / "cam.recovered.mp4")["frames"] == 6 and probe(video)["frames"] == 2
