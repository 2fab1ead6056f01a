"""JSON log lines: each carries the current trace and span ids, when there is a span."""

import logging

import orjson
from opentelemetry.sdk.trace import TracerProvider

from worker.observability.logs import JsonFormatter, RateLimit, muted
from worker.observability.telemetry import Telemetry


def test_log_lines_carry_the_current_trace_and_span_ids():
    telemetry = Telemetry(TracerProvider())
    record = logging.LogRecord("llm_router.x", logging.INFO, __file__, 1, "hello", None, None)
    assert "trace_id" not in orjson.loads(JsonFormatter().format(record))
    with telemetry.tracer.start_as_current_span("job") as span:
        entry = orjson.loads(JsonFormatter().format(record))
    assert entry["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert entry["span_id"] == format(span.get_span_context().span_id, "016x")


def test_the_rate_limit_lets_a_message_through_once_per_interval_and_counts_what_it_held_back():
    now = [0.0]
    limit = RateLimit(30.0, clock=lambda: now[0])

    def record(msg, *args, name="aiokafka.conn"):
        return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)

    first = record("Unable connect to node with id %s: %s", 0, "refused")
    assert limit.filter(first) and not hasattr(first, "suppressed")
    # The same template with other arguments is the same message; another template or logger is not.
    assert [limit.filter(record("Unable connect to node with id %s: %s", 0, f"e{i}")) for i in range(3)] == [False] * 3
    assert limit.filter(record("Unable to update metadata from %s", [0]))
    assert limit.filter(record("Unable connect to node with id %s: %s", 0, "x", name="aiokafka.client"))
    now[0] = 30.0
    after = record("Unable connect to node with id %s: %s", 0, "refused")
    assert limit.filter(after) and after.suppressed == 3
    entry = orjson.loads(JsonFormatter().format(after))
    assert entry["suppressed"] == 3 and entry["logger"] == "aiokafka.conn"
    assert limit.suppressed_total == 3
    again = record("Unable connect to node with id %s: %s", 0, "refused")
    now[0] = 61.0
    assert limit.filter(again) and not hasattr(again, "suppressed"), "nothing held back since the last one"


def test_muted_drops_a_loggers_records_and_overlapping_uses_restore_its_level_at_the_last_end():
    logger = logging.getLogger("llm_router_test_muted")
    logger.setLevel(logging.INFO)
    first, second = muted("llm_router_test_muted"), muted("llm_router_test_muted")
    first.__enter__()
    assert not logger.isEnabledFor(logging.CRITICAL)
    second.__enter__()
    first.__exit__(None, None, None)
    assert not logger.isEnabledFor(logging.CRITICAL), "still muted while the second use lasts"
    second.__exit__(None, None, None)
    assert logger.level == logging.INFO and logger.isEnabledFor(logging.INFO)
