"""The read-only query API over HTTP JSON, used by `vigil query` (and by the dashboard later).

POST /api/query {"sql": "...", "parameters": {...}} or GET /api/query?sql=... → {"columns": [...], "rows": [...]}.
The engine itself enforces read-only, a time limit and a row limit, so no parsing of SQL is trusted here."""
from __future__ import annotations

import json
import threading
import uuid
from datetime import date, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from libs.common.logs import get_logger
from services.metrics.store import MetricsStore, QueryRefused

log = get_logger(__name__)


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


class QueryApi:
    def __init__(self, store: MetricsStore, host: str, port: int) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                if url.path == "/api/query":
                    sql = parse_qs(url.query).get("sql", [""])[0]
                    self._answer(*api.run_query(sql, None))
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
                self._answer(*api.run_query(body.get("sql", ""), body.get("parameters")))

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload, default=_json_default).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.store = store
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="query-api", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def run_query(self, sql: str, parameters: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        if not sql.strip():
            return 400, {"error": "missing sql"}
        try:
            return 200, self.store.query_readonly(sql, parameters)
        except QueryRefused as exc:
            return 403, {"error": str(exc)}
        except Exception as exc:
            log.info("query failed", error=str(exc)[:300])
            return 400, {"error": str(exc).strip().splitlines()[0][:1000]}

    def start(self) -> "QueryApi":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
