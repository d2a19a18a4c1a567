"""An IP camera that serves MJPEG over HTTP (multipart/x-mixed-replace), as many do: JPEG frames at
a real pace, and no timestamps in the stream. FFmpeg then invents them at a nominal 25 fps."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
from helpers import moving_pattern

BOUNDARY = "frame"


class MjpegCamera:
    """Serves /video.mjpg at `fps` frames per second of real time to every client, on 127.0.0.1."""

    def __init__(self, fps: float, size: tuple[int, int] = (160, 120)):
        self.fps, self.size = fps, size
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/video.mjpg"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.end_headers()
                start, index = time.monotonic(), 0
                try:
                    while True:
                        jpeg = cv2.imencode(".jpg", moving_pattern(index, *camera.size))[1].tobytes()
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                                         + jpeg + b"\r\n")
                        self.wfile.flush()
                        index += 1
                        time.sleep(max(0.0, start + index / camera.fps - time.monotonic()))
                except OSError:
                    pass  # the client went away

            def log_message(self, *args) -> None:
                pass

        return Handler

    def __enter__(self) -> MjpegCamera:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
