"""A real HTTP receiver of webhooks for tests: http.server on a free port of 127.0.0.1."""
from __future__ import annotations

import http.server
import json
import threading


class Receiver:
    """An HTTP receiver on a free port of 127.0.0.1: answers 500 to the first `failures` POSTs of each
    path, then 204; keeps (path, headers, raw body) of every POST it accepted, and counts the refused."""

    def __init__(self, failures: int = 0) -> None:
        self.accepted: list[tuple[str, dict[str, str], bytes]] = []
        self.refused: dict[str, int] = {}
        self.failures = failures
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    refused = outer.refused.get(self.path, 0)
                    if refused < outer.failures:
                        outer.refused[self.path] = refused + 1
                        code = 500
                    else:
                        outer.accepted.append((self.path, dict(self.headers), body))
                        code = 204
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, path: str) -> list[dict]:
        return [json.loads(body) for p, _, body in list(self.accepted) if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
