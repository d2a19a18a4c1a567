"""One output, one writer: a second streamer on the same output is refused at start-up (exit 73,
naming the first one's PID) before it touches anything there; the first one goes on untouched. The
lock is the kernel's, so a killed run leaves none behind. Two real daemon processes."""
from __future__ import annotations

import time

import pytest
from helpers import RECORDER, Daemon, run_cli, run_in_process, the_error

pytestmark = pytest.mark.system  # every test here starts a process or a server

EXIT_CANTCREAT = 73


def test_a_second_run_on_the_same_output_is_refused_and_the_first_goes_on(tmp_path):
    segments, export = tmp_path / "rec", tmp_path / "export"
    first = Daemon(*RECORDER, "--output", str(segments), "--export-dir", str(export), "--set", "output.segment_seconds=60")
    try:
        first.wait_processed(2, timeout=120)
        partial = next(segments.glob("*.mp4.partial"))
        size = partial.stat().st_size
        second = run_cli("run", *RECORDER, "--output", str(segments), "--set", "output.segment_seconds=60", "--max-frames", "2")
        message = the_error(second, EXIT_CANTCREAT)
        assert message == (f"{segments}: the video is being written by another streamer (PID {first.process.pid}); "
                           "stop it, or choose another output")
        assert partial.exists(), "the live recording was not taken for a leftover"
        refused = run_in_process("run", *RECORDER, "--export-dir", str(export), "--max-frames", "1")
        assert the_error(refused, EXIT_CANTCREAT).startswith(f"{export}: the export is being written by another streamer "
                                                             f"(PID {first.process.pid})")
        assert "models ready" not in refused.stderr
        time.sleep(1.0)
        assert partial.stat().st_size > size, "the first run goes on"
        first.process.kill()  # the kernel drops the lock with the process: nothing to clean up by hand
        first.finish()
    finally:
        first.terminate()
    again = run_in_process("run", *RECORDER, "--output", str(segments), "--set", "output.segment_seconds=60", "--max-frames", "2")
    assert again.returncode == 0, again.stderr
    assert f"recovered {partial.with_name(partial.name.removesuffix('.partial'))}" in again.stderr
