"""One output, one writer: a second streamer on the same output is refused at start-up (exit 73,
naming the first one's PID) before it touches anything there; the first one goes on untouched. The
lock is the kernel's, so a killed run leaves none behind. Two real daemon processes."""
from __future__ import annotations

import os
import signal
import time

from helpers import RECORDER, Daemon, probe, run_cli, run_in_process, the_error

EXIT_CANTCREAT = 73


def test_a_second_run_on_the_same_output_is_refused_and_the_first_goes_on(tmp_path):
    segments = tmp_path / "rec"
    first = Daemon(*RECORDER, "--output", str(segments), "--set", "output.segment_seconds=60")
    try:
        first.wait_processed(2, timeout=120)
        partial = next(segments.glob("*.mp4.partial"))
        size = partial.stat().st_size
        second = run_cli("run", *RECORDER, "--output", str(segments), "--set", "output.segment_seconds=60", "--max-frames", "2")
        message = the_error(second, EXIT_CANTCREAT)
        assert message == (f"{segments}: the video is being written by another streamer (PID {first.process.pid}); "
                           "stop it, or choose another output")
        assert partial.exists(), "the live recording was not taken for a leftover"
        time.sleep(1.5)
        assert partial.stat().st_size > size, "and it keeps growing"
        os.kill(first.process.pid, signal.SIGTERM)
        assert first.finish(timeout=60) == 0, first.text()
    finally:
        first.terminate()
    assert not list(segments.glob("*.partial")) and probe(next(segments.glob("*.mp4")))["frames"] > 2

    # the same for one file and for an export folder, refused before any model loads
    export = tmp_path / "export"
    holder = Daemon(*RECORDER, "--output", str(tmp_path / "one.mp4"), "--export-dir", str(export), "--set", "output.segment_seconds=0")
    try:
        holder.wait_processed(1, timeout=120)
        for flag, target, what in (("--output", tmp_path / "one.mp4", "video"), ("--export-dir", export, "export")):
            refused = run_in_process("run", *RECORDER, flag, str(target), "--max-frames", "1")
            assert the_error(refused, EXIT_CANTCREAT).startswith(f"{target}: the {what} is being written by another "
                                                                 f"streamer (PID {holder.process.pid})")
            assert "models ready" not in refused.stderr
        holder.process.kill()  # the kernel drops the lock with the process: the next run needs no cleaning up
        holder.finish()
    finally:
        holder.terminate()
    again = run_in_process("run", *RECORDER, "--output", str(tmp_path / "one.mp4"), "--set", "output.segment_seconds=0",
                           "--max-frames", "2")
    assert again.returncode == 0, again.stderr
    assert "recovered" in again.stderr
