"""Where finished jobs' outputs go, and how their offsets are committed: one class per delivery guarantee.

Both sinks take a finished job's outputs with `put` and call the worker's `finish(partition, offset)` when
the job's offset may be committed, and both commit positions with `commit`. At-least-once (`OutboxSink`)
sends the outputs at once through the outbox and finishes the offset at the broker's acknowledgement;
the group's offsets are committed separately, so a crash between the two redoes the job (its result
carries the job id). Exactly-once (`TransactionalSink`) finishes the offset at once and holds the outputs
until a transaction writes them together with the group's offsets: read_committed consumers see both or
neither. A job that ran (deduplication on) is also listed in a finished record (dedupe.py) that goes with
its outputs: the outbox's flush, or the transaction, lists the jobs of each jobs partition in one.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from worker.config import KafkaConfig
from worker.observability.logs import get_logger
from worker.observability.telemetry import not_sent, sent
from worker.pipeline.dedupe import IDS_PER_RECORD, FinishedRecords
from worker.pipeline.kafka import DeliveryError, make_producer, transactional_id
from worker.pipeline.outbox import Outbox, Output

log = get_logger("sinks")

Finish = Callable[[TopicPartition, int], None]


class Sink(Protocol):
    """What the consume loop needs of a delivery guarantee."""

    producer: Any
    held: int  # jobs finished but still counted in flight: their outputs wait for a commit

    @property
    def unacknowledged(self) -> int:
        """Jobs whose outputs are not yet durable on the broker."""

    async def start(self) -> None: ...

    def put(
        self, tp: TopicPartition, offset: int, outputs: list[Output], spans: list[Any] | None, finished: str | None
    ) -> None:
        """Take a job's outputs and, `finished`, the id to list in a finished record (a job that ran)."""

    async def commit(self, positions: dict[TopicPartition, int]) -> bool: ...

    async def settled(self, timeout: float) -> bool: ...

    def forget(self, partitions: Iterable[TopicPartition], reason: str) -> None: ...

    async def close(self) -> None: ...


class OutboxSink:
    """At-least-once: outputs go to the broker as soon as their job is done; offsets are committed after."""

    def __init__(
        self, config: KafkaConfig, consumer: AIOKafkaConsumer, finish: Finish, records: FinishedRecords | None = None
    ) -> None:
        self.producer = make_producer(config)
        self.outbox = Outbox(self.producer, records)
        self._consumer = consumer
        self._finish = finish
        self.held = 0  # a job's offset finishes only when its outputs are acknowledged

    @property
    def unacknowledged(self) -> int:
        return self.outbox.unacknowledged

    async def start(self) -> None:
        """Connect the producer."""
        await self.producer.start()

    def put(
        self, tp: TopicPartition, offset: int, outputs: list[Output], spans: list[Any] | None, finished: str | None
    ) -> None:
        """Send a job's outputs (and list it in a finished record); its offset finishes at their acknowledgement."""
        listed = (tp.partition, finished) if finished is not None else None
        self.outbox.put(outputs, partial(self._finish, tp, offset), spans, listed)

    async def commit(self, positions: dict[TopicPartition, int]) -> bool:
        """Commit the group's offsets; whether the broker took them."""
        try:
            await self._consumer.commit(positions)
        except KafkaError as exc:
            log.warning("commit failed", extra={"error": repr(exc)})
            return False
        return True

    async def settled(self, timeout: float) -> bool:
        """Wait, at most `timeout` seconds, until every output put so far is acknowledged."""
        return await self.outbox.settled(timeout)

    def forget(self, partitions: Iterable[TopicPartition], reason: str) -> None:
        """Nothing is held for a partition: its unacknowledged jobs simply stay uncommitted."""

    async def close(self) -> None:
        """Stop sending (what is unacknowledged stays uncommitted) and disconnect."""
        await self.outbox.close()
        await self.producer.stop()


class TransactionalSink:
    """Exactly-once: a job's outputs wait for a transaction that commits them with the group's offsets."""

    def __init__(
        self,
        config: KafkaConfig,
        finish: Finish,
        fenced: Callable[[BaseException], None],
        records: FinishedRecords | None = None,
    ) -> None:
        self.transactional_id = transactional_id(config)
        self.producer = make_producer(
            config,
            enable_idempotence=True,
            transactional_id=self.transactional_id,
            transaction_timeout_ms=config.transaction_timeout_ms,
        )
        self._config = config
        self._finish = finish
        self._fenced = fenced
        self._records = records
        # Finished jobs' outputs, their send spans and the id to list in a finished record, by partition and
        # offset, until their transaction.
        self._ready: dict[TopicPartition, dict[int, tuple[list[Output], list[Any] | None, str | None]]] = defaultdict(
            dict
        )
        self.held = 0

    @property
    def unacknowledged(self) -> int:
        return self.held

    async def start(self) -> None:
        """Connect the producer; DeliveryError when the broker has no transactions (it refuses a transactional
        producer, or leaves it unanswered for `kafka.connect_timeout_s`)."""
        try:
            await asyncio.wait_for(self.producer.start(), self._config.connect_timeout_s)
        except (KafkaError, TimeoutError) as exc:
            await self.producer.stop()
            raise DeliveryError(
                f"worker.delivery = exactly_once needs a broker with transactions (Apache Kafka); "
                f"{self._config.bootstrap_servers} refused a transactional producer: {exc!r}"
            ) from exc

    def put(
        self, tp: TopicPartition, offset: int, outputs: list[Output], spans: list[Any] | None, finished: str | None
    ) -> None:
        """Hold a job's outputs (and the id to list in a finished record) for the next transaction; its offset may
        be committed with them."""
        if finished is not None and self._records is None:
            raise ValueError("a job to list in a finished record: the sink needs FinishedRecords")
        self._ready[tp][offset] = (outputs, spans, finished)
        self.held += 1
        self._finish(tp, offset)

    async def commit(self, positions: dict[TopicPartition, int]) -> bool:
        """One transaction: the outputs of every job below `positions`, and the positions as the group's offsets."""
        offsets = {tp: sorted(o for o in self._ready[tp] if o < position) for tp, position in positions.items()}
        traced: list[tuple[Any, asyncio.Future[Any]]] = []  # (send span, the send's acknowledgement)
        try:
            async with self.producer.transaction():
                for tp, finished in offsets.items():
                    job_ids = []
                    for offset in finished:
                        outputs, spans, job_id = self._ready[tp][offset]
                        for index, (topic, key, value, headers) in enumerate(outputs):
                            acknowledged = await self.producer.send(topic, value, key=key, headers=headers)
                            if spans:
                                traced.append((spans[index], acknowledged))
                        if job_id is not None:
                            job_ids.append(job_id)
                    await self._list(tp.partition, job_ids)
                await self.producer.send_offsets_to_transaction(positions, self._config.group_id)
        except ProducerFenced as exc:
            # Another replica took this transactional id: this one must not write again.
            log.error(
                "fenced: another producer took this transactional id; stopping",
                extra={"transactional_id": self.transactional_id},
            )
            self._not_sent(offsets, exc)
            self._fenced(exc)
            return False
        except KafkaError as exc:
            # Aborted: nothing of it is visible; the same outputs and offsets go in the next transaction.
            log.warning("transaction failed, retried at the next commit", extra={"error": repr(exc)})
            self._not_sent(offsets, exc)
            return False
        for span, acknowledged in traced:
            sent(span, acknowledged.result())  # committed: visible to read_committed consumers from now
        for tp, finished in offsets.items():
            ready = self._ready[tp]
            for offset in finished:
                del ready[offset]
            self.held -= len(finished)
        return True

    async def _list(self, jobs_partition: int, job_ids: list[str]) -> None:
        """Send (in the open transaction) the finished records listing `job_ids`, to the finished topic's
        partition numbered as `jobs_partition` (modulo the topic's partitions)."""
        if not job_ids or self._records is None:
            return
        topic = self._records.topic
        known = sorted(await self.producer.partitions_for(topic))
        for start in range(0, len(job_ids), IDS_PER_RECORD):
            key, value = self._records.make(jobs_partition, job_ids[start : start + IDS_PER_RECORD])
            await self.producer.send(topic, value, key=key, partition=known[jobs_partition % len(known)])

    async def settled(self, timeout: float) -> bool:
        """Nothing is sent outside a transaction: always settled."""
        return True

    def forget(self, partitions: Iterable[TopicPartition], reason: str) -> None:
        """The partitions are released: what they hold was not committed, and their next owner redoes it."""
        error = RuntimeError(f"not committed before the partition was released ({reason})")
        for tp in partitions:
            self._not_sent({tp: list(self._ready.get(tp, ()))}, error)
            self.held -= len(self._ready.pop(tp, {}))

    async def close(self) -> None:
        """Disconnect the producer (an open transaction is aborted by the broker)."""
        await self.producer.stop()

    def _not_sent(self, offsets: dict[TopicPartition, list[int]], exc: BaseException) -> None:
        """The transaction holding these jobs' outputs failed: their send spans end with the error (the
        outputs go in a later transaction, or to the partition's next owner, without spans)."""
        for tp, finished in offsets.items():
            ready = self._ready.get(tp, {})
            for offset in finished:
                outputs, spans, job_id = ready.get(offset, ([], None, None))
                for span in spans or ():
                    not_sent(span, exc)
                if spans:
                    ready[offset] = (outputs, None, job_id)
