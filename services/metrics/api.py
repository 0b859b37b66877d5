"""The read-only query API over HTTP JSON, used by `vigil query` and by the dashboard it also serves.

  GET  /api/named                               the named queries and their parameters
  POST /api/query {"named": NAME, "parameters": {...}}   or GET /api/query?named=NAME&k=v...
  POST /api/query {"sql": "...", "parameters": {...}}    or GET /api/query?sql=...
       → {"columns": [...], "rows": [...]}
  GET  /api/frames                              cameras whose latest frame is held, with its size and time
  GET  /api/frames/<camera_id>.jpg[?frame_event_id=ID]   that camera's newest frame, or that frame if held
  GET  /  and  /static/...                      the dashboard (services/metrics/dashboard/)

Ad-hoc SQL is refused unless it only reads the store's own tables; the engine itself enforces read-only, a
time limit and a row limit."""
from __future__ import annotations

import json
import mimetypes
import threading
import uuid
from datetime import date, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from libs.common.logs import get_logger
from services.metrics.latest_frames import LatestFrames
from services.metrics.queries import NAMED_QUERIES, BadParameter, bind
from services.metrics.store import MetricsStore, QueryRefused

log = get_logger(__name__)

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"


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


class QueryApi:
    def __init__(self, store: MetricsStore, host: str, port: int, frames: LatestFrames | None = None,
                 dashboard_dir: Path = DASHBOARD_DIR) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/api/query":
                    if "named" in query:
                        name = query.pop("named")
                        self._answer(*api.run_named(name, query))
                    else:
                        self._answer(*api.run_query(query.get("sql", ""), None))
                elif url.path == "/api/named":
                    self._answer(200, api.named_catalog())
                elif url.path == "/api/frames":
                    self._answer(200, {"cameras": api.frames.cameras() if api.frames else []})
                elif url.path.startswith("/api/frames/") and url.path.endswith(".jpg"):
                    camera_id = unquote(url.path[len("/api/frames/"):-4])
                    frame = api.frames.get(camera_id, query.get("frame_event_id")) if api.frames else None
                    if frame is None:
                        self._answer(404, {"error": "no frame held for this camera"})
                    else:
                        self._send(200, frame.jpeg, "image/jpeg", cache=False,
                                   headers={"X-Frame-Event-Id": frame.frame_event_id})
                elif url.path == "/" or url.path.startswith("/static/"):
                    self._static("index.html" if url.path == "/" else url.path[len("/static/"):])
                else:
                    self._answer(404, {"error": f"no such endpoint: {url.path}"})

            def do_POST(self) -> None:  # noqa: N802
                if urlparse(self.path).path != "/api/query":
                    self._answer(404, {"error": "no such endpoint"})
                    return
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                except json.JSONDecodeError as exc:
                    self._answer(400, {"error": f"body is not JSON: {exc}"})
                    return
                if body.get("named"):
                    self._answer(*api.run_named(body["named"], body.get("parameters")))
                else:
                    self._answer(*api.run_query(body.get("sql", ""), body.get("parameters")))

            def _static(self, relative: str) -> None:
                path = (dashboard_dir / relative).resolve()
                if not path.is_relative_to(dashboard_dir.resolve()) or not path.is_file():
                    self._answer(404, {"error": f"no such file: {relative}"})
                    return
                content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                self._send(200, path.read_bytes(), content_type)

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                self._send(status, json.dumps(payload, default=_json_default).encode(), "application/json")

            def _send(self, status: int, body: bytes, content_type: str, cache: bool = True,
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                if not cache:
                    self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.store = store
        self.frames = frames
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="query-api", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

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
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
