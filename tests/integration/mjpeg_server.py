"""A minimal HTTP MJPEG camera (multipart/x-mixed-replace, as most IP cameras serve it) for tests: the demo
footage's frames as JPEGs at a fixed rate, looped, on 127.0.0.1."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2

BOUNDARY = "vigilframe"


class MjpegCamera:
    def __init__(self, footage: Path, fps: float = 10.0, frames: int = 50) -> None:
        capture = cv2.VideoCapture(str(footage))
        self.jpegs = [cv2.imencode(".jpg", capture.read()[1])[1].tobytes() for _ in range(frames)]
        self.interval_s = 1.0 / fps
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace;boundary={BOUNDARY}")
                self.end_headers()
                index = 0
                try:
                    while not camera.stopped.is_set():
                        jpeg = camera.jpegs[index % len(camera.jpegs)]
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                        index += 1
                        time.sleep(camera.interval_s)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *_args) -> None:
                pass

        self.stopped = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"

    def __enter__(self) -> "MjpegCamera":
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()
