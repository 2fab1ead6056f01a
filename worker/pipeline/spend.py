"""The day's spend shared by every replica: the costs topic tailed into a `SpendLedger` (budgets.py), and the
check a job of a budgeted tenant passes before it runs.

Each replica reads every partition of the costs topic itself (outside any group, read_committed under
exactly-once delivery), from the first record of the current UTC day (`offsets_for_times`, a few minutes
early: an event's `ts` is taken before its record is sent) to the end, and then on as records come. Jobs of a
budgeted tenant wait for that first read (at most LOAD_LIMIT_S): a restarted replica refuses a tenant over its
budget from its first job. The days roll at UTC midnight. What the tail has not read yet (other replicas'
events of the last fetch or so) and the jobs in flight are what a tenant can spend past its budget
(docs/architecture.md, "Tenant budgets").
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import msgspec
from aiokafka import TopicPartition

from worker.config import KafkaConfig
from worker.messages import CostEvent
from worker.observability.logs import get_logger
from worker.pipeline.budgets import DAY_SLACK_S, Refusal, SpendLedger, today
from worker.pipeline.kafka import make_consumer, topic_partitions
from worker.pipeline.offsets import read_to_end

log = get_logger("spend")

# The longest jobs of budgeted tenants wait for the first read of the day's spend; then they run on what is read.
LOAD_LIMIT_S = 300.0

_DECODER = msgspec.json.Decoder(CostEvent)


def day_start_ms(day: datetime) -> int:
    """Epoch milliseconds of the UTC midnight that starts the day of `day`."""
    midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return int(midnight.timestamp() * 1000)


class SpendTail:
    """The costs topic, read from the start of the UTC day into `ledger`, then tailed."""

    def __init__(self, kafka: KafkaConfig, ledger: SpendLedger, isolation_level: str = "read_uncommitted") -> None:
        self.ledger = ledger
        self._kafka = kafka
        self._topic = kafka.topics.costs
        # A fetch that finds nothing new returns soon: what the tail has not read stays a fetch's wait behind.
        self._consumer = make_consumer(kafka, group_id=None, isolation_level=isolation_level, fetch_max_wait_ms=100)
        self._loaded = asyncio.Event()
        self._loading: dict[TopicPartition, int] = {}  # partitions not read to their end at start: that end
        self._started = time.monotonic()
        self.read = 0  # cost events read
        self.counted = 0  # of them, those counted (not this replica's own, counted already)

    async def start(self) -> bool:
        """Assign every partition of the costs topic at the start of the day; False when the topic is missing (the
        worker warns of missing topics, and budgets go by this replica's own events only)."""
        try:
            return await self._start()
        except BaseException:
            self._loaded.set()  # no read to wait for
            raise

    async def _start(self) -> bool:
        await self._consumer.start()
        found = await topic_partitions(self._kafka, [self._topic])
        if self._topic not in found:
            self._loaded.set()
            return False
        partitions = [TopicPartition(self._topic, p) for p in found[self._topic]]
        self._consumer.assign(partitions)
        day = today()
        self.ledger.roll(day)
        ends = await self._consumer.end_offsets(partitions)
        since = day_start_ms(datetime.now(UTC)) - DAY_SLACK_S * 1000
        starts = await self._consumer.offsets_for_times(dict.fromkeys(partitions, since))
        for tp in partitions:
            start = starts.get(tp)
            if start is None:  # no record since: the day starts at the end
                self._consumer.seek(tp, ends[tp])
            else:  # a broker that answers a timestamp it lacks with none (Tansu): from the beginning
                self._consumer.seek(tp, start.offset if start.timestamp >= 0 else 0)
        self._loading = {tp: end for tp, end in ends.items() if end > 0}
        self._started = time.monotonic()
        if not self._loading:
            self._loaded.set()
        return True

    async def run(self) -> None:
        """Count the cost events as they come, until cancelled; the days roll at UTC midnight."""
        day = today()
        try:
            if not self._loaded.is_set():  # partitions with nothing of the day to read are read already
                await self._check_loaded({})
            while True:
                batch = await self._consumer.getmany(timeout_ms=1000)
                if (now := today()) != day:
                    day = now
                    self.ledger.roll(day)
                for records in batch.values():
                    for record in records:
                        self._count(record.value, record.offset)
                if not self._loaded.is_set():
                    await self._check_loaded(batch)
        finally:
            self._loaded.set()  # nothing waits for a tail that stopped

    def _count(self, value: bytes | None, offset: int) -> None:
        try:
            event = _DECODER.decode(value or b"")
        except msgspec.DecodeError as exc:
            log.warning("unreadable cost event skipped", extra={"offset": offset, "error": str(exc)})
            return
        self.read += 1
        if self.ledger.add_read(event):
            self.counted += 1

    async def _check_loaded(self, batch: dict[TopicPartition, list]) -> None:
        """The first read is over once every partition is read to its end at start (or LOAD_LIMIT_S has passed)."""
        for tp, end in list(self._loading.items()):
            position = await self._consumer.position(tp)
            if read_to_end(position, end, self._consumer.highwater(tp), tp in batch):
                del self._loading[tp]
        late = time.monotonic() - self._started > LOAD_LIMIT_S
        if late:
            log.warning(
                "the day's spend is not read to its end: budgets go by what is read",
                extra={"partitions": sorted(tp.partition for tp in self._loading), "read": self.read},
            )
        if not self._loading or late:
            self._loaded.set()
            log.info(
                "the day's spend read",
                extra={"events": self.read, "load_s": round(time.monotonic() - self._started, 3)},
            )

    async def refusal(self, tenant: str) -> Refusal | None:
        """Why a job of `tenant` may not run (its spend of the day has reached its budget), or None. Only a
        budgeted tenant's job waits, for the first read of the day's spend."""
        if self.ledger.budgets.of(tenant) <= 0:
            return None
        if not self._loaded.is_set():
            await self._loaded.wait()
        return self.ledger.over_budget(tenant, today())

    async def close(self) -> None:
        """Disconnect."""
        await self._consumer.stop()
