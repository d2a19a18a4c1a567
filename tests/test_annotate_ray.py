"""`streamer annotate --engine ray` on a real local Ray instance (the command starts it: 2 CPUs,
one worker of one CPU, so one slot stays free for Ray's own tasks; no dashboard, no usage stats):
the same annotations as the local engine, byte for byte."""
from __future__ import annotations

import json
import os
import re
import signal

import pytest
from helpers import make_video, popen_cli, run_cli, wait_until
from test_annotate import MODELS, manifest, processes

pytest.importorskip("ray", reason="needs Ray: pip install 'streamer[ray]' (the test extra installs it)")


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
    root = tmp_path / "in"
    root.mkdir()
    for name in ("a", "b"):
        make_video(root / f"{name}.mp4", frames=30)
    out = tmp_path / "out"
    process = popen_cli("annotate", str(root), "--out", str(out), *MODELS, "--workers", "1", "--engine", "ray")
    try:
        wait_until(lambda: any((out / "in").glob("*.mp4/panoptic/*.png")), timeout=180, what="a video in flight")
        actors = processes(b"ray::Annotator.annotate")  # Ray names a worker process after the task it runs
        assert len(actors) == 1, actors
        os.kill(actors[0], signal.SIGKILL)
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert re.search(r"in/a.mp4 failed \(.*the worker process died\), trying again", stderr), stderr
    done = manifest(out)
    assert {name: (line["status"], line["frames"]) for name, line in done.items()} == {"in/a.mp4": ("done", 30), "in/b.mp4": ("done", 30)}
    assert sorted(line["attempts"] for line in done.values()) == [1, 2]
