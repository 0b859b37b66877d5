"""Structured JSON logs for every service. The trace id of the event being handled is bound in a context
variable, so every log line written while handling it carries it without passing it around."""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Iterator

import structlog

_configured = False


def configure_logging(service: str, level: str = "INFO") -> None:
    global _configured
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    _configured = True


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name) if name else structlog.get_logger()


@contextmanager
def trace_context(trace_id: str, **fields: object) -> Iterator[None]:
    """Binds the trace id (and any other fields) to every log line written inside the block."""
    with structlog.contextvars.bound_contextvars(trace_id=trace_id, **fields):
        yield
