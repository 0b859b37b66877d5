"""Runs one local-stack component (a ComponentSpec) for a test: prepares it, starts it in its own session,
waits until it is healthy, and always stops it again (SIGTERM to the process group, then SIGKILL), whatever
happens in between."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cli.stack.component import ComponentSpec


@dataclass
class RunningComponent:
    spec: ComponentSpec
    process: subprocess.Popen
    log_path: Path
    startup_s: float = 0.0
    returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def rss_mib(self) -> float:
        """Resident memory of the process (the component is one process, not counting short-lived children)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def stop_process_group(process: subprocess.Popen, grace_s: float = 15.0) -> int:
    """SIGTERM the whole session the process leads, wait, then SIGKILL what is left. Returns its exit code."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    # Children of the group may outlive the leader: kill whatever still carries its group id.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.wait()


@contextlib.contextmanager
def running(spec: ComponentSpec, log_dir: Path, *, grace_s: float = 15.0) -> Iterator[RunningComponent]:
    """Start `spec` (after its `prepare`), yield once `healthy()` holds, and stop it on the way out."""
    if spec.prepare is not None:
        spec.prepare()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.name}.log"
    started = time.monotonic()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            spec.argv,
            cwd=spec.cwd,
            env={**os.environ, **spec.env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    component = RunningComponent(spec, process, log_path)
    try:
        deadline = started + spec.start_timeout_s
        while not spec.healthy():
            if process.poll() is not None:
                raise RuntimeError(f"{spec.name} exited with {process.returncode} before it was healthy:\n"
                                   f"{component.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{spec.name} not healthy after {spec.start_timeout_s} s:\n{component.log_tail()}")
            time.sleep(0.1)
        component.startup_s = time.monotonic() - started
        yield component
    finally:
        component.returncode = stop_process_group(process, grace_s)


def free_ports(count: int) -> list[int]:
    """Distinct ports nobody listens on right now (all held open together, so no port comes twice)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def listening_addresses(pid: int) -> set[str]:
    """The local addresses (host:port) of TCP and UDP sockets the process listens on / is bound to, from `ss`."""
    output = subprocess.run(["ss", "-Hlntup"], capture_output=True, text=True, check=True).stdout
    return {line.split()[4] for line in output.splitlines() if f"pid={pid}," in line}
