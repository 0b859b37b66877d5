"""Who may use the query API and the dashboard, and how much they may send: a token when one is configured (header
for `vigil query`, a cookie for browsers), no serving beyond loopback without one, and a capped request body."""
from __future__ import annotations

import http.client
import json
import select
import socket
import urllib.request

import pytest

from services.metrics.api import MAX_QUERY_BODY_BYTES, QueryApi
from services.metrics.store import MetricsStore

TOKEN = "dashboard-token-0123456789"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = MetricsStore.open(tmp_path_factory.mktemp("chdb"), query_max_rows=100, query_max_seconds=5)
    store.migrate()
    yield store
    store.close()


@pytest.fixture(scope="module")
def guarded(store):
    api = QueryApi(store, "127.0.0.1", 0, token=TOKEN).start()
    yield api.port
    api.stop()


@pytest.fixture(scope="module")
def open_api(store):
    api = QueryApi(store, "127.0.0.1", 0).start()
    yield api.port
    api.stop()


def call(port, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


QUERY = json.dumps({"sql": "SELECT count() AS n FROM inference_events"}).encode()
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("method, path, body", [
    ("POST", "/api/query", QUERY), ("GET", "/api/query?named=fps_per_camera", None), ("GET", "/api/named", None),
    ("GET", "/api/frames", None), ("GET", "/api/frames/demo.jpg", None), ("GET", "/", None),
    ("GET", "/static/app.js", None),
])
def test_with_a_token_configured_nothing_is_served_without_it(guarded, method, path, body):
    assert call(guarded, method, path, body)[0] == 401
    assert call(guarded, method, path, body, {"Authorization": "Bearer not-the-token"})[0] == 401


def test_the_token_in_the_authorization_header_runs_the_query(guarded):
    status, _, body = call(guarded, "POST", "/api/query", QUERY, BEARER)
    assert (status, json.loads(body)) == (200, {"columns": ["n"], "rows": [[0]]})


def test_a_browser_opening_the_dashboard_with_the_token_gets_a_cookie_for_its_requests(guarded):
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(f"http://127.0.0.1:{guarded}/?token={TOKEN}", timeout=30) as response:
        assert response.url == f"http://127.0.0.1:{guarded}/" and b"<title>Vigil</title>" in response.read()
    for path in ("/static/app.js", "/api/named"):
        with opener.open(f"http://127.0.0.1:{guarded}{path}", timeout=30) as response:
            assert response.status == 200
    request = urllib.request.Request(f"http://127.0.0.1:{guarded}/api/query", data=QUERY, method="POST")
    with opener.open(request, timeout=30) as response:
        assert json.loads(response.read())["rows"] == [[0]]


def test_without_a_token_it_serves_on_loopback_only(open_api, store):
    assert call(open_api, "POST", "/api/query", QUERY)[0] == 200
    with pytest.raises(ValueError, match="VIGIL_METRICS_API_TOKEN"):
        QueryApi(store, "192.0.2.1", 0)  # refused before binding (TEST-NET: not an address of this machine)


def test_a_query_body_above_the_cap_is_refused_unread(guarded):
    padding = " " * MAX_QUERY_BODY_BYTES
    big = json.dumps({"sql": "SELECT 1" + padding}).encode()
    status, _, body = call(guarded, "POST", "/api/query", big, BEARER)
    assert status == 413 and "at most" in json.loads(body)["error"]


def test_a_chunked_query_body_is_counted_as_it_arrives(guarded):
    with socket.create_connection(("127.0.0.1", guarded), timeout=30) as sock:
        sock.sendall(f"POST /api/query HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"a" * 4096
        for _ in range(MAX_QUERY_BODY_BYTES // len(chunk) + 2):
            # Stop sending once the server has answered: it closes without reading the rest, and more bytes
            # sent into a closed socket make it reset the connection, losing its answer.
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        answer = b""
        while part := sock.recv(4096):
            answer += part
    assert answer.startswith(b"HTTP/1.1 413")
