"""The live view over real sockets against a real daemon: snapshot and MJPEG, the token rules, the
viewer cap, and viewers that stall or leave without the pipeline noticing."""
from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time

import cv2
import numpy as np
import pytest
from helpers import run_in_process, serving, the_error, wait_until

TOKEN = "live-view-test-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VIEWERS = 8
EXIT_CONFIG = 78
UNKNOWN_EVENT = "01a24dbd-cc41-7042-9dc5-fe98a3b685a9"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    events = tmp_path_factory.mktemp("events")
    with serving("--set", f"server.max_viewers={VIEWERS}", "--set", "server.live_fps=8", "--set", "events.enabled=true",
                 "--set", f"events.dir={events}", token=TOKEN) as process:
        yield process


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


class Viewer:
    """An MJPEG viewer on its own connection; `frames` are the JPEGs read so far (decoded sizes)."""

    def __init__(self, port: int, reading: bool = True):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.connection.request("GET", "/live/cam0.mjpg", headers=AUTH)
        self.socket = self.connection.sock  # the response takes it over
        self.response = self.connection.getresponse()
        self.frames: list[np.ndarray] = []
        self.error: Exception | None = None
        if reading and self.response.status == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            boundary = self.response.getheader("Content-Type").split("boundary=")[1].encode()
            while True:
                assert self.response.readline().rstrip(b"\r\n") == b"--" + boundary
                headers = {}
                while (line := self.response.readline().rstrip(b"\r\n")):
                    name, _, value = line.decode().partition(":")
                    headers[name.lower()] = value.strip()
                assert headers["content-type"] == "image/jpeg"
                jpeg = self.response.read(int(headers["content-length"]))
                assert self.response.read(2) == b"\r\n"
                self.frames.append(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
        except Exception as exc:  # noqa: BLE001 - the test reads it
            self.error = exc

    def close(self) -> None:
        self.socket.shutdown(socket.SHUT_RDWR)
        self.response.close()
        self.connection.close()


def taken_and_dropped(port: int) -> tuple[int, int]:
    source = json.loads(get(port, "/api/status", AUTH)[2])["sources"]["cam0"]
    return source["processed"], source["dropped"]


def latency_totals(port: int) -> tuple[float, float]:
    """(sum of seconds, count) of cam0's streamer_latency_seconds histogram: capture to outputs written."""
    text = get(port, "/metrics", AUTH)[2].decode()
    values = {name: float(value) for name, value in re.findall(r'^(streamer_latency_seconds_(?:sum|count))\{source="cam0"\} (\S+)$',
                                                                 text, re.MULTILINE)}
    return values["streamer_latency_seconds_sum"], values["streamer_latency_seconds_count"]


def rate(port: int, seconds: float = 5.0) -> tuple[float, float]:
    """(the share of the camera's frames the pipeline processed rather than dropped, their mean
    latency in seconds) over the next `seconds`: what this machine delivered, busy or not."""
    (done, dropped), (total, count) = taken_and_dropped(port), latency_totals(port)
    time.sleep(seconds)
    (done_after, dropped_after), (total_after, count_after) = taken_and_dropped(port), latency_totals(port)
    share = (done_after - done) / max(done_after - done + dropped_after - dropped, 1)
    return share, (total_after - total) / max(count_after - count, 1)


@pytest.mark.system
def test_the_snapshot_decodes_at_the_sources_size(daemon):
    status, headers, body = get(daemon.port, "/live/cam0.jpg", AUTH)
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (96, 160, 3) and image.std() > 10, "a picture, not a blank"


@pytest.mark.system
def test_the_mjpeg_stream_yields_whole_frames_that_change(daemon):
    viewer = Viewer(daemon.port)
    try:
        assert viewer.response.status == 200
        wait_until(lambda: len(viewer.frames) >= 4 or viewer.error, timeout=20, what="4 MJPEG frames")
        assert viewer.error is None, viewer.error
        assert all(frame.shape == (96, 160, 3) for frame in viewer.frames)
        assert any(np.abs(a.astype(int) - b).mean() > 1 for a, b in zip(viewer.frames, viewer.frames[1:])), "the picture moves"
    finally:
        viewer.close()


@pytest.mark.system
def test_the_status_reports_each_source_without_its_url(daemon):
    status, headers, body = get(daemon.port, "/api/status", AUTH)
    source = json.loads(body)["sources"]["cam0"]
    assert status == 200 and source["state"] == "streaming" and source["processed"] > 0
    assert source["live"]["width"] == 160 and source["counts"]["objects_total"] is not None
    for path in ("/api/status", "/", "/live/cam0"):
        assert b"synthetic" not in get(daemon.port, path, AUTH)[2], path


@pytest.mark.system
def test_every_endpoint_but_healthz_needs_the_token(daemon):
    for path in ("/", "/live/cam0", "/live/cam0.jpg", "/live/cam0.mjpg", "/api/status", "/metrics", "/common.js", "/api/events",
                 f"/api/events/{UNKNOWN_EVENT}/snapshot.jpg"):
        status, headers, _ = get(daemon.port, path)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), path
        assert get(daemon.port, path, {"Authorization": "Bearer not-" + TOKEN})[0] == 401, path
        assert get(daemon.port, path, {"Cookie": "streamer_token=" + TOKEN[:-1]})[0] == 401, path
    assert get(daemon.port, "/healthz")[0] == 200
    assert get(daemon.port, "/metrics", AUTH)[0] == 200
    # A page opened with ?token= puts it in a cookie and reloads without it.
    status, headers, _ = get(daemon.port, f"/live/cam0?token={TOKEN}")
    assert status == 303 and headers["Location"] == "cam0", "relative: right behind a proxy's path prefix too"
    cookie = headers["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    assert get(daemon.port, "/live/cam0", {"Cookie": cookie})[0] == 200
    assert get(daemon.port, f"/live/cam0.jpg?token={TOKEN}")[0] == 200, "a stream URL may carry it, e.g. for a player"
    status, headers, _ = get(daemon.port, f"/?token={TOKEN}")
    assert status == 303 and headers["Location"] == "./"


@pytest.mark.system
def test_the_events_api_lists_the_newest_events_with_their_snapshots_under_the_same_token_rules(daemon):
    def pictured():
        status, _, body = get(daemon.port, "/api/events?kind=track_start,track_end&limit=5", AUTH)
        assert status == 200
        return [e for e in json.loads(body)["events"] if e["snapshot"]]

    event = wait_until(lambda: next(iter(pictured()), None), timeout=60, every=0.5, what="an event with a snapshot")
    assert event["source"] == "cam0" and event["kind"] in ("track_start", "track_end") and event["category"]
    for name in ("snapshot", "crop"):
        status, headers, body = get(daemon.port, f"/api/events/{event['id']}/{name}.jpg", AUTH)
        assert status == 200 and headers["Content-Type"] == "image/jpeg", name
        assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape[2] == 3, name
        assert get(daemon.port, f"/api/events/{event['id']}/{name}.jpg")[0] == 401, "the live view's token rules"
    assert get(daemon.port, f"/api/events?token={TOKEN}&kind=track_start&limit=1")[0] == 200, "?token= as for a stream"
    newest = json.loads(get(daemon.port, "/api/events?limit=3", AUTH)[2])
    seqs = [e["seq"] for e in newest["events"]]
    assert seqs == sorted(seqs, reverse=True) and newest["next"] == seqs[-1], "newest first; `next` pages back"
    older = json.loads(get(daemon.port, f"/api/events?limit=3&before={newest['next']}", AUTH)[2])
    assert all(e["seq"] < seqs[-1] for e in older["events"])
    status, _, body = get(daemon.port, "/api/events?limit=0", AUTH)
    assert status == 400 and body.decode().count("\n") == 1 and "limit" in body.decode()
    assert get(daemon.port, "/api/events?colour=red", AUTH)[0] == 400
    for path in (f"/api/events/{UNKNOWN_EVENT}/snapshot.jpg", "/api/events/..%2Fevents.sqlite/snapshot.jpg",
                 f"/api/events/{event['id']}/frame.jpg", f"/api/events/{event['id']}"):
        assert get(daemon.port, path, AUTH)[0] == 404, path


@pytest.mark.system
@pytest.mark.parametrize("path", ["/live/cam1.jpg", "/live/..%2F..%2Fetc%2Fpasswd", "/live/cam0/../../x.jpg", "/live/cam0.png",
                                  "/live/%00.jpg", "/nothing"])
def test_unknown_sources_and_paths_are_not_found(daemon, path):
    assert get(daemon.port, path, AUTH)[0] == 404


@pytest.mark.system
def test_stalled_and_many_viewers_leave_the_pipeline_alone_and_leavers_are_released(daemon):
    alone = rate(daemon.port)
    stalled = Viewer(daemon.port, reading=False)  # connected, never reads
    viewers = [Viewer(daemon.port) for _ in range(VIEWERS - 1)]
    try:
        assert stalled.response.status == 200 and all(v.response.status == 200 for v in viewers)
        assert get(daemon.port, "/live/cam0.mjpg", AUTH)[0] == 503, "one more than server.max_viewers"
        watched = rate(daemon.port)
        assert watched[0] >= alone[0] - 0.1, (alone, watched)  # viewers take no frames from the pipeline
        assert watched[1] <= 1.5 * alone[1] + 0.05, (alone, watched)  # mean latency
        assert all(len(v.frames) >= 8 and v.error is None for v in viewers), [len(v.frames) for v in viewers]
        viewers.pop().close()  # a viewer leaves: its place is free at once

        def replaced() -> bool:
            viewers.append(Viewer(daemon.port, reading=False))
            return viewers[-1].response.status == 200

        wait_until(replaced, timeout=3, every=0.2, what="a free place after a viewer left")
    finally:
        for viewer in [stalled, *viewers]:
            viewer.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7"])
def test_a_server_other_machines_can_reach_needs_a_token_or_a_deliberate_opt_out(host, monkeypatch):
    monkeypatch.delenv("STREAMER_TOKEN", raising=False)
    args = ("check-config", "--set", "server.enabled=true", "--set", f"server.host='{host}'")  # quoted: :: is YAML too
    message = the_error(run_in_process(*args), EXIT_CONFIG)
    assert f"host {host} is reachable from other machines: set server.token (or STREAMER_TOKEN)" in message
    assert run_in_process(*args, "--set", "server.allow_unauthenticated=true").returncode == 0
    assert run_in_process(*args, "--set", f"server.token={TOKEN}").returncode == 0
    monkeypatch.setenv("STREAMER_TOKEN", TOKEN)
    printed = run_in_process(*args)
    assert printed.returncode == 0 and TOKEN not in printed.stdout + printed.stderr
    assert the_error(run_in_process(*args, "--set", "server.token=short"), EXIT_CONFIG).endswith(
        "the token (server.token) must be 16 to 256 characters long")
