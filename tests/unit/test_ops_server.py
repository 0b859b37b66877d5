"""The ops endpoint on the shared HTTP base: /livez and /readyz from the service's checks (read at each request),
/metrics for Prometheus, JSON for the rest."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

from libs.common.ops import Health, Heartbeat, OpsServer, flag_check


def get(port: int, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_probes_report_each_check_and_metrics_are_prometheus_text():
    health, ready = Health(), threading.Event()
    health.liveness["loop"] = Heartbeat(max_age_s=60).check
    health.readiness["model"] = flag_check(ready, "model loaded")
    server = OpsServer("127.0.0.1", 0, health).start()
    try:
        status, content_type, body = get(server.port, "/livez")
        assert (status, content_type) == (200, "application/json")
        assert json.loads(body)["ok"] is True and json.loads(body)["checks"]["loop"]["ok"] is True

        def broken():
            raise OSError("store gone")

        health.readiness["store"] = broken  # added after start: still asked
        status, _, body = get(server.port, "/readyz")
        assert status == 503
        assert json.loads(body)["checks"] == {"model": {"ok": False, "detail": "not yet: model loaded"},
                                              "store": {"ok": False, "detail": "OSError: store gone"}}
        ready.set()
        del health.readiness["store"]
        assert get(server.port, "/readyz")[0] == 200

        status, content_type, body = get(server.port, "/metrics")
        assert status == 200 and content_type.startswith("text/plain") and b"# TYPE" in body
        status, _, body = get(server.port, "/nothing")
        assert (status, json.loads(body)) == (404, {"error": "no such endpoint: /nothing"})
    finally:
        server.stop()
