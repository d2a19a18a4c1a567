"""The daemon's HTTP server: the standard library's threaded server, bounded so that no client can
use it to stop the recorder.

At most MAX_CONNECTIONS connections are served at once: one more is closed as soon as it is accepted,
without a thread, so a flood costs neither threads nor file descriptors beyond the cap. Every read
and write of a connection has IO_TIMEOUT_S to complete, so a client that sends nothing or trickles
is dropped; requests are limited in size by http.server (64 KiB lines, 100 headers). The server
runs in its own daemon threads: whatever it sees, the pipeline does not wait on it.
"""
from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_CONNECTIONS = 32
IO_TIMEOUT_S = 5.0


class BoundedHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a cap on open connections; handlers get IO_TIMEOUT_S per operation."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst of connections waits here, not in SYN retries

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int = MAX_CONNECTIONS):
        handler.timeout = IO_TIMEOUT_S  # StreamRequestHandler sets it on the socket before reading
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: socket.socket | tuple[bytes, socket.socket], client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the cap: closed at once
            return
        try:
            super().process_request(request, client_address)  # a thread that releases the slot when done
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket | tuple[bytes, socket.socket], client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
