"""What every service's __main__ does around its own work: logging, the ops server, signal handling."""
from __future__ import annotations

import threading
from dataclasses import dataclass

from libs.common.logs import configure_logging, get_logger
from libs.common.ops import Health, OpsServer
from libs.common.settings import ServiceSettings
from libs.common.shutdown import stop_on_signals


@dataclass
class ServiceRuntime:
    name: str
    health: Health
    ops: OpsServer
    stop: threading.Event

    def close(self) -> None:
        self.ops.stop()
        get_logger().info("stopped")


def start_service(name: str, settings: ServiceSettings) -> ServiceRuntime:
    configure_logging(name, settings.log_level)
    health = Health()
    ops = OpsServer(settings.ops_host, settings.ops_port, health).start()
    stop = stop_on_signals()
    get_logger().info("starting", ops=f"http://{settings.ops_host}:{ops.port}")
    return ServiceRuntime(name, health, ops, stop)
