"""The ops HTTP endpoint every service runs: /metrics (Prometheus), /livez and /readyz.

Liveness means "the process is making progress": a service registers checks such as "the consume loop
ticked in the last N seconds", so a wedged loop gets the pod restarted. Readiness means "it can do its job
now": the model is loaded, Kafka is reachable, the store is open."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from libs.common.http import HttpServer, json_app

Check = Callable[[], tuple[bool, str]]


@dataclass
class Health:
    liveness: dict[str, Check] = field(default_factory=dict)
    readiness: dict[str, Check] = field(default_factory=dict)

    def evaluate(self, checks: dict[str, Check]) -> tuple[bool, dict[str, dict[str, object]]]:
        report: dict[str, dict[str, object]] = {}
        for name, check in checks.items():
            try:
                ok, detail = check()
            except Exception as exc:  # a failing check is a "no", never a 500
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            report[name] = {"ok": ok, "detail": detail}
        return all(r["ok"] for r in report.values()), report


class Heartbeat:
    """A loop calls beat() every iteration; the liveness check fails when it has not for max_age_s."""

    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self._last = time.monotonic()

    def beat(self) -> None:
        self._last = time.monotonic()

    def check(self) -> tuple[bool, str]:
        age = time.monotonic() - self._last
        return age < self.max_age_s, f"last beat {age:.1f}s ago"


def flag_check(flag: threading.Event, what: str) -> Check:
    return lambda: (flag.is_set(), what if flag.is_set() else f"not yet: {what}")


class OpsServer:
    """/metrics, /livez and /readyz on host:port (no request has a body: any is refused above 1 KiB)."""

    def __init__(self, host: str, port: int, health: Health) -> None:
        def metrics(_request: Request) -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

        def probe(kind: str) -> Callable[[Request], Response]:
            def answer(_request: Request) -> Response:  # checks may block briefly: run on a worker thread
                ok, report = health.evaluate(getattr(health, kind))
                return JSONResponse({"ok": ok, "checks": report}, status_code=200 if ok else 503)
            return answer

        app = json_app([Route("/metrics", metrics, methods=["GET"]),
                        Route("/livez", probe("liveness"), methods=["GET"]),
                        Route("/readyz", probe("readiness"), methods=["GET"])], max_body_bytes=1024)
        self._server = HttpServer(app, host, port, name="ops-http", stop_timeout_s=2)

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> "OpsServer":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()
