"""Several sources in one process: one capture thread and one set of outputs each, one fair worker."""
from __future__ import annotations

import json
import re
import time

import pytest
from helpers import LIVE, Daemon, make_video, probe, run_cli, run_in_process, the_error
from rtsp import RtspServer, needs_rtsp


@pytest.mark.parametrize("max_batch", [1, 3])
def test_each_source_gets_its_own_outputs(tmp_path, fast_config, max_batch):
    first = make_video(tmp_path / "a.mp4", frames=6, size=(160, 120))
    second = make_video(tmp_path / "b.mp4", frames=4, size=(128, 96))
    result = run_in_process("run", "-c", str(fast_config), "--source", str(first), "--source", str(second),
                            "--output", str(tmp_path / "out" / "{source}.mp4"), "--export-dir", str(tmp_path / "export"),
                            "--set", f"runtime.max_batch={max_batch}")
    assert result.returncode == 0, result.stderr
    assert (probe(tmp_path / "out" / "cam0.mp4")["frames"], probe(tmp_path / "out" / "cam1.mp4")["frames"]) == (6, 4)
    assert probe(tmp_path / "out" / "cam1.mp4")["width"] == 128
    for name, frames in (("export-cam0", 6), ("export-cam1", 4)):
        coco = json.loads((tmp_path / name / "panoptic.json").read_text())
        assert len(coco["annotations"]) == frames
        ids = [a["image_id"] for a in coco["annotations"]]
        assert ids == sorted(ids)  # each source's frames in order, batched or not


@pytest.mark.system
def test_sources_list_in_config_shares_the_source_options(tmp_path, fast_config):
    video = make_video(tmp_path / "a.mp4", frames=3)
    result = run_cli("check-config", "-c", str(fast_config), "--set", "source.queue_size=2",
                     "--set", f"sources=[{{uri: '{video}', id: door}}, {{uri: '{video}', id: yard, queue_size: 7}}]")
    assert result.returncode == 0, result.stderr
    assert re.search(r"id: door\n(.*\n)*?  queue_size: 2", result.stdout)
    assert re.search(r"id: yard\n(.*\n)*?  queue_size: 7", result.stdout)
    duplicate = run_cli("check-config", "-c", str(fast_config), "--set", "sources=[{uri: a, id: x}, {uri: b, id: x}]")
    assert "sources: every source needs its own id, repeated: x" in the_error(duplicate, 78)


@pytest.mark.system
@needs_rtsp
def test_a_killed_source_does_not_slow_the_other(tmp_path, fast_config):
    video = make_video(tmp_path / "in.mp4", frames=50, size=(96, 64), fps=10)
    with RtspServer(video) as steady, RtspServer(video) as doomed:
        daemon = Daemon("-c", str(fast_config), "--source", steady.url, "--source", doomed.url, *LIVE,
                        "--output", str(tmp_path / "{source}.mp4"))
        try:
            daemon.wait_for(r"cam0: connecting -> streaming")
            daemon.wait_for(r"cam1: connecting -> streaming")
            time.sleep(2.0)
            before = time.monotonic()
            doomed.kill()
            daemon.wait_for(r"cam1: streaming -> reconnecting", after=before)
            time.sleep(6.0)
        finally:
            assert daemon.terminate() == 0, daemon.text()
    # While cam1 was away, cam0 kept its full frame rate (10 fps): the model is faster than that here.
    # (The first frames are left out: the first inference warms up the models.)
    times = probe(tmp_path / "cam0.mp4")["times"]
    gaps = [b - a for a, b in zip(times, times[1:])][10:]
    assert len(times) >= 60 and max(gaps) < 0.5, (len(times), max(gaps))
