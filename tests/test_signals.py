"""Every signal has a documented, safe meaning, sent for real to a running daemon: SIGHUP (a dropped
ssh session) and SIGTERM stop cleanly with every output finished; SIGQUIT stops at once, outputs
still finished; SIGUSR1 logs the status now; SIGUSR2 is ignored. None leaves a `.partial` or an export
without its panoptic.json."""
from __future__ import annotations

import json
import signal
import time

import pytest
from helpers import RECORDER, Daemon, probe, wait_until

pytestmark = pytest.mark.system  # every test here starts a process or a server


@pytest.mark.parametrize("stop", [signal.SIGHUP, signal.SIGQUIT])
def test_signals_never_lose_the_open_files(tmp_path, stop):
    video, export = tmp_path / "out.mp4", tmp_path / "export"
    interval = 60 if stop == signal.SIGHUP else 0.5  # SIGHUP's run checks that SIGUSR1 does not wait for the interval
    daemon = Daemon(*RECORDER, "--output", str(video), "--export-dir", str(export), "--set", "output.segment_seconds=0",
                    "--set", f"runtime.status_interval_s={interval}")
    try:
        ready = daemon.wait_for(r"ready: models loaded", timeout=120)
        if stop == signal.SIGHUP:
            daemon.process.send_signal(signal.SIGUSR1)
            daemon.wait_for(r"status: ", after=ready, timeout=5)  # at once, not after the 60 s interval
            daemon.process.send_signal(signal.SIGUSR2)
            daemon.wait_for(r"SIGUSR2: ignored", timeout=10)

            def frames_processed() -> bool:  # asked with SIGUSR1, as an operator would
                daemon.process.send_signal(signal.SIGUSR1)
                time.sleep(0.3)
                return daemon.text().count(" 0 processed") < daemon.text().count("status: ")

            wait_until(frames_processed, timeout=60, what="a status line with frames processed")
        else:
            daemon.wait_processed(2, timeout=60)
        daemon.process.send_signal(stop)
        assert daemon.finish(timeout=60) == 0, daemon.text()
    finally:
        daemon.terminate()
    name = signal.Signals(stop).name
    assert (f"{name}: finishing the frames in flight" if stop == signal.SIGHUP else f"{name}: stopping now") in daemon.text()
    assert not list(tmp_path.glob("*.partial"))
    frames = probe(video)["frames"]
    assert frames >= 1
    assert len(json.loads((export / "panoptic.json").read_text())["images"]) == frames
