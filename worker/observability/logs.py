"""Structured logs: one JSON object a line on stderr.

The Kafka client's (aiokafka's) own records go through the same formatter, rate-limited: while a broker
is away it repeats the same few messages many times a second, so each message (logger and template)
passes at most once per `KAFKA_CLIENT_INTERVAL_S`, and the next one that passes carries `suppressed`,
how many were held back meanwhile.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import orjson
from opentelemetry import trace

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON: time, level, logger, event and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:  # the job's trace, when a span is current
            entry["trace_id"] = format(context.trace_id, "032x")
            entry["span_id"] = format(context.span_id, "016x")
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return orjson.dumps(entry, default=str).decode()


KAFKA_CLIENT_INTERVAL_S = 30.0


class RateLimit(logging.Filter):
    """Lets each message (logger and template) through at most once per `interval_s`; the next one that
    passes carries `suppressed`, the count held back since. `suppressed_total` counts every one held back."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.suppressed_total = 0
        self._clock = clock
        # (logger, template) -> [when it last passed, held back since]; templates are few, so it stays small.
        self._seen: dict[tuple[str, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        key = (record.name, str(record.msg))
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval_s:
            seen[1] += 1
            self.suppressed_total += 1
            return False
        if seen is not None and seen[1]:
            record.suppressed = int(seen[1])
        self._seen[key] = [now, 0]
        return True


# The rate limit of the Kafka client's records, once `setup_logging` installed it.
KAFKA_CLIENT = RateLimit(KAFKA_CLIENT_INTERVAL_S)


def setup_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for the `llm_router` loggers, and for the Kafka client's warnings, rate-limited."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("llm_router")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    kafka_handler = logging.StreamHandler(sys.stderr)
    kafka_handler.setFormatter(JsonFormatter())
    kafka_handler.addFilter(KAFKA_CLIENT)
    kafka = logging.getLogger("aiokafka")
    kafka.handlers[:] = [kafka_handler]
    kafka.setLevel(max(logging.WARNING, root.level))
    kafka.propagate = False
    logging.Formatter.converter = time.gmtime


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"llm_router.{name}")


_muted: dict[str, tuple[int, int]] = {}  # logger name -> (how many mute it now, its level before the first)


@contextmanager
def muted(name: str) -> Iterator[None]:
    """Drop the records of logger `name` (and its children) meanwhile. The level is the logger's own, so this
    mutes every user of the logger in the process for that time: only for short, expected noise. Nested and
    overlapping uses restore the level when the last one ends."""
    logger = logging.getLogger(name)
    depth, level = _muted.get(name, (0, logger.level))
    _muted[name] = (depth + 1, level)
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        depth, level = _muted.pop(name)
        if depth > 1:
            _muted[name] = (depth - 1, level)
        else:
            logger.setLevel(level)
