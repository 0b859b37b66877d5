"""Whether a network camera answers at all, asked before OpenCV opens it.

OpenCV opens FFmpeg captures one at a time per process (a lock held for the whole open). A camera whose server
accepts connections but never answers (frozen, overloaded, a half-dead encoder) would hold every other camera
of the replica back for its whole open timeout, at every retry. One plain request first, on that camera's own
thread, keeps the wait to the silent camera; only a source that answered is handed to OpenCV."""
from __future__ import annotations

import socket
import ssl
import time
from urllib.parse import urlsplit

DEFAULT_PORTS = {"rtsp": 554, "http": 80, "https": 443}


def _request(scheme: str, host: str, path: str) -> bytes:
    if scheme == "rtsp":
        # OPTIONS needs no session and no credentials; any reply (even 401) shows the server is alive.
        return (f"OPTIONS rtsp://{host}{path} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: vigil-ingest\r\n\r\n").encode()
    # GET, not HEAD: some cameras' servers never answer HEAD. The first byte of the answer is all that is read.
    return f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: vigil-ingest\r\n\r\n".encode()


def why_unanswered(source: str, timeout_s: float) -> str | None:
    """None when the source answered (or is not a network source: files and devices are not checked);
    else why not, in words for the camera's status."""
    parts = urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        return f"bad port in {scheme}://{parts.hostname}"
    where = f"{parts.hostname}:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s) as raw:
            connection = raw
            if scheme == "https":
                # Cameras' certificates are mostly self-signed; FFmpeg does not verify them either. Only
                # liveness is asked here: the handshake completing is part of the answer.
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                connection = context.wrap_socket(raw, server_hostname=parts.hostname)
            connection.settimeout(max(0.1, deadline - time.monotonic()))
            connection.sendall(_request(scheme, parts.netloc.rpartition("@")[2], parts.path or "/"))
            if not connection.recv(1):
                return f"{where} closed the connection without answering"
    except socket.timeout:
        return f"no answer from {where} within {timeout_s:g}s"
    except OSError as exc:  # refused, unreachable, unknown host, TLS failure
        return f"cannot connect to {where}: {exc.strerror or exc}"
    return None
