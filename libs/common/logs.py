"""Structured JSON logs for every service. The trace id of the event being handled is bound in a context
variable, so every log line written while handling it carries it without passing it around. Credentials in URLs
(`rtsp://user:pass@camera`) are masked in every line, whichever library wrote it."""
from __future__ import annotations

import json
import logging
import re
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator

import structlog

_configured = False

# scheme://userinfo@ : the userinfo runs to the authority's last "@" (a password with an unencoded "@" is
# still masked whole), and stops at what ends an authority ("/", "?", "#", whitespace, quotes).
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s\"'<>]+@")
MASK = "***"


def redact_credentials(text: str) -> str:
    """`text` with the userinfo of every URL in it masked: rtsp://admin:secret@cam/x -> rtsp://***@cam/x."""
    if "://" not in text:
        return text
    return _URL_USERINFO.sub(rf"\1{MASK}@", text)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_credentials(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_redacted(item) for item in value]
    # Anything else is rendered by its str/repr (exceptions, paths, protobufs): mask that text if it needs it.
    text = str(value)
    masked = redact_credentials(text)
    return value if masked == text else masked


def redact_credentials_processor(_logger: Any, _method: str, event_dict: dict) -> dict:
    """A structlog processor masking URL credentials in the message and every value (tracebacks included, when
    it runs after format_exc_info)."""
    return {key: _redacted(value) for key, value in event_dict.items()}


class RedactCredentialsFilter(logging.Filter):
    """The same masking for lines written through the standard library's logging (other libraries' logs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact_credentials(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_text is None:
            record.exc_text = redact_credentials(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonLineFormatter(logging.Formatter):
    """Other libraries' log records (uvicorn, faust, librdkafka's Python side) as JSON lines like structlog's, so
    one parser reads a service's whole log."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line = {"event": record.getMessage(), "level": record.levelname.lower(), "logger": record.name,
                "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat().replace("+00:00", "Z"),
                "service": self.service}
        if record.exc_info and record.exc_text is None:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str)


def route_standard_logging(service: str, level: str = "INFO") -> None:
    """The root logger writes JSON lines to stderr, credentials masked; for frameworks that replace the root
    logger's handlers at start (faust's worker does), call again after they have."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter(service))
    handler.addFilter(RedactCredentialsFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _Stderr:
    """Whatever sys.stderr is when a line is written: loggers are cached on first use, and one cached while
    stderr was another stream (a test capturing it) would otherwise keep writing to that stream once closed."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(service: str, level: str = "INFO") -> None:
    global _configured
    route_standard_logging(service, level)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_credentials_processor,  # last before rendering: it sees the formatted traceback too
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(_Stderr()),
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
