"""JSON log lines: each carries the current trace and span ids, when there is a span."""

import logging

import orjson
from opentelemetry.sdk.trace import TracerProvider

from worker.observability.logs import JsonFormatter
from worker.observability.telemetry import Telemetry


def test_log_lines_carry_the_current_trace_and_span_ids():
    telemetry = Telemetry(TracerProvider())
    record = logging.LogRecord("llm_router.x", logging.INFO, __file__, 1, "hello", None, None)
    assert "trace_id" not in orjson.loads(JsonFormatter().format(record))
    with telemetry.tracer.start_as_current_span("job") as span:
        entry = orjson.loads(JsonFormatter().format(record))
    assert entry["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert entry["span_id"] == format(span.get_span_context().span_id, "016x")
