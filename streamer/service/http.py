"""The daemon's HTTP server: the standard library's threaded server, bounded so that no client can
use it to stop the recorder, or to keep the health check from answering.

A connection first sends its request head (request line and headers): it has HEAD_TIMEOUT_S for all
of it, however it trickles, and at most MAX_WAITING connections wait in that phase at once (one more
cuts the oldest waiting one off, so idle and trickling clients cannot hold the door shut: a new
request, a health check among them, always gets in). Once its head is read, a request takes a place
of its kind: `/healthz` and `/metrics` have PROBE_CONNECTIONS of their own, everything else (the
pages, snapshots and live viewers) shares `max_connections`; with no place left it gets 503 at once.
So threads and file descriptors stay bounded (MAX_WAITING + PROBE_CONNECTIONS + max_connections),
and health and metrics stay reachable while viewers and idle clients fill the rest. After the head,
every read and write has IO_TIMEOUT_S to complete; requests are limited in size by http.server
(64 KiB lines, 100 headers). The server runs in its own daemon threads: whatever it sees, the
pipeline does not wait on it.

IPv4 and IPv6 hosts alike: the socket's family is the host's (`::1`, `::`, a name's first address,
IPv4 preferred for names such as `localhost`).
"""
from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
import socket
import socketserver
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
IO_TIMEOUT_S = 5.0
HEAD_TIMEOUT_S = 5.0  # the request line and every header, together
MAX_WAITING = 32  # connections still sending their request head
PROBE_CONNECTIONS = 4  # /healthz and /metrics, beside max_connections
PROBE = "probe"
OTHER = "other"


def listen_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """(family, address) to bind for `host`: an IPv4 or IPv6 address as written, a name resolved
    (its first IPv4 address, else its first IPv6 one). Raises socket.gaierror for a name that does
    not resolve."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = next((info for info in found if info[0] == socket.AF_INET), found[0])
        return family, (str(sockaddr[0]), port)
    return (socket.AF_INET6 if address.version == 6 else socket.AF_INET), (str(address), port)


class BoundedHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with the deadlines and places described above; `handler` should be a
    BoundedHandler (it reads the head under the deadline and asks for its place)."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst of connections waits here, not in SYN retries

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int = MAX_CONNECTIONS,
                 probes: int = PROBE_CONNECTIONS, waiting: int = MAX_WAITING):
        handler.timeout = IO_TIMEOUT_S  # StreamRequestHandler sets it on the socket before reading
        self.address_family, bound = listen_address(*address)
        self._lock = threading.Lock()
        self._waiting: dict[socket.socket, float] = {}  # connections reading their head -> deadline, oldest first
        self._max_waiting = waiting
        self._slots = {OTHER: threading.BoundedSemaphore(max_connections), PROBE: threading.BoundedSemaphore(probes)}
        self._held: dict[socket.socket, str] = {}  # connections past their head -> the kind of place they hold
        super().__init__(bound, handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and ipaddress.ip_address(str(self.server_address[0])).is_unspecified:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # `::`: IPv4 clients too
        socketserver.TCPServer.server_bind(self)  # not HTTPServer's: its getfqdn() may wait on DNS
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request, client_address) -> None:
        with self._lock:
            self._waiting[request] = time.monotonic() + HEAD_TIMEOUT_S
            if len(self._waiting) > self._max_waiting:
                oldest = next(iter(self._waiting))
                del self._waiting[oldest]
                _cut(oldest)  # its thread's read returns at once and the thread ends
        try:
            super().process_request(request, client_address)  # a thread that gives its place back when done
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def head_deadline(self, request) -> float:
        """When the connection's request head must be complete (monotonic clock)."""
        with self._lock:
            return self._waiting.get(request, time.monotonic())

    def admit(self, request, kind: str) -> bool:
        """The connection's head is read: take a place of `kind` (PROBE or OTHER). False when there
        is none left, or when the connection was cut off meanwhile."""
        with self._lock:
            if self._waiting.pop(request, None) is None:
                return False
            if not self._slots[kind].acquire(blocking=False):
                return False
            self._held[request] = kind
            return True

    def _release(self, request) -> None:
        with self._lock:
            self._waiting.pop(request, None)
            kind = self._held.pop(request, None)
            if kind is not None:
                self._slots[kind].release()

    def handle_error(self, request, client_address) -> None:
        """A client that went away mid-answer is no event worth a traceback on stderr."""
        log.debug("HTTP connection from %s ended with an error", client_address[0], exc_info=True)


class BoundedHandler(BaseHTTPRequestHandler):
    """Reads the request head under its deadline, then asks BoundedHTTPServer for a place: PROBE for
    the paths in `probe_paths`, OTHER for the rest; 503 without one."""

    probe_paths: frozenset[str] = frozenset()
    server: BoundedHTTPServer

    def setup(self) -> None:
        super().setup()
        self._head = _HeadReader(self.connection, self.server.head_deadline(self.request))
        self.rfile = io.BufferedReader(self._head)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        self._head.deadline = None  # the head is in: from now on IO_TIMEOUT_S per read and write
        self.connection.settimeout(IO_TIMEOUT_S)
        path = urllib.parse.urlsplit(self.path).path if not self.path.startswith("/") else self.path.partition("?")[0]
        if not self.server.admit(self.request, PROBE if path in self.probe_paths else OTHER):
            self.close_connection = True
            body = b"too many connections; try again shortly\n"
            self.send_response(HTTPStatus.SERVICE_UNAVAILABLE)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Retry-After", "1")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            return False
        return True


class _HeadReader(io.RawIOBase):
    """The socket's bytes; until `deadline` is cleared, each read waits only for the time left."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.deadline: float | None = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request head took too long")
            self.sock.settimeout(min(left, IO_TIMEOUT_S))
        return self.sock.recv_into(buffer)


def _cut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
