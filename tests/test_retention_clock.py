"""Retention never deletes what it should keep, whatever the clock says: order comes from each
segment's recorded sequence and age from its recorded start on CLOCK_BOOTTIME, not from names a
wrong clock wrote; the newest segment is never removed. Pure cases first, then real segments whose
names disagree with their recorded times, under a real run."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from helpers import DEMO_MODELS, run_in_process

from streamer.outputs.recording import VideoOutput
from streamer.outputs.recovery import recover_partial
from streamer.outputs.retention import TAG, Moment, Record, Retention, Segment, ages, ordered, plan, read_record

NOW = Moment(wall=2_000_000_000.0, boot_id="boot-a", boottime=100_000.0)
HOUR = 3600.0


def segment(name: str, sequence: int | None, hours_ago: float, wall_hours_ago: float | None = None, size: int = 100,
            boot: str = "boot-a") -> Segment:
    """A segment recorded `hours_ago` (by CLOCK_BOOTTIME); its wall-clock start may say otherwise."""
    wall = NOW.wall - HOUR * (hours_ago if wall_hours_ago is None else wall_hours_ago)
    record = None if sequence is None else Record(sequence, Moment(wall, boot, NOW.boottime - HOUR * hours_ago))
    return Segment(Path(name), size, wall, record)


def test_a_clock_a_day_ahead_does_not_make_stale_segments_look_new():
    stale = [segment(f"cam-20270102T00000{i}Z.mp4", i + 1, hours_ago=30 - i, wall_hours_ago=6 - i) for i in range(7)]
    fresh = [segment(f"cam-20270101T00000{i}Z.mp4", 8 + i, hours_ago=3 - i) for i in range(3)]
    segments = ordered(fresh + stale)
    assert [s.record.sequence for s in segments] == list(range(1, 11)), "by sequence, not by name"
    removed = [s for s, _ in plan(segments, Retention(keep_hours=None, max_bytes=500), NOW)]
    assert removed == stale[:5], "the stale ones go first, the fresh are kept"


def test_age_is_measured_on_the_boot_clock_whatever_the_wall_clock_said():
    # recorded 1 h ago while the wall clock was 30 h behind: not older than keep_hours = 24
    behind = segment("a.mp4", 1, hours_ago=1, wall_hours_ago=31)
    newest = segment("b.mp4", 2, hours_ago=0.1)
    assert ages([behind, newest], NOW)[0] == HOUR
    assert plan([behind, newest], Retention(keep_hours=24, max_bytes=None), NOW) == []
    # from an earlier boot only the wall clock is left, but an older segment is never younger than a newer one
    earlier_boot = segment("c.mp4", 1, hours_ago=0, wall_hours_ago=-5, boot="boot-0")  # its wall start is in the future
    later = segment("d.mp4", 2, hours_ago=30, wall_hours_ago=30, boot="boot-0")
    assert ages([earlier_boot, later, newest], NOW)[:2] == [30 * HOUR, 30 * HOUR]


def test_segments_without_a_record_count_as_oldest_and_the_newest_is_never_removed():
    unknown = segment("cam-20990101T000000Z.mp4", None, hours_ago=0)  # another tool's file, named in the future
    recorded = [segment(f"cam-2026010{i}T000000Z.mp4", i, hours_ago=10 - i) for i in range(1, 4)]
    segments = ordered(recorded + [unknown])
    assert segments[0] is unknown
    removed = [s.path.name for s, _ in plan(segments, Retention(keep_hours=None, max_bytes=1), NOW)]
    assert removed == ["cam-20990101T000000Z.mp4", "cam-20260101T000000Z.mp4", "cam-20260102T000000Z.mp4"]
    why = dict((s.path.name, w) for s, w in plan(segments, Retention(keep_hours=5, max_bytes=None), NOW))
    assert why["cam-20260101T000000Z.mp4"] == "recorded 9.00 h ago, over output.keep_hours = 5"


def write_segment(path: Path, record: Record, frames: int = 20) -> None:
    """A real segment of incompressible frames (about 1 MB for 20 at 320x240), carrying `record`."""
    rng = np.random.default_rng(record.sequence)
    video = VideoOutput(path, 10, metadata={TAG: record.tag()})
    for index in range(frames):
        video.write(SimpleNamespace(frame=SimpleNamespace(pts_ms=index * 100.0)), rng.integers(0, 256, (240, 320, 3), np.uint8))
    video.close()


def test_real_segments_named_by_a_clock_a_day_ahead_are_removed_before_new_ones(tmp_path):
    folder = tmp_path / "rec"
    folder.mkdir()
    tomorrow = datetime.now(timezone.utc) + timedelta(days=1)
    now = Moment.now()
    stale = []
    for index in range(3):
        name = folder / f"cam-{(tomorrow + timedelta(minutes=index)).strftime('%Y%m%dT%H%M%SZ')}.mp4"
        write_segment(name, Record(index + 1, Moment(now.wall - 60 + index, now.boot_id, now.boottime - 60 + index)))
        stale.append(name)
    assert read_record(stale[0]).sequence == 1
    result = run_in_process(
        "run", "--source", "synthetic:street?seed=3&size=160x96&fps=8", *DEMO_MODELS, "--output", str(folder / "cam.mp4"),
        "--set", "output.segment_seconds=0.5", "--set", "output.max_bytes=2MB", "--set", "runtime.device=cpu",
        "--set", "models.semantic.input_size=[160,96]", "--set", "output.min_free_mb=0", "--max-frames", "12")
    assert result.returncode == 0, result.stderr
    new = sorted(p for p in folder.glob("cam-*.mp4") if p not in stale)
    assert len(new) == 3, "every new segment is kept"
    assert sorted(read_record(p).sequence for p in new) == [4, 5, 6], "the sequence goes on from the folder's"
    assert not stale[0].exists(), "the oldest stale one went first, by its record, not its name"
    assert f"retention: removed {stale[0].name} (the oldest while the segments hold" in result.stderr


def test_a_recovered_segment_keeps_its_record(tmp_path):
    now = Moment.now()
    finished = tmp_path / "cam-20260101T000000Z.mp4"
    write_segment(finished, Record(41, now), frames=4)
    leftover = finished.with_name(finished.name + ".partial")
    finished.rename(leftover)  # as a kill leaves a segment
    assert recover_partial(leftover) is None
    assert read_record(finished) == Record(41, now)
