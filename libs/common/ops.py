"""The ops HTTP endpoint every service runs: /metrics (Prometheus), /livez and /readyz.

Liveness means "the process is making progress": a service registers checks such as "the consume loop
ticked in the last N seconds", so a wedged loop gets the pod restarted. Readiness means "it can do its job
now": the model is loaded, Kafka is reachable, the store is open."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

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
    def __init__(self, host: str, port: int, health: Health) -> None:
        server_health = health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?")[0]
                if path == "/metrics":
                    self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
                elif path in ("/livez", "/readyz"):
                    checks = server_health.liveness if path == "/livez" else server_health.readiness
                    ok, report = server_health.evaluate(checks)
                    body = json.dumps({"ok": ok, "checks": report}).encode()
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b'{"error": "not found"}', "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:  # probes every few seconds would flood the log
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="ops-http", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> "OpsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
