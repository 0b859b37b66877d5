"""SIGTERM and SIGINT set one event that every loop of a service watches, so in-flight work finishes
and the process exits cleanly instead of dying mid-batch."""
from __future__ import annotations

import signal
import threading


def stop_on_signals(stop: threading.Event | None = None) -> threading.Event:
    stop = stop or threading.Event()

    def _handle(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _handle)
    signal.signal(signal.SIGINT, _handle)
    return stop
