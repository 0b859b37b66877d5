"""The shared HTTP base (libs/common/http.py) against real uvicorn servers on loopback, with real HTTP clients:
body cap (declared and streamed), JSON errors, token auth with roles and the browser cookie, timeouts, stop."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from structlog.testing import capture_logs
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from libs.common.http import HttpServer, TokenAuth, is_loopback, json_app, protect, require_token_off_loopback, \
    static_files

READ, ADMIN = "read-token-1234", "admin-token-5678"
AUTH = TokenAuth({READ: {"read"}, ADMIN: {"read", "admin"}}, cookie="test_token")


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await request.body())})


def boom(_request: Request) -> JSONResponse:
    raise RuntimeError("secret internals /etc/passwd")


def hello(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    static = tmp_path_factory.mktemp("static")
    (static / "page.html").write_text("<p>hi</p>")
    app = json_app([
        Route("/echo", echo, methods=["POST"]),
        Route("/boom", boom, methods=["GET"]),
        Route("/open", hello, methods=["GET"]),
        Route("/read", protect(hello, AUTH, "read"), methods=["GET"]),
        Route("/admin", protect(hello, AUTH, "admin"), methods=["GET", "POST"]),
        static_files("/static", static),
        static_files("/private", static, AUTH, "admin"),
    ], max_body_bytes=1000, body_timeout_s=1.0)
    server = HttpServer(app, "127.0.0.1", 0, name="test-http", header_timeout_s=1.0, stop_timeout_s=2).start()
    yield server
    server.stop()


def call(server, method, path, body=None, headers=None, chunked=False):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def read_until_closed(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(4096):
        answer += chunk
    return answer


def test_a_body_within_the_cap_is_read(server):
    status, _, body = call(server, "POST", "/echo", b"x" * 1000)
    assert (status, json.loads(body)) == (200, {"bytes": 1000})


def test_a_declared_length_above_the_cap_is_refused_413_in_json(server):
    status, headers, body = call(server, "POST", "/echo", b"x" * 1001)
    assert status == 413 and headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": "body of 1001 bytes; at most 1000"}


def test_a_chunked_body_without_content_length_is_counted_as_it_streams(server):
    # 1,200 bytes in chunks, no Content-Length, and the body not even finished: answered as soon as it goes over.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(4):
            sock.sendall(b"12c\r\n" + b"y" * 300 + b"\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413") and b'"error":"body of more than 1000 bytes"' in answer
    status, _, body = call(server, "POST", "/echo", (b"y" * 300 for _ in range(3)), chunked=True)
    assert (status, json.loads(body)) == (200, {"bytes": 900})


def test_unknown_paths_wrong_methods_and_crashes_answer_json_without_internals(server):
    status, headers, body = call(server, "GET", "/nowhere")
    assert (status, json.loads(body)) == (404, {"error": "no such endpoint: /nowhere"})
    status, headers, body = call(server, "GET", "/echo")
    assert status == 405 and "not allowed" in json.loads(body)["error"]
    status, headers, body = call(server, "GET", "/boom")
    assert (status, json.loads(body)) == (500, {"error": "internal error"})
    assert headers["content-type"] == "application/json"
    status, _, body = call(server, "GET", "/static/missing.js")
    assert status == 404 and json.loads(body)["error"]


def test_a_crash_is_logged_once_with_its_traceback_and_the_server_keeps_serving(server):
    with capture_logs() as logs:
        call(server, "GET", "/boom")
        deadline = time.monotonic() + 5  # logged once the client has its answer
        while time.monotonic() < deadline and not logs:
            time.sleep(0.02)
    crashes = [entry for entry in logs if entry["event"] == "unhandled error in an HTTP endpoint"]
    assert [(c["path"], c["log_level"], c["exc_info"]) for c in crashes] == [("/boom", "error", True)]
    assert call(server, "GET", "/open")[:1] == (200,)


def test_static_files_are_served_and_nothing_outside_their_directory(server):
    status, headers, body = call(server, "GET", "/static/page.html")
    assert (status, body) == (200, b"<p>hi</p>") and headers["content-type"].startswith("text/html")
    assert call(server, "GET", "/static/../../etc/passwd")[0] == 404


@pytest.mark.parametrize("headers, expected", [
    ({}, 401),
    ({"Authorization": "Bearer wrong-token"}, 401),
    ({"Authorization": f"Basic {READ}"}, 401),
    ({"Authorization": f"Bearer {READ}"}, 200),
    ({"Authorization": f"Bearer {ADMIN}"}, 200),
])
def test_a_read_route_needs_a_token_granting_read(server, headers, expected):
    status, answer_headers, body = call(server, "GET", "/read", headers=headers)
    assert status == expected
    if status == 401:
        assert answer_headers["www-authenticate"] == "Bearer" and "token" in json.loads(body)["error"]


def test_a_token_without_the_routes_role_is_forbidden_not_unauthorized(server):
    status, _, body = call(server, "GET", "/admin", headers={"Authorization": f"Bearer {READ}"})
    assert status == 403 and "admin" in json.loads(body)["error"]
    assert call(server, "POST", "/admin", b"", headers={"Authorization": f"Bearer {ADMIN}"})[0] == 200


def test_a_browser_logs_in_with_token_in_the_url_and_then_carries_a_cookie(server):
    status, headers, _ = call(server, "GET", f"/read?a=1&token={READ}")
    assert status == 303 and headers["location"] == "/read?a=1", "redirected to the page without the token"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"test_token={READ};") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert call(server, "GET", "/read", headers={"Cookie": f"test_token={READ}"})[:1] == (200,)
    assert call(server, "GET", "/read", headers={"Cookie": "test_token=forged"})[0] == 401
    assert call(server, "GET", "/read?token=forged")[0] == 401
    # urllib follows the redirect but keeps no cookies: a cookie jar does, as a browser would.
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(f"http://127.0.0.1:{server.port}/read?token={READ}", timeout=10) as response:
        assert (response.status, response.read(), response.url) == (200, b"hello",
                                                                   f"http://127.0.0.1:{server.port}/read")


def test_protected_static_files_take_the_token_the_same_ways(server):
    assert call(server, "GET", "/private/page.html")[0] == 401
    assert call(server, "GET", "/private/page.html", headers={"Cookie": f"test_token={READ}"})[0] == 403
    status, _, body = call(server, "GET", "/private/page.html", headers={"Cookie": f"test_token={ADMIN}"})
    assert (status, body) == (200, b"<p>hi</p>")
    status, headers, _ = call(server, "GET", f"/private/page.html?token={ADMIN}")
    assert (status, headers["location"]) == (303, "/private/page.html")


def test_token_roles_are_looked_up_whole():
    assert AUTH.roles(READ) == {"read"} and AUTH.roles(ADMIN) == {"read", "admin"}
    assert AUTH.roles(READ[:-1]) is None and AUTH.roles(READ + "x") is None and AUTH.roles("") is None
    with pytest.raises(ValueError):
        TokenAuth({"": {"read"}})


def test_no_token_is_allowed_only_on_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    require_token_off_loopback("127.0.0.1", None, "VIGIL_X_TOKEN")
    require_token_off_loopback("0.0.0.0", "t", "VIGIL_X_TOKEN")
    with pytest.raises(ValueError, match="VIGIL_X_TOKEN"):
        require_token_off_loopback("0.0.0.0", None, "VIGIL_X_TOKEN")


def test_a_client_that_does_not_finish_its_headers_is_disconnected(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /open HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.monotonic()
        assert sock.recv(1024) == b"", "closed by the server"
        assert time.monotonic() - started < 5


def test_a_body_that_stops_arriving_is_answered_408(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly some")
        started = time.monotonic()
        answer = read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 408") and b"stopped arriving" in answer
        assert time.monotonic() - started < 5


def test_requests_on_a_kept_alive_connection_are_not_held_back_by_nagles_algorithm(server):
    # Without TCP_NODELAY on the server's sockets every response after a connection's first waited for the
    # client's delayed ACK: 40+ ms each (measured 22 requests/s; 2,500/s with it).
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    took = []
    try:
        for _ in range(21):
            started = time.perf_counter()
            connection.request("GET", "/open")
            connection.getresponse().read()
            took.append(time.perf_counter() - started)
    finally:
        connection.close()
    assert sorted(took[1:])[10] < 0.025, f"median {sorted(took[1:])[10] * 1000:.0f} ms"


def test_a_port_in_use_fails_at_construction_and_port_zero_gets_a_free_one(server):
    with pytest.raises(OSError):
        HttpServer(json_app([]), "127.0.0.1", server.port)
    other = HttpServer(json_app([]), "127.0.0.1", 0)
    assert other.port not in (0, server.port)
    other.stop()  # never started: releases the socket


def stop_during_a_request(endpoint, stop_timeout_s: float):
    """Starts a server and a client calling `endpoint`, stops the server mid-request: (server, how long stop
    took, the client's thread, what the client got once that thread ends)."""
    server = HttpServer(json_app([Route("/slow", endpoint)]), "127.0.0.1", 0, stop_timeout_s=stop_timeout_s).start()
    results = []
    client = threading.Thread(target=lambda: results.append(_get_status(server.port, "/slow")))
    client.start()
    time.sleep(0.2)
    started = time.monotonic()
    server.stop()
    return server, time.monotonic() - started, client, results


def test_stop_ends_the_server_within_its_bound_even_with_a_request_in_flight():
    release = threading.Event()

    def hangs(_request):
        release.wait(30)
        return PlainTextResponse("late")

    server, took, client, _ = stop_during_a_request(hangs, stop_timeout_s=1)
    release.set()
    client.join(10)
    assert took < 1 + 2.5 and not server.listening
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/slow", timeout=2)


def test_a_request_in_flight_is_finished_before_stop_returns_when_it_ends_in_time():
    def slowish(_request):
        time.sleep(0.5)
        return PlainTextResponse("done")

    _, _, client, results = stop_during_a_request(slowish, stop_timeout_s=5)
    client.join(10)
    assert results == [200]


def _get_status(port: int, path: str) -> int | str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status
    except Exception as exc:  # noqa: BLE001 (the test looks at what the client saw)
        return type(exc).__name__
