"""The RTSP test harness itself (tests/rtsp.py, tests/rtsp_server.py), checked with a real client:
OpenCV's FFmpeg backend reading from GStreamer's RTSP server, each in its own process."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import busy_port, free_port, make_video, wait_until
from rtsp import (
    OpenCvClient,
    RtspServer,
    RtspServerError,
    needs_rtsp,
    read_frames,
    rtsp_available,
)

WIDTH, HEIGHT, FPS, FILE_FRAMES = 160, 120, 25, 25  # a one-second file


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """A 1 s, 160x120, 25 fps H.264 MP4 with a keyframe every 10 frames (clients start quickly)."""
    return make_video(tmp_path_factory.mktemp("rtsp") / "loop.mp4", frames=FILE_FRAMES, size=(WIDTH, HEIGHT), fps=FPS, gop=10)


def describe(client: OpenCvClient, server: RtspServer | None = None) -> str:
    text = f"client: {client.summary()}\n--- client stderr ---\n{client.stderr()[-2000:]}"
    return text + (f"\n--- server stderr ---\n{server.log()[-2000:]}" if server else "")


def events_after(client: OpenCvClient, moment: float) -> list[dict]:
    return [event for event in client.events if event.get("at", 0) > moment]


def test_rtsp_available_answers_with_a_reason():
    available, reason = rtsp_available()
    assert isinstance(available, bool) and reason
    assert rtsp_available() is rtsp_available()  # cached


@pytest.mark.system
@needs_rtsp
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_frames_arrive_with_the_right_size(video, transport):
    with RtspServer(video) as server:
        assert server.start_seconds < 10
        assert server.url == f"rtsp://127.0.0.1:{server.port}/stream"
        result = read_frames(server.url, 10, transport=transport)
        assert result["opened"], result
        assert result["frames"] == 10, result
        assert result["shape"] == (HEIGHT, WIDTH, 3)


@pytest.mark.system
@needs_rtsp
def test_the_stream_loops_past_the_end_of_the_file(video):
    with RtspServer(video) as server:
        with OpenCvClient(server.url, frames=2 * FILE_FRAMES + 10) as client:
            result = client.result(timeout=30)
            assert result["frames"] == 2 * FILE_FRAMES + 10, describe(client, server)
            assert not result["failed"]
            # Real time: the file's frames after the first pass come at about 25 fps, not at once.
            assert result["last_frame_s"] - result["first_frame_s"] > 0.5
            # Timestamps keep going up across the loop points (no jump back to 0).
            times = [event["ms"] for event in client.events if event["event"] == "frame"]
            assert times[-1] > 1.5 * 1000 * FILE_FRAMES / FPS, times
            assert all(later >= earlier for earlier, later in zip(times, times[1:])), times


@pytest.mark.system
@needs_rtsp
def test_basic_auth_lets_in_only_the_right_credentials(video):
    with RtspServer(video, user="alice", password="s3cr:t@/x") as server:
        assert server.url.startswith("rtsp://alice:s3cr%3At%40%2Fx@127.0.0.1:")
        good = read_frames(server.url, 5, open_timeout_ms=3000)
        assert good["opened"] and good["frames"] == 5, good
        for url in (server.url_for("alice", "wrong"), server.url_for("bob", "s3cr:t@/x"), server.plain_url):
            bad = read_frames(url, 5, open_timeout_ms=3000)
            assert not bad["opened"], (url, bad)
            assert bad["open_s"] < 3, bad  # refused (401), not timed out


@pytest.mark.system
@needs_rtsp
def test_kill_fails_the_read_and_restart_serves_again_on_the_same_port(video):
    with RtspServer(video) as server:
        port, first_pid = server.port, server.pid
        with OpenCvClient(server.url, read_timeout_ms=3000) as client:
            # Past the frames buffered while the stream was opened: reading live now.
            assert client.wait_frames(FILE_FRAMES + 10) >= FILE_FRAMES + 10, describe(client, server)
            killed = time.monotonic()
            server.kill()
            result = client.result(timeout=20)
            assert result["failed"], describe(client, server)
            assert result["end_s"] is not None
            fail_after = events_after(client, killed)[-1]["at"] - killed
            assert fail_after < 2.0, describe(client, server)  # the closed connection is seen at once
        assert not server.running

        server.restart(retry_for=0)  # no waiting for the port: it is reusable at once
        assert server.port == port and server.pid != first_pid
        again = read_frames(server.url, 10, open_timeout_ms=3000)
        assert again["opened"] and again["frames"] == 10, again


@pytest.mark.system
@needs_rtsp
def test_a_frozen_server_blocks_a_read_for_about_three_read_timeouts(video, record_property):
    timeout_ms = 2000
    with RtspServer(video) as server:
        with OpenCvClient(server.url, read_timeout_ms=timeout_ms) as client:
            assert client.wait_frames(FILE_FRAMES + 10) >= FILE_FRAMES + 10, describe(client, server)
            frozen = time.monotonic()
            server.freeze()
            result = client.result(timeout=30)
            after = events_after(client, frozen)
            blocked = after[-1]["at"] - frozen if after else None
            record_property("frozen_read_timeout_ms", timeout_ms)
            record_property("frozen_until_read_fails_s", blocked)
            record_property("frozen_events", [(e["event"], round(e["at"] - frozen, 3)) for e in after])
            print(f"frozen server, read timeout {timeout_ms} ms: read() failed {blocked:.2f} s after the freeze;"
                  f" events {[(e['event'], round(e['at'] - frozen, 2)) for e in after]}")
            assert result["failed"], describe(client, server)
            # OpenCV does not give up after one read timeout: a couple of reads each wait the timeout
            # and hand out frames still in the decoder, the next one fails (about 3 x the timeout).
            assert timeout_ms / 1000 * 0.9 < blocked < 3 * timeout_ms / 1000 + 2.0, describe(client, server)
            assert 0.9 * timeout_ms / 1000 < result["blocked_s"] < timeout_ms / 1000 + 1.0

        server.thaw()
        assert server.running
        again = read_frames(server.url, 10, open_timeout_ms=3000)
        assert again["opened"] and again["frames"] == 10, again


@pytest.mark.system
@needs_rtsp
def test_stop_ends_the_server_cleanly_on_sigterm(video):
    with RtspServer(video) as server:
        with OpenCvClient(server.url, read_timeout_ms=3000) as client:
            assert client.wait_frames(5) >= 5, describe(client, server)
            assert server.stop() == 0  # even with a client streaming
            assert client.result(timeout=20)["failed"], describe(client, server)
        assert not server.running
        assert "stopping" in server.log()
        assert not read_frames(server.url, 1, open_timeout_ms=2000)["opened"]


@pytest.mark.system
@needs_rtsp
def test_a_given_port_is_used_and_a_busy_one_is_an_error(video):
    port = free_port()
    with RtspServer(video, port=port) as server:
        assert server.port == port and f":{port}/" in server.url
        assert read_frames(server.url, 3)["frames"] == 3
    with busy_port() as held:
        busy = RtspServer(video, port=held)
        try:
            began = time.monotonic()
            with pytest.raises(RtspServerError, match="cannot listen"):
                busy.start(retry_for=0.5)
            assert time.monotonic() - began < 10
        finally:
            busy.close()


@pytest.mark.system
@needs_rtsp
def test_a_file_without_h264_is_an_error_with_the_server_log(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(RtspServerError, match="did not start") as caught:
        with RtspServer(bad):  # a failed start cleans up after itself
            pass
    assert "rtsp_server" in str(caught.value)  # the server's own stderr is in the message


@pytest.mark.system
@needs_rtsp
def test_the_server_goes_when_the_test_process_dies(video):
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from rtsp import RtspServer
        server = RtspServer({str(video)!r}).start()
        print(server.pid, server._dir, flush=True)
        os._exit(0)  # no cleanup at all
    """)
    orphan = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert orphan.returncode == 0, orphan.stderr
    pid, files = orphan.stdout.split()
    pid = int(pid)
    shutil.rmtree(files, ignore_errors=True)
    wait_until(lambda: not alive(pid), timeout=10, every=0.05, what=f"server {pid} outlived its test process")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")
