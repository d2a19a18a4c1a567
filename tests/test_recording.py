"""Crash-safe recording: SIGKILL at random moments loses at most 2 s, finished segments play end to
end, leftovers are recovered at the next start, unreadable ones moved aside, retention by size/age."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import RECORDER, RECORDER_FPS, Daemon, free_port, make_video, probe, readable_frames, run_in_process, run_summary
from rtsp import RtspServer, needs_rtsp

from streamer.outputs.retention import Catalog, Retention, enforce_retention

FPS = RECORDER_FPS  # the recorder's camera-paced synthetic street
SEGMENT_S = 2
SEGMENT_FRAMES = FPS * SEGMENT_S


TOKEN = "recording-test-token-0123"


def processed_frames(port: int) -> int:
    """Frames the sink has handed to the outputs (/api/status)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["sources"]["cam0"]["processed"]


def files(folder: Path, pattern: str) -> set[Path]:
    return set(folder.glob(pattern))


@pytest.mark.system
def test_sigkill_at_random_moments_loses_at_most_two_seconds_and_the_next_start_recovers(tmp_path):
    out = tmp_path / "rec"
    rng = random.Random(5)
    recovered_expected: dict[Path, int] = {}  # finished name -> frames its partial held
    for round_ in range(5):
        before = files(out, "*.mp4")
        port = free_port()
        daemon = Daemon(*RECORDER, "--output", str(out / "cam.mp4"), "--set", f"output.segment_seconds={SEGMENT_S}",
                        "--set", "server.enabled=true", "--set", f"server.port={port}", "--set", f"server.token={TOKEN}")
        try:
            ready = daemon.wait_for(r"ready: models loaded, first frame read", timeout=120)
            # Last round's leftover was recovered before the models even loaded.
            for name, frames in recovered_expected.items():
                assert not name.with_name(name.name + ".partial").exists()
                assert name.exists(), daemon.text()
                assert probe(name)["frames"] == frames
                before.add(name)
            recovered_expected.clear()
            if round_ == 4:
                time.sleep(3.0)
                daemon.process.send_signal(signal.SIGTERM)
                assert daemon.finish() == 0, daemon.text()
                assert not files(out, "*.partial")
                last_segments = files(out, "*.mp4") - before
                assert last_segments, daemon.text()  # 3 s recorded: at least one segment, closed by SIGTERM
                for segment in last_segments:
                    assert probe(segment)["frames"] > 0
                break
            time.sleep(rng.uniform(0.2, 6.0))
            written = processed_frames(port)  # by the sink, into the encoder, just before the kill
            killed = time.monotonic()
            os.kill(daemon.process.pid, signal.SIGKILL)
            daemon.finish()
        finally:
            if daemon.process.poll() is None:
                daemon.process.kill()
        finished = sorted(files(out, "*.mp4") - before)
        partials = sorted(files(out, "*.mp4.partial"))
        assert len(partials) <= 1, partials
        for segment in finished:  # each plays end to end: every frame decodes, 2 s of them
            info = probe(segment)
            assert info["frames"] == SEGMENT_FRAMES, (segment, info)
            assert re.fullmatch(r"cam-\d{8}T\d{6}Z(-\d+)?\.mp4", segment.name)
        in_partial = readable_frames(partials[0]) if partials else 0
        recorded = len(finished) * SEGMENT_FRAMES + in_partial
        lost_s = (written - recorded) / FPS  # stream time: the frames written that the kill took, whatever the machine's load
        print(f"round {round_}: killed {killed - ready:.2f} s after the first frame, {written} frames written, lost {lost_s:.2f} s "
              f"of them (and {(killed - ready) - recorded / FPS:.2f} s of wall time), partial {in_partial} frames")
        assert lost_s <= 2.0, f"round {round_}: {written} frames written, {recorded} recorded\n{daemon.text()}"
        if partials and in_partial:
            recovered_expected[partials[0].with_name(partials[0].name.removesuffix(".partial"))] = in_partial


@pytest.mark.system
def test_an_unreadable_leftover_is_moved_aside_and_a_single_file_leftover_is_kept_beside(tmp_path):
    out = tmp_path / "rec"
    out.mkdir()
    garbage = out / "cam-20260101T000000Z.mp4.partial"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(3000))
    # A single-file run killed part way, then run again: the old part is kept beside the new video.
    single = tmp_path / "single.mp4"
    daemon = Daemon(*RECORDER, "--output", str(single))
    daemon.wait_processed(1, timeout=120)
    time.sleep(3.0)
    os.kill(daemon.process.pid, signal.SIGKILL)
    daemon.finish()
    left = readable_frames(single.with_name("single.mp4.partial"))
    assert left > 0

    # the next starts run in this process (quicker); the kill above needed a process of its own
    again = run_in_process("run", *RECORDER, "--output", str(single), "--max-frames", "5")
    assert again.returncode == 0, again.stderr
    assert probe(single)["frames"] == 5
    assert probe(tmp_path / "single.recovered.mp4")["frames"] == left
    assert "recovered" in again.stderr

    third = run_in_process("run", *RECORDER, "--output", str(out / "cam.mp4"), "--set", "output.segment_seconds=60",
                           "--max-frames", "3")
    assert third.returncode == 0, third.stderr
    assert not garbage.exists()
    assert (out / "cam-20260101T000000Z.mp4.unreadable").stat().st_size == 3012
    assert "no readable video" in third.stderr


def test_retention_removes_the_oldest_finished_segments_by_size_then_age(tmp_path):
    def segment(stamp: str, size: int, age_h: float) -> Path:
        path = tmp_path / f"cam-{stamp}.mp4"
        path.write_bytes(b"x" * size)
        at = time.time() - age_h * 3600
        os.utime(path, (at, at))
        return path

    old = segment("20260101T000000Z", 100, age_h=30)
    middle = segment("20260101T010000Z", 100, age_h=2)
    new = segment("20260101T020000Z", 100, age_h=1)
    other = tmp_path / "notes.mp4"
    other.write_bytes(b"y" * 1000)
    enforce_retention(Catalog().segments([old, middle, new]), Retention(keep_hours=24, max_bytes=None))
    assert not old.exists() and middle.exists() and new.exists()
    enforce_retention(Catalog().segments([middle, new]), Retention(keep_hours=None, max_bytes=150))
    assert not middle.exists() and new.exists()
    assert other.exists()  # only segments are ever removed


def test_retention_applies_while_recording(tmp_path):
    """By age here; by size in test_retention_clock, whose segments are big enough for max_bytes' 1 MB floor."""
    out = tmp_path / "rec"
    result = run_in_process("run", *RECORDER, "--output", str(out), "--set", "output.segment_seconds=0.5",
                            "--set", "output.keep_hours=0.0001", "--max-frames", "40")
    assert result.returncode == 0, result.stderr
    assert "retention: removed" in result.stderr and "over output.keep_hours = 0.0001" in result.stderr
    assert 1 <= len(list(out.glob("*.mp4"))) < 10  # 40 frames at 8 fps in 0.5 s segments made 10


@pytest.mark.system
@needs_rtsp
def test_a_live_source_records_in_one_minute_segments_by_default(tmp_path):
    video = make_video(tmp_path / "in.mp4", frames=25, size=(160, 120), fps=25)
    with RtspServer(video) as server:
        daemon = Daemon(*RECORDER[2:], "--source", server.url, "--output", str(tmp_path / "cam.mp4"), "--max-frames", "5")
        assert daemon.finish(timeout=120) == 0, daemon.text()
    (segment,) = tmp_path.glob("cam-*.mp4")
    summary = run_summary(daemon.text())
    assert summary["read"] == 5
    assert probe(segment)["frames"] == summary["processed"] > 0  # a live source drops what the model cannot keep up with
    assert "recording 60 s segments" in daemon.text()


def test_a_realtime_synthetic_source_is_paced_like_a_camera():
    from streamer.inputs.synthetic import SyntheticReader

    reader = SyntheticReader.from_uri("synthetic:street?size=64x48&fps=20&frames=5&realtime=1")
    started = time.monotonic()
    while reader.read() is not None:
        pass
    assert time.monotonic() - started >= 4 / 20
