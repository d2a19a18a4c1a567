"""The HTTP server cannot be used to stop the recorder: a flood of connections that send nothing, or
trickle, costs the daemon a bounded number of threads and descriptors, every one is dropped within
its timeout, and frames keep flowing. A real socket flood on loopback against a real daemon."""
from __future__ import annotations

import os
import socket
import time

import pytest
from helpers import RECORDER, Daemon, free_port, http_get, processed_in, wait_until

from streamer.service.http import MAX_CONNECTIONS

pytestmark = pytest.mark.system  # every test here starts a process or a server

FLOOD = 300  # idle connections, far beyond the server's cap
CAP = MAX_CONNECTIONS + 8  # one source: the connections for anything, plus its server.max_viewers (8)


def threads_and_fds(pid: int) -> tuple[int, int]:
    threads = next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("Threads:"))
    return threads, len(os.listdir(f"/proc/{pid}/fd"))


def latest_processed(daemon: Daemon) -> int:
    return max([processed_in(line) for _, line in daemon.lines] or [0])


def test_a_connection_flood_costs_bounded_threads_and_the_pipeline_goes_on(tmp_path):
    port = free_port()
    daemon = Daemon(*RECORDER, "--output", str(tmp_path / "out.mp4"), "--set", "output.segment_seconds=0",
                    "--set", "server.enabled=true", "--set", f"server.port={port}", "--set", "runtime.status_interval_s=0.5")
    sockets: list[socket.socket] = []
    try:
        daemon.wait_processed(2, timeout=120)
        assert http_get(port, "/healthz")[0] == 200
        threads_before, fds_before = threads_and_fds(daemon.process.pid)
        for _ in range(FLOOD):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        for sock in sockets[:10]:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # a slow client: headers never finish
        time.sleep(1.0)
        threads, fds = threads_and_fds(daemon.process.pid)
        assert threads <= threads_before + CAP + 2, "a thread per served connection, never more than the cap"
        assert fds <= fds_before + CAP + 8, "connections over the cap are closed at once"
        before = latest_processed(daemon)
        wait_until(lambda: latest_processed(daemon) >= before + 8, timeout=30, what="frames while flooded")
        # every idle connection is dropped by the server within its timeout
        deadline = time.monotonic() + 15
        for sock in sockets:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                while sock.recv(4096):  # read until the server closes it (a timeout here fails the test)
                    pass
            except ConnectionResetError:
                pass
        for sock in sockets:
            sock.close()
        wait_until(lambda: http_get(port, "/healthz")[0] == 200, timeout=15, what="/healthz after the flood")
        assert threads_and_fds(daemon.process.pid)[0] <= threads_before + 2
        assert daemon.terminate() == 0, daemon.text()
    finally:
        for sock in sockets:
            sock.close()
        daemon.terminate()
