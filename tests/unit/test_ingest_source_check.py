"""The liveness check a network camera passes before OpenCV opens it, against real sockets on 127.0.0.1."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from services.ingest.source_check import why_unanswered


@pytest.fixture
def listener():
    """A socket that accepts connections (the kernel completes them) but whose owner never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server
    server.close()


def answering(listener: socket.socket, reply: bytes) -> list[bytes]:
    """Answers the first request on `listener` with `reply`; returns where the request will be put."""
    requests: list[bytes] = []

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            requests.append(connection.recv(4096))
            connection.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return requests


def test_a_server_that_accepts_but_never_answers_is_reported_after_the_timeout(listener):
    port = listener.getsockname()[1]
    started = time.monotonic()
    assert why_unanswered(f"rtsp://127.0.0.1:{port}/cam", 0.5) == f"no answer from 127.0.0.1:{port} within 0.5s"
    assert 0.4 < time.monotonic() - started < 3


def test_a_closed_port_is_refused_at_once(listener):
    port = listener.getsockname()[1]
    listener.close()
    reason = why_unanswered(f"rtsp://127.0.0.1:{port}/cam", 5)
    assert reason.startswith(f"cannot connect to 127.0.0.1:{port}:") and "refused" in reason.lower()


def test_an_rtsp_server_that_answers_passes_and_is_asked_without_the_credentials(listener):
    port = listener.getsockname()[1]
    requests = answering(listener, b"RTSP/1.0 401 Unauthorized\r\nCSeq: 1\r\n\r\n")
    assert why_unanswered(f"rtsp://admin:secret@127.0.0.1:{port}/stream1", 5) is None
    assert requests[0].startswith(f"OPTIONS rtsp://127.0.0.1:{port}/stream1 RTSP/1.0\r\n".encode())
    assert b"secret" not in requests[0]


def test_an_http_camera_that_answers_passes(listener):
    port = listener.getsockname()[1]
    requests = answering(listener, b"HTTP/1.0 200 OK\r\n\r\n")
    assert why_unanswered(f"http://127.0.0.1:{port}/video.mjpg", 5) is None
    assert requests[0].startswith(b"GET /video.mjpg HTTP/1.0\r\n")


def test_a_server_that_hangs_up_without_a_word_is_reported(listener):
    port = listener.getsockname()[1]
    answering(listener, b"")
    assert why_unanswered(f"http://127.0.0.1:{port}/", 5) == f"127.0.0.1:{port} closed the connection without answering"


@pytest.mark.parametrize("source", ["/data/night.mp4", "0", "file:///data/night.mp4"])
def test_files_and_devices_are_not_checked(source):
    assert why_unanswered(source, 0.1) is None
