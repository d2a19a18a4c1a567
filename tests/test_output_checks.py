"""Every output is checked at start-up, before any model loads: what cannot be written is refused in
one line naming the path and what to do, exit 73 (EX_CANTCREAT). Real mounts for the read-only and
the full disk. The runs are in this process (quicker); exit 73 from a fresh one is checked once."""
from __future__ import annotations

import pytest
from helpers import run_cli, run_in_process, the_error, tmpfs

EXIT_CANTCREAT = 73


def refused(fast_config, small_video, *args: str) -> str:
    result = run_in_process("run", "-c", str(fast_config), "--source", str(small_video), "--max-frames", "1", *args)
    message = the_error(result, EXIT_CANTCREAT)
    assert "models ready" not in result.stderr, "refused before any model loads"
    return message


@pytest.mark.system
def test_a_read_only_mount_is_refused_for_the_video_and_the_export(fast_config, small_video, tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        message = refused(fast_config, small_video, "--output", str(ro / "out.mp4"))
        assert message == f"{ro}: cannot write the video there (Read-only file system); it is a read-only file system: " \
                          "choose a writable folder"
        message = refused(fast_config, small_video, "--export-dir", str(ro / "export"))
        assert message.startswith(f"{ro / 'export'}: cannot write the export there (Read-only file system)")


@pytest.mark.system
def test_a_full_disk_is_refused_before_anything_runs(fast_config, small_video, tmp_path):
    with tmpfs(tmp_path / "full", "size=48k") as full:
        message = refused(fast_config, small_video, "--output", str(full / "out.mp4"))
        assert message == f"{full}: only 0.0 MB free, less than output.min_free_mb (100 MB) for the video; " \
                          "free some space or choose another disk"
        assert [p.name for p in full.iterdir()] == [".out.mp4.lock"]  # the output's lock, nothing else
        # a fresh process says the same, with the documented code
        result = run_cli("run", "-c", str(fast_config), "--source", str(small_video), "--export-dir", str(full / "export"))
        assert the_error(result, EXIT_CANTCREAT).startswith(f"{full / 'export'}: only 0.0 MB free, less than output.min_free_mb (100 MB) for the export")


@pytest.mark.parametrize("case", ["folder-named-as-the-video", "file-where-a-folder-is-needed", "not-mp4", "no-suffix"])
def test_outputs_that_cannot_be_what_the_user_named(fast_config, small_video, tmp_path, case):
    if case == "folder-named-as-the-video":
        target = tmp_path / "out.mp4"
        target.mkdir()
        expected = f"{target}: is a folder; name the video file inside it, e.g. {target / 'out.mp4'}"
    elif case == "file-where-a-folder-is-needed":
        (tmp_path / "notes").write_text("a file")
        target = tmp_path / "notes" / "out.mp4"
        expected = f"{tmp_path / 'notes'}: is a file, but the video needs a folder there; choose another path"
    elif case == "not-mp4":
        target = tmp_path / "out.avi"
        expected = f"{target}: streamer records H.264 in MP4; name the video .mp4"
    else:  # a file source makes one video: a name without suffix is no video name
        target = tmp_path / "recording"
        expected = f"{target}: streamer records H.264 in MP4; name the video .mp4, or give a folder for segments of a live source"
    assert refused(fast_config, small_video, "--output", str(target)) == expected


def test_missing_folders_are_made(fast_config, small_video, tmp_path):
    video = tmp_path / "new" / "deeper" / "out.mp4"
    result = run_in_process("run", "-c", str(fast_config), "--source", str(small_video), "--max-frames", "1",
                            "--output", str(video), "--export-dir", str(tmp_path / "more" / "export"))
    assert result.returncode == 0, result.stderr
    assert video.is_file() and (tmp_path / "more" / "export" / "panoptic.json").is_file()


def test_the_source_video_is_never_recorded_over(fast_config, small_video, tmp_path):
    link = tmp_path / "same.mp4"
    link.symlink_to(small_video)
    before = small_video.read_bytes()
    for name in (small_video, link):
        message = refused(fast_config, small_video, "--output", str(name))
        assert message == f"{name}: is the source video itself, and recording would replace it; choose another name"
    assert small_video.read_bytes() == before


def test_a_home_folder_written_as_tilde_is_the_home_folder(fast_config, small_video, tmp_path, monkeypatch):
    """As a systemd unit or a config file writes it: no shell expands the ~ there."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    result = run_in_process("run", "-c", str(fast_config), "--source", str(small_video), "--max-frames", "1",
                            "--output", "~/videos/out.mp4")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "home" / "videos" / "out.mp4").is_file()
    assert not (tmp_path / "~").exists()
