"""Files are written only where the user named: links planted in or on the way to an output folder
never redirect a write, a folder every user may write (without the sticky bit) is refused, and ids
are names. Real files with planted links; the run is refused in one line (exit 73) or writes past
the link, never through it."""
from __future__ import annotations

import os

import pytest
from helpers import run_in_process, the_error

EXIT_CANTCREAT = 73


@pytest.fixture
def victim(tmp_path):
    """A file someone would like the daemon to overwrite."""
    path = tmp_path / "victim.txt"
    path.write_text("precious")
    return path


def run(fast_config, small_video, *args):
    return run_in_process("run", "-c", str(fast_config), "--source", str(small_video), "--max-frames", "2", *args)


def test_a_linked_export_sub_folder_is_refused(fast_config, small_video, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    export = tmp_path / "export"
    export.mkdir()
    (export / "panoptic").symlink_to(elsewhere, target_is_directory=True)
    message = the_error(run(fast_config, small_video, "--export-dir", str(export)), EXIT_CANTCREAT)
    assert message.startswith(f"{export / 'panoptic'}: is a link, which would send the export elsewhere")
    assert list(elsewhere.iterdir()) == []


def test_planted_temporary_names_are_never_written_through(fast_config, small_video, tmp_path, victim):
    export = tmp_path / "export"
    (export / "panoptic").mkdir(parents=True)
    (export / "panoptic" / ".000000.png.tmp").symlink_to(victim)  # the name the first PNG is written under
    result = run(fast_config, small_video, "--export-dir", str(export))
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious"
    assert (export / "panoptic" / "000000.png").is_file() and not (export / "panoptic" / "000000.png").is_symlink()
    other = tmp_path / "other"
    other.mkdir()
    (other / "segments.jsonl").symlink_to(victim)
    assert the_error(run(fast_config, small_video, "--export-dir", str(other)), EXIT_CANTCREAT).startswith(str(other))
    assert victim.read_text() == "precious"


def test_a_world_writable_output_folder_is_refused(fast_config, small_video, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    message = the_error(run(fast_config, small_video, "--output", str(shared / "out.mp4")), EXIT_CANTCREAT)
    assert message.startswith(f"{shared}: every user may write there (mode 777, no sticky bit)")
    assert list(shared.iterdir()) == []


def test_a_link_another_user_planted_in_a_sticky_folder_is_refused(fast_config, small_video, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("planting a link as another user needs root")
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp
    target = tmp_path / "home-of-someone"
    target.mkdir()
    planted = sticky / "export"
    planted.symlink_to(target, target_is_directory=True)
    os.lchown(planted, 12345, 12345)
    message = the_error(run(fast_config, small_video, "--export-dir", str(planted)), EXIT_CANTCREAT)
    assert message.startswith(f"{planted}: is a link made by another user (uid 12345) in a folder every user may write")
    assert list(target.iterdir()) == []
