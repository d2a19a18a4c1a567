"""The live view's hand-over between one encoder and many viewers: a JPEG viewer gets the newest
frame at its own pace; a video viewer starts at the newest keyframe, reads on in order, jumps to the
newest keyframe once it fell behind, and ends when the stream restarts."""
from __future__ import annotations

from streamer.outputs.live import Broadcast, FragmentLog, live_size

STREAM = (b"init", "avc1.42C01E", 1000.0)


def test_a_slow_reader_of_the_broadcast_gets_the_newest_item_only():
    broadcast = Broadcast()
    assert broadcast.newer(0, 0.01) is None and broadcast.latest() == (0, None)
    for item in "abc":
        broadcast.publish(item)
    assert broadcast.newer(0, 0.01) == (3, "c"), "the ones in between are skipped for this reader"
    assert broadcast.newer(3, 0.01) is None
    broadcast.close()
    assert broadcast.newer(0, 1.0) is None


def test_a_video_viewer_starts_at_the_newest_keyframe_reads_in_order_and_jumps_when_behind():
    log = FragmentLog()
    log.add(STREAM, b"p-before-any-key", False)  # a stream starts at a keyframe: dropped
    assert log.join(0.01) is None
    log.add(STREAM, b"k1", True)
    log.add(STREAM, b"p1", False)
    epoch, init, codec, origin, seq = log.join(0.01)
    assert (init, codec, origin) == STREAM
    fragments, seq = log.read(epoch, seq, 0.01)
    assert fragments == [b"k1", b"p1"]
    assert log.read(epoch, seq, 0.01) == ([], seq), "nothing new: an empty read after the timeout"
    log.add(STREAM, b"p2", False)
    fragments, after_p2 = log.read(epoch, seq, 0.01)
    assert fragments == [b"p2"]
    log.add(STREAM, b"k2", True)  # the fragments before it are dropped
    log.add(STREAM, b"p3", False)
    assert log.read(epoch, seq, 0.01)[0] == [b"k2", b"p3"], "a reader that missed dropped fragments jumps to the newest keyframe"
    assert log.read(epoch, after_p2, 0.01)[0] == [b"k2", b"p3"], "one that is up to date reads on"
    log.restart()
    assert log.read(epoch, after_p2, 0.01) is None, "a new encoder (size) ends the readers of the old stream"
    log.close()
    assert log.join(1.0) is None


def test_the_live_size_fits_the_width_keeps_the_aspect_and_is_even():
    assert live_size(1920, 1080, 960) == (960, 540)
    assert live_size(640, 360, 960) == (640, 360), "never scaled up"
    assert live_size(1001, 333, 500) == (500, 166)
    assert all(v % 2 == 0 for v in live_size(641, 361, 960))
