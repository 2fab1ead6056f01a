"""Whether the broker answers: lost and regained, each logged once.

The Kafka client reconnects by itself and says nothing through its public API about losing the
broker, so the worker watches for signs: a warning of the client's own (its log records) or a
failure of the worker's own calls (a commit, reading the committed offsets) makes it ask the broker
for metadata, with a timeout. A failed request marks the broker lost; while lost, it asks every
`LOST_PROBE_INTERVAL_S` until an answer marks it regained, with the outage's length and how many of
the client's log messages were suppressed meanwhile (worker/observability/logs.py). Nothing is
asked of the broker while all is well.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError

from worker.observability import logs

log = logs.get_logger("broker")

PROBE_TIMEOUT_S = 5.0
LOST_PROBE_INTERVAL_S = 1.0
MIN_PROBE_INTERVAL_S = 1.0  # signs come in bursts: one probe for a burst


class BrokerWatch:
    """The broker's state as this worker sees it; `run` probes it when there are signs of trouble."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[object]],
        bootstrap_servers: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connected = True
        self._probe = probe
        self._bootstrap_servers = bootstrap_servers
        self._clock = clock
        self._signs = asyncio.Event()
        self._lost_at = 0.0
        self._suppressed_at_loss = 0

    def suspect(self) -> None:
        """A sign that the broker may be gone: probe it soon."""
        self._signs.set()

    async def run(self) -> None:
        """Probe at each sign (at most once a `MIN_PROBE_INTERVAL_S`), and every `LOST_PROBE_INTERVAL_S`
        while the broker is lost; log the changes. Runs until cancelled."""
        while True:
            if self.connected:
                await self._signs.wait()
            self._signs.clear()
            error = await self._ask()
            if error is None and not self.connected:
                self._regained()
            elif error is not None and self.connected:
                self._lost(error)
            await asyncio.sleep(LOST_PROBE_INTERVAL_S if not self.connected else MIN_PROBE_INTERVAL_S)

    async def _ask(self) -> BaseException | None:
        """None when the broker answered a metadata request in time, else the error."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await self._probe()
        except (KafkaError, OSError, TimeoutError) as exc:
            return exc
        return None

    def _lost(self, error: BaseException) -> None:
        self.connected = False
        self._lost_at = self._clock()
        self._suppressed_at_loss = logs.KAFKA_CLIENT.suppressed_total
        log.warning(
            "broker lost: in-flight jobs go on, their outputs wait for it",
            extra={"bootstrap_servers": self._bootstrap_servers, "error": repr(error)},
        )

    def _regained(self) -> None:
        self.connected = True
        log.info(
            "broker regained",
            extra={
                "bootstrap_servers": self._bootstrap_servers,
                "outage_s": round(self._clock() - self._lost_at, 1),
                "kafka_client_messages_suppressed": logs.KAFKA_CLIENT.suppressed_total - self._suppressed_at_loss,
            },
        )


class ClientWarnings(logging.Handler):
    """Each warning (or worse) of the Kafka client's loggers is a sign for the watch."""

    def __init__(self, watch: BrokerWatch) -> None:
        super().__init__(logging.WARNING)
        self._watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        self._watch.suspect()


def watch_client_logs(watch: BrokerWatch) -> Callable[[], None]:
    """Make the Kafka client's warnings signs for `watch`; returns what undoes it."""
    handler = ClientWarnings(watch)
    logger = logging.getLogger("aiokafka")
    logger.addHandler(handler)
    return lambda: logger.removeHandler(handler)
