"""`streamer annotate --engine ray` on a real local Ray instance (the command starts it: 2 CPUs,
one worker of one CPU, so one slot stays free for Ray's own tasks; no dashboard, no usage stats):
the same annotations as the local engine, byte for byte."""
from __future__ import annotations

import json
import os
import signal

import pytest
from helpers import make_video, run_cli, wait_until
from test_annotate import MODELS, manifest, processes, stopped_by, survives_a_dead_worker

pytest.importorskip("ray", reason="needs Ray: pip install 'streamer[ray]' (the test extra installs it)")
pytestmark = pytest.mark.system  # every test here starts a Ray instance through the CLI


def annotations(out, name: str) -> tuple[list, dict[str, bytes]]:
    coco = json.loads((out / name / "panoptic.json").read_text())
    pngs = {path.name: path.read_bytes() for path in sorted((out / name / "panoptic").glob("*.png"))}
    return coco["annotations"], pngs


def test_ray_gives_the_local_engines_annotations(tmp_path):
    root = tmp_path / "archive"
    root.mkdir()
    make_video(root / "a.mp4", frames=6)
    make_video(root / "b.mp4", frames=4, size=(192, 108))
    outputs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        result = run_cli("annotate", str(root), "--out", str(out), *MODELS, "--workers", "1", "--engine", engine, timeout=600)
        assert result.returncode == 0, result.stderr
        assert {name: line["frames"] for name, line in manifest(out).items()} == {"archive/a.mp4": 6, "archive/b.mp4": 4}
        outputs[engine] = {name: annotations(out, name) for name in ("archive/a.mp4", "archive/b.mp4")}
    assert outputs["ray"] == outputs["local"]


def test_an_actor_that_dies_is_replaced_and_its_video_tried_again(tmp_path):
    def kill(_process, out) -> None:
        wait_until(lambda: any((out / "in").glob("*.mp4/panoptic/*.png")), timeout=180, what="a video in flight")
        actors = processes(b"ray::Annotator.annotate")  # Ray names a worker process after the task it runs
        assert len(actors) == 1, actors
        os.kill(actors[0], signal.SIGKILL)

    survives_a_dead_worker(tmp_path, kill, "--engine", "ray")


def test_sigterm_to_the_coordinator_stops_ray_cleanly_with_143(tmp_path):
    process, stderr, out = stopped_by(tmp_path, lambda process: process.send_signal(signal.SIGTERM), "--engine", "ray")
    assert process.returncode == 143, stderr  # not SIGABRT (-6) with a stack dump
    [line] = [line for line in stderr.splitlines() if "stopped" in line]
    assert line.endswith("annotate: stopped by SIGTERM: the videos in flight are annotated again next time"), stderr
    for sign in ("Traceback", "SystemError", "Aborted", "SIGABRT", "Fatal Python error", "*** ", "ERROR"):
        assert sign not in stderr, stderr
    assert not processes(b"ray::"), "no actor left behind"
