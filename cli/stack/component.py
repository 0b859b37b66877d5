"""What the local stack needs to know to run one component: how to install it, prepare its state, start it
and tell whether it is healthy. The supervisor (cli/stack/supervisor.py) owns the processes."""
from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class StackPaths:
    """Where a stack keeps things. `state` holds every byte of runtime data; `cache` holds downloads
    (jars, wheels' files, footage) that survive `make down` and can be shared between stacks."""

    state: Path
    cache: Path

    def data(self, component: str) -> Path:
        path = self.state / "data" / component
        path.mkdir(parents=True, exist_ok=True)
        return path

    def logs(self) -> Path:
        path = self.state / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class ComponentSpec:
    """One long-running process of the stack."""

    name: str
    argv: list[str]
    # Returns True once the component answers as it should (a port that accepts, a health endpoint).
    healthy: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    # One-time preparation of the state directory before the first start (e.g. formatting Kafka's log dir).
    prepare: Callable[[], None] | None = None
    start_timeout_s: float = 60.0



def port_accepts(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
