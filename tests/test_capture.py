"""Capture thread buffer policies: files never drop, live sources drop the oldest and count it."""
from __future__ import annotations

import queue
import threading
import time

import numpy as np
from helpers import wait_until

from streamer import control as ctl
from streamer.config import BufferPolicy
from streamer.frames import Frame
from streamer.inputs.capture import Capture, Liveness, offer


def frame(index: int) -> Frame:
    return Frame("cam", index, np.zeros((4, 4, 3), np.uint8), index * 40.0, time.time(), time.monotonic())


class ListReader:
    """A reader over n tiny frames, live or not."""

    def __init__(self, n: int, live: bool):
        self.description, self.live, self.fps = "list", live, 25.0
        self._left = list(range(n))
        self.closed = False

    def read(self):
        if not self._left:
            return None
        return np.full((4, 4, 3), self._left.pop(0), np.uint8), 0.0

    def close(self):
        self.closed = True


def capture_loop(reader, source_id, frames, policy, control, stats, max_frames=None):
    """Capture one reader to its end (no reconnects)."""
    Capture(lambda: reader, source_id, "list", frames, policy, Liveness(False, 15.0, None, 1.0, 30.0, 30.0), control, stats, max_frames).run()


def drain(q: queue.Queue) -> list:
    items = []
    while not q.empty():
        items.append(q.get_nowait())
    return items


def test_auto_policy_blocks_for_files_and_drops_for_live():
    assert BufferPolicy.AUTO.resolve(live=False) is BufferPolicy.BLOCK
    assert BufferPolicy.AUTO.resolve(live=True) is BufferPolicy.DROP_OLDEST
    assert BufferPolicy.LATEST.resolve(live=False) is BufferPolicy.LATEST


def test_drop_oldest_keeps_the_newest_frames_and_counts_drops():
    q, control, stats = queue.Queue(maxsize=3), ctl.Control(), ctl.Stats()
    for i in range(10):
        assert offer(q, frame(i), BufferPolicy.DROP_OLDEST, control, stats)
    assert [f.index for f in drain(q)] == [7, 8, 9]
    assert stats.dropped == {"queue_full": 7}


def test_latest_keeps_only_the_newest_frame():
    q, control, stats = queue.Queue(maxsize=3), ctl.Control(), ctl.Stats()
    for i in range(5):
        offer(q, frame(i), BufferPolicy.LATEST, control, stats)
    assert [f.index for f in drain(q)] == [4]
    assert stats.dropped == {"latest": 4}


def test_block_waits_for_room_and_never_drops():
    q, control, stats = queue.Queue(maxsize=2), ctl.Control(), ctl.Stats()
    reader = ListReader(50, live=False)
    thread = threading.Thread(target=capture_loop, args=(reader, "cam", q, BufferPolicy.BLOCK, control, stats))
    thread.start()
    seen = []
    while True:
        item = q.get(timeout=10)
        if item is ctl.END:
            break
        seen.append(int(item.image[0, 0, 0]))
        time.sleep(0.002)  # a slow consumer
    thread.join(10)
    assert seen == list(range(50))
    assert not stats.dropped and stats.read == 50 and reader.closed


def test_a_live_source_faster_than_the_consumer_drops_and_still_ends_with_end():
    q, control, stats = queue.Queue(maxsize=2), ctl.Control(), ctl.Stats()
    thread = threading.Thread(target=capture_loop, args=(ListReader(20, live=True), "cam", q, BufferPolicy.DROP_OLDEST, control, stats))
    thread.start()
    wait_until(lambda: stats.read >= 20, timeout=10, every=0.01, what="20 frames read")  # nobody consumes meanwhile
    time.sleep(0.1)
    items = drain(q)
    thread.join(5)
    items += drain(q)
    assert items[-1] is ctl.END
    frames = [f.index for f in items[:-1]]
    assert frames == [18, 19]  # the newest survive, in order
    assert stats.dropped == {"queue_full": 18}


def test_stop_and_max_frames_end_the_capture():
    q, control, stats = queue.Queue(maxsize=100), ctl.Control(), ctl.Stats()
    capture_loop(ListReader(20, live=False), "cam", q, BufferPolicy.BLOCK, control, stats, max_frames=5)
    assert [f.index for f in drain(q)[:-1]] == [0, 1, 2, 3, 4]
    control.stop.set()
    stats = ctl.Stats()
    capture_loop(ListReader(20, live=False), "cam", q, BufferPolicy.BLOCK, control, stats)
    assert drain(q) == [ctl.END] and stats.read == 0


def test_abort_releases_a_capture_blocked_on_a_full_queue():
    q, control, stats = queue.Queue(maxsize=1), ctl.Control(), ctl.Stats()
    thread = threading.Thread(target=capture_loop, args=(ListReader(10, live=False), "cam", q, BufferPolicy.BLOCK, control, stats))
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()  # blocked: the queue is full and nobody reads
    control.abort.set()
    thread.join(2)
    assert not thread.is_alive()


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap():
    import random

    from streamer.inputs.capture import backoff_delay

    rng = random.Random(1)
    for attempt, ceiling in enumerate([1, 2, 4, 8, 16, 30, 30, 30]):
        delays = [backoff_delay(attempt, 1.0, 30.0, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not lockstep
