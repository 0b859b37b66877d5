"""Credentials in URLs are masked in every log line: structlog events (message, values, nested values,
tracebacks) and the standard library's records."""
from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap

import pytest
import structlog

from libs.common.logs import RedactCredentialsFilter, redact_credentials, redact_credentials_processor


@pytest.mark.parametrize("text, expected", [
    ("rtsp://admin:s3cret@10.0.0.7:554/stream1", "rtsp://***@10.0.0.7:554/stream1"),
    ("opening rtsp://admin:s3cret@cam/x failed", "opening rtsp://***@cam/x failed"),
    ("rtsp://admin:p@ss@cam/x", "rtsp://***@cam/x"),  # an unencoded "@" in the password
    ("https://token@cam.example", "https://***@cam.example"),
    ("RTSPS://Admin:S3cret@CAM", "RTSPS://***@CAM"),
    ("'rtsp://u:p@a/1' and 'http://v:q@b/2'", "'rtsp://***@a/1' and 'http://***@b/2'"),
    ("rtsp://cam/stream1", "rtsp://cam/stream1"),
    ("http://cam/x?mail=a@b.c", "http://cam/x?mail=a@b.c"),  # an "@" after the authority is not userinfo
    ("user@example.com", "user@example.com"),
])
def test_the_userinfo_of_every_url_is_masked(text, expected):
    assert redact_credentials(text) == expected


def render(event_dict: dict) -> dict:
    output = io.StringIO()
    logger = structlog.wrap_logger(structlog.PrintLogger(output), processors=[
        structlog.processors.format_exc_info, redact_credentials_processor, structlog.processors.JSONRenderer()])
    logger.error(**event_dict)
    return json.loads(output.getvalue())


def test_the_processor_masks_the_message_and_values_at_any_depth():
    line = render({"event": "stream lost rtsp://u:pw1@cam/a", "source": "rtsp://u:pw2@cam/a",
                   "cameras": {"c1": ["http://u:pw3@cam/b"]}, "fps": 5, "ok": True})
    assert "pw" not in json.dumps(line)
    assert line["source"] == "rtsp://***@cam/a"
    assert line["cameras"] == {"c1": ["http://***@cam/b"]}
    assert (line["fps"], line["ok"]) == (5, True)


def test_the_processor_masks_objects_rendered_as_text_and_tracebacks():
    class Source:
        def __repr__(self) -> str:
            return "Source(rtsp://u:pw4@cam)"

    try:
        raise RuntimeError("cannot open rtsp://u:pw5@cam/x")
    except RuntimeError:
        line = render({"event": "failed", "source": Source(), "exc_info": True})
    assert "pw4" not in line["source"] and "pw5" not in line["exception"]
    assert "rtsp://***@cam/x" in line["exception"]


def test_standard_library_records_are_masked_too():
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.addFilter(RedactCredentialsFilter())
    logger = logging.getLogger("test_log_redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("opening %s", "rtsp://u:pw6@cam/x")
        try:
            raise OSError("rtsp://u:pw7@cam/x refused")
        except OSError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert "pw6" not in output.getvalue() and "pw7" not in output.getvalue()
    assert "opening rtsp://***@cam/x" in output.getvalue()


def test_a_service_configured_for_logging_masks_what_it_writes():
    program = textwrap.dedent("""
        import logging
        from libs.common.logs import configure_logging, get_logger
        configure_logging("ingest")
        get_logger("t").warning("camera started", url="rtsp://viewer:pw8@cam/x")
        logging.getLogger("some.library").warning("connecting to rtsp://viewer:pw9@cam/x")
    """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "rtsp://***@cam/x" in result.stderr
    assert "pw8" not in result.stderr and "pw9" not in result.stderr
