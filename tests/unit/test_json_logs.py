"""Service logs: one JSON object a line, carrying the trace and span being served."""

from __future__ import annotations

import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from services.common.telemetry import JsonLogFormatter


def _line(record: logging.LogRecord) -> dict:
    return json.loads(JsonLogFormatter("ragmesh-test").format(record))


def _record(message: str, *args: object, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("ragmesh.x", logging.INFO, __file__, 1, message, args, exc_info)


def test_a_line_inside_a_span_names_its_trace_and_span() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        line = _line(_record("upserted %d documents", 3))
    context = span.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert line["message"] == "upserted 3 documents"
    assert (line["level"], line["service"], line["logger"]) == ("INFO", "ragmesh-test", "ragmesh.x")
    assert line["time"].endswith("Z")


def test_a_line_outside_any_span_has_no_trace_and_keeps_its_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        line = _line(_record("failed", exc_info=sys.exc_info()))
    assert "trace_id" not in line
    assert "ValueError: boom" in line["exception"]
