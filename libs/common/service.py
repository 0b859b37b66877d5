"""What every service's __main__ does around its own work: logging, the ops server, signals, and supervising the
service's tasks (its loops, each on a thread of its own).

A service is only as alive as its tasks: when any task raises, or returns while the service is meant to be
running, the runtime stops the others and the process exits non-zero, so the orchestrator restarts it instead of
leaving a process that answers /livez with half its loops dead. SIGTERM stops every task, runs the cleanups and
exits 0 (non-zero when a task did not stop within the grace period)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from libs.common.logs import configure_logging, get_logger
from libs.common.ops import Health, OpsServer
from libs.common.settings import ServiceSettings
from libs.common.shutdown import stop_on_signals

Task = Callable[[threading.Event], None]

log = get_logger(__name__)


@dataclass
class _RunningTask:
    name: str
    thread: threading.Thread | None = None
    failure: str | None = None


@dataclass
class ServiceRuntime:
    name: str
    health: Health
    ops: OpsServer
    stop: threading.Event
    shutdown_timeout_s: float = 20.0
    _tasks: list[_RunningTask] = field(default_factory=list)
    _cleanups: list[tuple[str, Callable[[], object]]] = field(default_factory=list)
    _started: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.health.readiness["started"] = lambda: (self._started.is_set(),
                                                    "running" if self._started.is_set() else "starting")

    def start_task(self, name: str, task: Task) -> None:
        """Runs task(stop) on a thread of its own. It must run until `stop` is set; ending earlier, or raising,
        stops the whole service with a non-zero exit. Its liveness is part of /livez."""
        running = _RunningTask(name)
        running.thread = threading.Thread(target=self._run_task, args=(running, task), name=name, daemon=True)
        self._tasks.append(running)
        running.thread.start()
        self.health.liveness[f"task:{name}"] = lambda: (running.thread.is_alive() or self.stop.is_set(),
                                                        running.failure or "running")

    def on_stop(self, what: str, cleanup: Callable[[], object]) -> None:
        """Called once every task has stopped, last registered first (what is built last is closed first)."""
        self._cleanups.append((what, cleanup))

    def wait_until(self, event: threading.Event, timeout_s: float | None) -> bool:
        """Waits during start-up for `event`; False on timeout or as soon as the service is told to stop (a SIGTERM
        that lands while the service is still starting must not wait out a long start-up step)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not event.wait(0.2):
            if self.stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                return False
        return True

    def run(self) -> int:
        """Blocks until SIGTERM/SIGINT or a task's failure, stops everything; returns the process's exit code.
        Until it is called the service is not ready: start-up is not finished."""
        self._started.set()
        self.stop.wait()
        failed = [t for t in self._tasks if t.failure is not None]
        log.info("stopping", reason="task failed" if failed else "signal",
                 failed_tasks=[t.name for t in failed] or None)
        deadline = time.monotonic() + self.shutdown_timeout_s
        hung = []
        for running in self._tasks:
            running.thread.join(max(0.0, deadline - time.monotonic()))
            if running.thread.is_alive():
                hung.append(running.name)
        if hung:
            log.error("tasks did not stop within the grace period", tasks=hung,
                      grace_s=self.shutdown_timeout_s)
        for what, cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception:  # one failing cleanup must not skip the others (e.g. flushing a producer)
                log.exception("cleanup failed", what=what)
                failed.append(_RunningTask(what, failure="cleanup failed"))
        self.close()
        return 1 if failed or hung else 0

    def close(self) -> None:
        self.ops.stop()
        log.info("stopped")

    def _run_task(self, running: _RunningTask, task: Task) -> None:
        try:
            task(self.stop)
            if not self.stop.is_set():
                running.failure = "ended while the service was running"
                log.error("task ended while the service was running", task=running.name)
        except BaseException as exc:  # noqa: BLE001 (whatever kills a task kills the service, loudly)
            running.failure = f"{type(exc).__name__}: {exc}"
            log.exception("task failed", task=running.name)
        finally:
            self.stop.set()


def start_service(name: str, settings: ServiceSettings) -> ServiceRuntime:
    configure_logging(name, settings.log_level)
    health = Health()
    ops = OpsServer(settings.ops_host, settings.ops_port, health).start()
    stop = stop_on_signals()
    get_logger().info("starting", ops=f"http://{settings.ops_host}:{ops.port}")
    return ServiceRuntime(name, health, ops, stop, settings.shutdown_timeout_s)
