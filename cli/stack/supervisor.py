"""Starts, watches and stops the processes of a local stack.

Each component runs in its own session (process group) with its output in logs/<name>.log; its pid and
start time are recorded under pids/, so `down` stops exactly what `up` started, even from another shell,
and never a stranger that was given a recycled pid."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cli.stack.component import ComponentSpec, StackPaths


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    running: bool
    healthy: bool


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing one.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie has finished; only its parent's wait() is missing
        return None
    return int(fields[19])


class Supervisor:
    def __init__(self, paths: StackPaths, specs: list[ComponentSpec]) -> None:
        self.paths = paths
        self.specs = specs
        self.pid_dir = paths.state / "pids"
        self.pid_dir.mkdir(parents=True, exist_ok=True)

    # -- records of what we started ---------------------------------------------------------------

    def _record_path(self, name: str) -> Path:
        return self.pid_dir / f"{name}.json"

    def running_pid(self, name: str) -> int | None:
        """The pid of the component this supervisor started, if that very process still runs."""
        path = self._record_path(name)
        if not path.exists():
            return None
        record = json.loads(path.read_text())
        if _start_ticks(record["pid"]) != record["start_ticks"]:
            path.unlink(missing_ok=True)  # it died, or the pid now belongs to someone else
            return None
        return record["pid"]

    # -- up / down / status -----------------------------------------------------------------------

    def up(self, progress=print) -> None:
        for spec in self.specs:
            pid = self.running_pid(spec.name)
            if pid is not None:
                progress(f"  {spec.name:<12} already running (pid {pid})")
            else:
                pid = self._start(spec)
            self._wait_healthy(spec, pid, progress)

    def _start(self, spec: ComponentSpec) -> int:
        marker = self.paths.data(spec.name) / ".prepared"
        if spec.prepare and not marker.exists():
            spec.prepare()
            marker.touch()
        log_path = self.paths.logs() / f"{spec.name}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                spec.argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=spec.cwd, env={**os.environ, **spec.env}, start_new_session=True,
            )
        self._record_path(spec.name).write_text(json.dumps({
            "pid": process.pid, "start_ticks": _start_ticks(process.pid), "argv": spec.argv,
        }))
        return process.pid

    def _wait_healthy(self, spec: ComponentSpec, pid: int, progress) -> None:
        started = time.monotonic()
        while time.monotonic() - started < spec.start_timeout_s:
            if spec.healthy():
                progress(f"  {spec.name:<12} healthy  (pid {pid}, {time.monotonic() - started:.1f}s)")
                return
            if self.running_pid(spec.name) is None:
                raise RuntimeError(f"{spec.name} exited during start; see {self.paths.logs() / (spec.name + '.log')}:\n"
                                   + self.log_tail(spec.name))
            time.sleep(0.25)
        raise TimeoutError(f"{spec.name} not healthy after {spec.start_timeout_s:.0f}s; see "
                           f"{self.paths.logs() / (spec.name + '.log')}:\n" + self.log_tail(spec.name))

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.paths.logs() / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def down(self, timeout_s: float = 30.0, progress=print) -> None:
        # Reverse order: services stop (and flush to Kafka) before Kafka does.
        for spec in reversed(self.specs):
            self.stop(spec.name, timeout_s, progress)

    def stop(self, name: str, timeout_s: float = 30.0, progress=print, sig: int = signal.SIGTERM) -> None:
        pid = self.running_pid(name)
        if pid is None:
            return
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._group_alive(pid):
            time.sleep(0.1)
        if self._group_alive(pid):
            progress(f"  {name:<12} did not stop in {timeout_s:.0f}s: killing")
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            while self._group_alive(pid):
                time.sleep(0.1)
        self._record_path(name).unlink(missing_ok=True)
        progress(f"  {name:<12} stopped")

    def kill(self, name: str) -> None:
        """SIGKILL, no grace: for tests of crash recovery."""
        self.stop(name, timeout_s=10, progress=lambda *_: None, sig=signal.SIGKILL)

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # Members that have exited but not been reaped still count for killpg; reap our own children.
        try:
            while os.waitpid(-pgid, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                fields = stat[stat.rindex(")") + 2:].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    return True
        return False

    def status(self) -> list[ComponentStatus]:
        result = []
        for spec in self.specs:
            pid = self.running_pid(spec.name)
            healthy = False
            if pid is not None:
                try:
                    healthy = bool(spec.healthy())
                except Exception:
                    healthy = False
            result.append(ComponentStatus(spec.name, pid, pid is not None, healthy))
        return result


def python_module_argv(module: str) -> list[str]:
    return [sys.executable, "-m", module]
