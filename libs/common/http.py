"""The one HTTP base of every service: a Starlette app served by uvicorn on a thread of the service's process.

    app = json_app([Route("/api/things", things, methods=["GET"])], max_body_bytes=64 * 1024, auth=auth)
    server = HttpServer(app, "127.0.0.1", 0, name="things-http").start()   # bound and listening on return
    ... server.port ...
    server.stop()                                                         # within stop_timeout_s (+ a margin)

What every server gets, so a service writes only its endpoints:
- errors as JSON, `{"error": "..."}`, for every 4xx and 5xx: unknown paths (404), wrong methods (405),
  `HTTPException`s, and unhandled exceptions (500, "internal error": the traceback goes to the log, never to the
  client);
- a body cap: a Content-Length above it is answered 413 before the body is read, and a body without one
  (chunked) is counted as it streams and answered 413 as soon as it goes over;
- timeouts: a connection must send its request's headers within header_timeout_s (of connecting, or of the
  previous response), a body must keep arriving (each chunk within body_timeout_s, else 408), an idle
  keep-alive connection is closed after keep_alive_s, and at most max_connections are served at once (503
  beyond);
- token auth with roles (`TokenAuth`, `protect`): `Authorization: Bearer <token>`, or the cookie a browser gets
  by opening any protected page with `?token=<token>` once (it is redirected to the same page without it);
  401 without a valid token, 403 when the token lacks the route's role; tokens compared in constant time;
- static files (`static_files`);
- quiet logs: no access log (probes every few seconds would flood it), uvicorn's own messages from WARNING up.

Endpoints that block (a query, a Kafka delivery) are plain `def` functions, or call
`starlette.concurrency.run_in_threadpool`: the event loop must stay free for the other requests."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import ipaddress
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, request_response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from libs.common.logs import get_logger

log = get_logger(__name__)

TOKEN_PARAMETER = "token"


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- token auth ----------------------------------------------------------------------------------------------

def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenAuth:
    """Tokens and the roles each one grants, e.g. TokenAuth({"r-token": {"read"}, "a-token": {"read", "admin"}}).

    `cookie` names the browser cookie: cookies are per host, not per port, so two services on one host need two
    names."""

    def __init__(self, tokens: Mapping[str, Iterable[str]], cookie: str = "vigil_token") -> None:
        if not tokens or any(not token for token in tokens):
            raise ValueError("TokenAuth needs at least one token, and no empty one")
        self._grants = [(_digest(token), frozenset(roles)) for token, roles in tokens.items()]
        self.cookie = cookie

    def roles(self, token: str | None) -> frozenset[str] | None:
        """The roles `token` grants, or None for no or an unknown token. Every known token is compared, in
        constant time, whatever matches: the time taken says nothing about the tokens."""
        if not token:
            return None
        presented, found = _digest(token), None
        for digest, roles in self._grants:
            if hmac.compare_digest(presented, digest):
                found = roles
        return found

    @staticmethod
    def presented(connection: HTTPConnection, cookie: str) -> tuple[str | None, str]:
        """The token a request carries and where: the Authorization header, the query string, the cookie."""
        scheme, _, credentials = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip(), "header"
        if TOKEN_PARAMETER in connection.query_params:
            return connection.query_params[TOKEN_PARAMETER], "query"
        return connection.cookies.get(cookie), "cookie"


class Protected:
    """An ASGI app (an endpoint, a Mount's app) that only a token granting `role` reaches.

    A GET or HEAD with `?token=` and a valid token is redirected (303) to the same URL without it, setting the
    cookie (HttpOnly, SameSite=Lax): a browser then carries it on every request of the page, and the token
    leaves the address bar and history."""

    def __init__(self, app: ASGIApp, auth: TokenAuth, role: str) -> None:
        self.app, self.auth, self.role = app, auth, role

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        connection = HTTPConnection(scope)
        token, where = TokenAuth.presented(connection, self.auth.cookie)
        roles = self.auth.roles(token)
        if roles is None:
            said = "a token is required" if not token else "the token is not valid"
            raise HTTPException(401, f"{said}: send Authorization: Bearer <token>, or open the page once "
                                     f"with ?{TOKEN_PARAMETER}=<token>", headers={"WWW-Authenticate": "Bearer"})
        if self.role not in roles:
            raise HTTPException(403, f"the token does not grant the role {self.role!r}")
        if where == "query" and scope["method"] in ("GET", "HEAD"):
            rest = [(k, v) for k, v in connection.query_params.multi_items() if k != TOKEN_PARAMETER]
            # The full path: under a Mount, root_path already holds the mount's prefix, which path repeats.
            target = scope["path"] + (f"?{urlencode(rest)}" if rest else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(self.auth.cookie, token, httponly=True, samesite="lax", path="/")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def protect(endpoint: Any, auth: TokenAuth | None, role: str) -> Any:
    """`endpoint` (a function taking a Request, sync or async, or an ASGI app) behind `auth` with `role`; left
    open when auth is None (a service that has no token configured, on loopback)."""
    if auth is None:
        return endpoint
    app = request_response(endpoint) if inspect.isfunction(endpoint) or inspect.ismethod(endpoint) else endpoint
    return Protected(app, auth, role)


def require_token_off_loopback(host: str, token: str | None, setting: str) -> None:
    """Refuses to serve beyond this machine without a token: raises ValueError naming the setting to set."""
    if not token and not is_loopback(host):
        raise ValueError(f"refusing to serve on {host} without a token: set {setting} (or bind a loopback "
                         "address such as 127.0.0.1)")


def static_files(path: str, directory: Path, auth: TokenAuth | None = None, role: str = "") -> Mount:
    """Files under `directory` at `path`/... (nothing outside it: no `..`, no symlinks out), behind `auth` with
    `role` when auth is given."""
    return Mount(path, app=protect(StaticFiles(directory=directory, follow_symlink=False), auth, role))


# --- the app: JSON errors, body cap ---------------------------------------------------------------------------

async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.url.path}"
    elif exc.status_code == 405 and message == "Method Not Allowed":
        message = f"{request.method} is not allowed on {request.url.path}"
    return json_error(exc.status_code, message, exc.headers)


async def _internal_error(_request: Request, _exc: Exception) -> Response:
    return json_error(500, "internal error")


class _BodyLimit:
    """413 for a body above max_bytes, counted as it streams (Content-Length is checked first, not trusted);
    408 when a body stops arriving for timeout_s."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await json_error(413, f"body of {int(length)} bytes; at most {self.max_bytes}",
                             {"Connection": "close"})(scope, receive, send)
            return
        received, complete = 0, False

        async def limited_receive() -> Message:
            nonlocal received, complete
            if complete:  # the body is in: later receives wait for a disconnect, as long as the response takes
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except TimeoutError:
                raise HTTPException(408, f"the request body stopped arriving for {self.timeout_s:g}s",
                                    {"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise HTTPException(413, f"body of more than {self.max_bytes} bytes", {"Connection": "close"})
            else:
                complete = True
            return message

        await self.app(scope, limited_receive, send)


class _LogUnhandled:
    """Outermost: an exception no handler took is logged here, once, with its traceback (Starlette has already
    answered 500 in JSON), and goes no further, so uvicorn does not log it again as plain text."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception:  # noqa: BLE001 (the client has its 500; the log gets the why)
            log.exception("unhandled error in an HTTP endpoint", method=scope.get("method"), path=scope.get("path"))


def json_app(routes: Sequence[BaseRoute], max_body_bytes: int = 64 * 1024, body_timeout_s: float = 30.0,
             middleware: Sequence[Middleware] = ()) -> ASGIApp:
    """A Starlette app of `routes` with JSON errors, the body cap and the body timeout."""
    app = Starlette(
        routes=list(routes),
        middleware=[Middleware(_BodyLimit, max_bytes=max_body_bytes, timeout_s=body_timeout_s), *middleware],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    return _LogUnhandled(app)


# --- the server ----------------------------------------------------------------------------------------------

class _Config(uvicorn.Config):
    header_timeout_s: float = 10.0


class _H11WithHeaderTimeout(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with a deadline for a request's headers (uvicorn itself only closes idle
    keep-alive connections, so a client that sends its headers a byte at a time would hold a connection for
    ever)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect_request(None)

    def on_response_complete(self) -> None:
        previous = self.cycle
        super().on_response_complete()
        self._expect_request(previous)

    def _expect_request(self, previous: object) -> None:
        def expire() -> None:
            if self.cycle is previous and not self.transport.is_closing():
                self.transport.close()

        self.loop.call_later(self.config.header_timeout_s, expire)  # type: ignore[attr-defined]


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bound and listening. Made with proto=IPPROTO_TCP, as uvicorn's own would be: asyncio sets TCP_NODELAY only
    on such sockets, and without it every response after a connection's first waits ~40 ms (Nagle's algorithm
    against the client's delayed ACK)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """`app` served on host:port by uvicorn, on a thread of its own. The socket is bound at construction, so a
    port already taken fails the service at start; port 0 picks a free one (`.port` tells which)."""

    def __init__(self, app: ASGIApp, host: str, port: int, name: str = "http", keep_alive_s: int = 5,
                 header_timeout_s: float = 10.0, stop_timeout_s: float = 5.0, max_connections: int = 256) -> None:
        self.name = name
        self.host = host
        self.stop_timeout_s = stop_timeout_s
        self._socket = _listening_socket(host, port)
        config = _Config(
            app, loop="asyncio", http=_H11WithHeaderTimeout, ws="none", lifespan="off",
            log_config=None, log_level="warning", access_log=False,
            proxy_headers=False, server_header=False,
            timeout_keep_alive=keep_alive_s, timeout_graceful_shutdown=max(1, round(stop_timeout_s)),
            limit_concurrency=max_connections,
        )
        config.header_timeout_s = header_timeout_s
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.port: int = self._socket.getsockname()[1]

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException:  # noqa: BLE001 (uvicorn exits with SystemExit when it cannot start)
            log.exception("HTTP server failed", server=self.name)

    @property
    def listening(self) -> bool:
        return self._server.started and not self._server.should_exit and self._thread.is_alive()

    def start(self, timeout_s: float = 10.0) -> "HttpServer":
        """Returns once the server accepts requests."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._socket.close()
                raise RuntimeError(f"{self.name}: the HTTP server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stops accepting, lets the requests in flight finish for up to stop_timeout_s, then ends them."""
        if not self._thread.is_alive():
            self._socket.close()
            return
        self._server.should_exit = True
        self._thread.join(self.stop_timeout_s + 2.0)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(2.0)
        if self._thread.is_alive():
            log.error("HTTP server did not stop", server=self.name)
