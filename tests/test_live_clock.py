"""Timestamps tell the truth for live sources: a stream's own PTS are used only once they keep pace
with the frames' arrival; invented ones (a nominal 25 fps on a camera that sends 4) are recognised
and the frames stamped by arrival. The clock is checked on exact inputs, then end to end on an MJPEG
camera served over real HTTP."""
from __future__ import annotations

import json
import random
import re
import statistics

import pytest
from helpers import DEMO_MODELS, probe, run_in_process
from mjpeg import MjpegCamera

from streamer.inputs.clock import CHECK_S, SETTLE_S, LiveClock

START = 100.0  # the session's start on the monotonic clock, s


def stamps(clock: LiveClock, frames: list[tuple[float, float]]) -> list[float]:
    """(stream PTS in ms, arrival in s since START) -> the clock's stamps."""
    return [clock.stamp(pts, START + arrival) for pts, arrival in frames]


def test_invented_timestamps_are_recognised_and_frames_stamped_by_arrival():
    clock = LiveClock("cam", START)
    frames = [(k * 40.0, 1.0 + k / 4) for k in range(40)]  # PTS claim 25 fps, frames come at 4
    out = stamps(clock, frames)
    assert out == pytest.approx([arrival * 1000 for _, arrival in frames])
    assert clock.trusted is False


def test_real_timestamps_are_trusted_once_they_keep_pace_and_smooth_the_arrival_jitter():
    rng = random.Random(3)
    clock = LiveClock("cam", START)
    # a 25 fps camera whose frames arrive up to 30 ms late, after a burst of one buffered second
    burst = [(k * 40.0, 0.5 + k * 0.002) for k in range(25)]
    steady = [(1000.0 + k * 40.0, 0.5 + 1.0 + k * 0.04 + rng.uniform(0, 0.03)) for k in range(200)]
    out = stamps(clock, burst + steady)
    assert clock.trusted is True
    decided = int((SETTLE_S + CHECK_S) / 0.04) + 5
    spacing = [b - a for a, b in zip(out[25 + decided:], out[26 + decided:])]
    assert spacing == pytest.approx([40.0] * len(spacing))  # the stream's own spacing, not the jitter
    assert all(b > a for a, b in zip(out, out[1:]))


def test_missing_timestamps_are_stamped_by_arrival():
    clock = LiveClock("cam", START)
    frames = [(float("nan"), 0.3 + k * 0.1) for k in range(50)]
    assert stamps(clock, frames) == pytest.approx([arrival * 1000 for _, arrival in frames])


def test_an_outage_is_a_gap_and_a_restarted_stream_never_goes_back():
    clock = LiveClock("cam", START)
    first = stamps(clock, [(k * 40.0, 1.0 + k * 0.04) for k in range(100)])
    assert clock.trusted is True
    clock.new_connection()  # a 10 s outage; the new connection's PTS start again at 0
    second = stamps(clock, [(k * 40.0, 15.0 + k * 0.04) for k in range(100)])
    assert second[0] == pytest.approx(15000.0) and second[0] > first[-1]
    assert all(b > a for a, b in zip(first + second, (first + second)[1:]))
    assert clock.trusted is True


def test_timestamps_that_keep_drifting_are_dropped_for_arrival():
    clock = LiveClock("cam", START)
    # 27 fps PTS on a 25 fps camera: within the check's tolerance, but 8 % fast, so 2 s apart in 25 s
    frames = [(k * 1000 / 27, 1.0 + k * 0.04) for k in range(2000)]
    out = stamps(clock, frames)
    assert clock.trusted is False
    assert out[-1] == pytest.approx(frames[-1][1] * 1000)
    assert all(b > a for a, b in zip(out, out[1:]))


@pytest.mark.system
def test_an_mjpeg_camera_without_timestamps_records_at_its_real_pace(tmp_path):
    video, export = tmp_path / "cam.mp4", tmp_path / "export"
    with MjpegCamera(fps=4) as camera:
        result = run_in_process(
            "run", "--source", camera.url, *DEMO_MODELS, "--set", "models.semantic.input_size=[160,96]",
            "--set", "models.instance.min_size=96", "--set", "models.instance.max_size=160", "--set", "runtime.device=cpu",
            "--set", "output.segment_seconds=0", "--output", str(video), "--export-dir", str(export), "--max-frames", "16")
    assert result.returncode == 0, result.stderr
    assert re.search(r"the stream's timestamps are not used, they advance 0\.1\d s per second of arrival", result.stderr)
    # frame k of the camera is at k / 4 s (frames the model could not keep up with are dropped, not squeezed)
    images = json.loads((export / "panoptic.json").read_text())["images"]
    read, pts_s = [image["id"] for image in images], [image["pts_ms"] / 1000 for image in images]
    assert statistics.linear_regression(read, pts_s).slope == pytest.approx(0.25, rel=0.1)  # not the invented 0.04
    times = probe(video)["times"]
    assert times[-1] - times[0] == pytest.approx(pts_s[-1] - pts_s[0], abs=0.01)
