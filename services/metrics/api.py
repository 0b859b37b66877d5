"""The read-only query API over HTTP JSON, used by `vigil query` and by the dashboard it also serves.

  GET  /api/named                               the named queries and their parameters
  POST /api/query {"named": NAME, "parameters": {...}}   or GET /api/query?named=NAME&k=v...
  POST /api/query {"sql": "...", "parameters": {...}}    or GET /api/query?sql=...
       → {"columns": [...], "rows": [...]}
  GET  /api/frames                              cameras whose latest frame is held, with its size and time
  GET  /api/frames/<camera_id>.jpg[?frame_event_id=ID]   that camera's newest frame, or that frame if held
  GET  /  and  /static/...                      the dashboard (services/metrics/dashboard/)

With a token configured (VIGIL_METRICS_API_TOKEN) every path needs it: `Authorization: Bearer <token>` (what
`vigil query` sends), or the cookie a browser gets by opening the dashboard once as /?token=<token>. Without
one the API serves only on a loopback address. A request body above MAX_QUERY_BODY_BYTES is refused (413).

Ad-hoc SQL is refused unless it only reads the store's own tables; the engine itself enforces read-only, a
time limit and a row limit."""
from __future__ import annotations

import json
import uuid
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from libs.common.http import HttpServer, TokenAuth, json_app, json_error, protect, require_token_off_loopback, \
    static_files
from libs.common.logs import get_logger
from services.metrics.latest_frames import LatestFrames
from services.metrics.queries import NAMED_QUERIES, BadParameter, bind
from services.metrics.store import MetricsStore, QueryRefused

log = get_logger(__name__)

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"
# A query is SQL text and a few parameters: a few KiB; 64 KiB leaves room and keeps junk out.
MAX_QUERY_BODY_BYTES = 64 * 1024
TOKEN_SETTING = "VIGIL_METRICS_API_TOKEN"
# Cookies are per host, not per port: the name keeps the dashboard's apart from other services' on one host.
TOKEN_COOKIE = "vigil_metrics_token"
READ = "read"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity (an empty quantile is NaN): they become null."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class _JsonResponse(JSONResponse):
    """Rows hold dates, UUIDs, decimals and bytes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_json_default).encode()


class QueryApi:
    def __init__(self, store: MetricsStore, host: str, port: int, frames: LatestFrames | None = None,
                 dashboard_dir: Path = DASHBOARD_DIR, token: SecretStr | str | None = None,
                 max_body_bytes: int = MAX_QUERY_BODY_BYTES) -> None:
        token = token.get_secret_value() if isinstance(token, SecretStr) else token
        require_token_off_loopback(host, token, TOKEN_SETTING)
        self.store = store
        self.frames = frames
        auth = TokenAuth({token: {READ}}, cookie=TOKEN_COOKIE) if token else None
        routes = [
            Route("/api/query", protect(self._query, auth, READ), methods=["GET", "POST"]),
            Route("/api/named", protect(self._named, auth, READ), methods=["GET"]),
            Route("/api/frames", protect(self._frames, auth, READ), methods=["GET"]),
            Route("/api/frames/{camera_jpg:path}", protect(self._frame, auth, READ), methods=["GET"]),
            Route("/", protect(lambda _: FileResponse(dashboard_dir / "index.html"), auth, READ), methods=["GET"]),
            static_files("/static", dashboard_dir, auth, READ),
        ]
        self._server = HttpServer(json_app(routes, max_body_bytes=max_body_bytes), host, port, name="query-api")

    @property
    def port(self) -> int:
        return self._server.port

    async def _query(self, request: Request) -> Response:
        if request.method == "GET":
            query = dict(request.query_params)
            if "named" in query:
                name = query.pop("named")
                return self._answer(*await run_in_threadpool(self.run_named, name, query))
            return self._answer(*await run_in_threadpool(self.run_query, query.get("sql", ""), None))
        try:
            body = json.loads(await request.body() or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return json_error(400, f"body is not JSON: {exc}")
        if not isinstance(body, dict):
            return json_error(400, "the body must be a JSON object: {\"sql\": ...} or {\"named\": ...}")
        if body.get("named"):
            return self._answer(*await run_in_threadpool(self.run_named, body["named"], body.get("parameters")))
        return self._answer(*await run_in_threadpool(self.run_query, body.get("sql", ""), body.get("parameters")))

    def _named(self, _request: Request) -> Response:
        return self._answer(200, self.named_catalog())

    def _frames(self, _request: Request) -> Response:
        return self._answer(200, {"cameras": self.frames.cameras() if self.frames else []})

    def _frame(self, request: Request) -> Response:
        name = request.path_params["camera_jpg"]
        if not name.endswith(".jpg"):
            return json_error(404, f"no such endpoint: {request.url.path}")
        frame = self.frames.get(name[:-4], request.query_params.get("frame_event_id")) if self.frames else None
        if frame is None:
            return json_error(404, "no frame held for this camera")
        return Response(frame.jpeg, media_type="image/jpeg",
                        headers={"X-Frame-Event-Id": frame.frame_event_id, "Cache-Control": "no-store"})

    @staticmethod
    def _answer(status: int, payload: dict[str, Any]) -> Response:
        return _JsonResponse(payload, status_code=status)

    @staticmethod
    def named_catalog() -> dict[str, Any]:
        return {"queries": [
            {"name": q.name, "description": q.description,
             "parameters": {"since": "DateTime64 (default: an hour before until)", "until": "DateTime64 (default: now)",
                            **{name: f"{ch_type} (default: {default!r})"
                               for name, (ch_type, default) in q.parameters.items()}}}
            for q in NAMED_QUERIES.values()]}

    def run_named(self, name: str, parameters: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        query = NAMED_QUERIES.get(name)
        if query is None:
            return 404, {"error": f"no named query {name!r}; known: {', '.join(NAMED_QUERIES)}"}
        try:
            bound = bind(query, parameters)
        except BadParameter as exc:
            return 400, {"error": str(exc)}
        return self._run(lambda: self.store.query_readonly(query.sql, bound))

    def run_query(self, sql: str, parameters: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        if not sql.strip():
            return 400, {"error": "missing sql (or named)"}
        return self._run(lambda: self.store.query_adhoc(sql, parameters))

    @staticmethod
    def _run(run) -> tuple[int, dict[str, Any]]:
        try:
            result = run()
        except QueryRefused as exc:
            return 403, {"error": str(exc)}
        except Exception as exc:
            log.info("query failed", error=str(exc)[:300])
            return 400, {"error": str(exc).strip().splitlines()[0][:1000]}
        result["rows"] = [_finite(row) for row in result["rows"]]
        return 200, result

    def start(self) -> "QueryApi":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()
