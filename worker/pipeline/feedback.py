"""Feedback: the feedback topic, read in a group of its own, each job's feedback learned from once.

Feedback needs only a job id; the job's route (which model answered, which agreed, which judge passed
it) is on the routes topic, produced beside the job's result and keyed by job id like the feedback,
so feedback partition p finds it on routes partition p (routes.py). For its feedback partitions a
replica tails those routes partitions (a manual-assign reader, from their beginning) into an index,
and takes a feedback partition's records only once the reader has reached the end that partition's
routes had at the assignment. Per record:
- not valid feedback: dead letter `invalid_feedback`;
- not on the partition its job id hashes to (its producer did not key it): produced again keyed by
  the job id, and taken where it then lands;
- no route: the routes partition is read to its end, and the route waited for until a little after
  the feedback's time (the route may still be on its way, like the result it went with); still none:
  dead letter `unknown_job`;
- a route marked `feedback`: already learned from, nothing more;
- else the route is produced again marked (compaction keeps the mark: a second feedback, or this one
  read again, counts once) and, once the mark is acknowledged, the route's models learn the grade.
A batch's offsets are committed after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from worker.config import Config
from worker.messages import Route
from worker.observability.logs import get_logger
from worker.pipeline.intake import Rejection, dead_letter, decode_feedback
from worker.pipeline.kafka import make_consumer, topic_partitions
from worker.pipeline.offsets import read_to_end
from worker.pipeline.outbox import BACKOFF_S, Output, partition_of
from worker.pipeline.routes import RouteIndex, routes_partitions
from worker.routing.learning import QualityModel

log = get_logger("feedback")

# How long after the feedback's own time its route is waited for: feedback sent as soon as the result
# is read may come before the route, which was sent with the result but not in the same request.
ROUTE_GRACE_S = 3.0
# The longest one feedback waits for the routes reader (a broker that stopped answering).
LOOKUP_LIMIT_S = 30.0


class FeedbackStats(msgspec.Struct):
    """Counters of the feedback this replica took since it started."""

    learned: int = 0
    repeated: int = 0  # feedback on a job already learned from: nothing learned
    rekeyed: int = 0  # produced again keyed by job id
    dead_lettered: int = 0


class FeedbackLoop:
    """The feedback consumer of one replica, with the routes of its feedback partitions."""

    def __init__(self, config: Config, quality: QualityModel, producer: AIOKafkaProducer) -> None:
        kafka = config.kafka
        self._kafka = kafka
        self._topic, self._routes_topic, self._dlq = kafka.topics.feedback, kafka.topics.routes, kafka.topics.dlq
        self._max_bytes = config.worker.max_job_bytes
        self._quality = quality
        self._producer = producer
        self._encoder = msgspec.json.Encoder()
        self.consumer = make_consumer(kafka, group_id=f"{kafka.group_id}-feedback")
        isolation = "read_committed" if config.worker.delivery == "exactly_once" else "read_uncommitted"
        self._reader = make_consumer(kafka, group_id=None, isolation_level=isolation, fetch_max_wait_ms=100)
        self.index = RouteIndex()
        self.stats = FeedbackStats()
        self._counts = (0, 0)  # partitions of the feedback and the routes topics
        self._handling = asyncio.Lock()  # a rebalance waits for the batch being handled
        self._wanted: set[int] = set()  # the routes partitions of the feedback partitions owned
        self._assignment = 0  # counts assignments: the reader takes each new one between fetches
        self._changed = asyncio.Event()
        self._loaded: dict[int, asyncio.Event] = {}  # per routes partition: read to its end at the assignment
        self._read_to: dict[int, int] = {}  # per routes partition: the next offset to read
        self._ends: dict[int, int] = {}  # per routes partition: its end when the reader took the assignment
        self._advanced = asyncio.Event()  # the reader fetched

    async def run(self) -> None:
        """Take feedback until cancelled; nothing while the feedback or the routes topic is missing (the worker
        warns of missing topics)."""
        try:
            found = await topic_partitions(self._kafka, [self._topic, self._routes_topic])
            if self._topic not in found or self._routes_topic not in found:
                return
            self._counts = (len(found[self._topic]), len(found[self._routes_topic]))
            if self._counts[0] != self._counts[1]:
                log.warning(
                    "the feedback and routes topics have different partitions: every replica reads every route",
                    extra={"feedback": self._counts[0], "routes": self._counts[1]},
                )
            self.consumer.subscribe([self._topic], listener=_Rebalance(self))
            await self._reader.start()
            await self.consumer.start()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._read_routes())
                tasks.create_task(self._take_feedback())
        finally:
            await self.consumer.stop()
            await self._reader.stop()

    def assigned(self, partitions: set[int]) -> None:
        """The feedback partitions now owned: their routes partitions are read to their present end first."""
        self._wanted = routes_partitions(partitions, *self._counts)
        self._loaded = {p: asyncio.Event() for p in self._wanted}
        self._assignment += 1
        self._changed.set()

    async def settled(self) -> None:
        """Return once the batch being handled (if any) is delivered and committed: a revoke waits for it."""
        async with self._handling:
            pass

    async def _take_feedback(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=1000)
            if not batch:
                continue
            async with self._handling:
                try:
                    await self._handle(batch)
                except KafkaError as exc:  # the commit: a new owner reads the feedback again (the marks are on)
                    log.warning("feedback not committed", extra={"error": repr(exc)})

    async def _handle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Take a batch's records in order, deliver what they produce, then learn from them (so that feedback
        whose mark was not delivered, at a stop, is learned from when it is read again) and commit. A record
        the broker failed the lookup of is read again, with those after it."""
        owned = self.consumer.assignment()
        outputs: list[Output] = []
        lessons: list[tuple[Route, float]] = []
        handled: dict[TopicPartition, int] = {}
        try:
            for tp, records in batch.items():
                if tp not in owned:
                    continue  # revoked meanwhile: its new owner takes it from the committed offset
                for record in records:
                    output = await self._take(record, lessons)
                    if output is not None:
                        outputs.append(output)
                    handled[tp] = record.offset + 1
        except KafkaError as exc:
            log.warning("feedback read again: a route lookup failed", extra={"error": repr(exc)})
            for tp, records in batch.items():
                if tp in owned:
                    self.consumer.seek(tp, handled.get(tp, records[0].offset))
        await self._deliver(outputs)
        for route, grade in lessons:
            self._quality.learn_feedback(route, grade)
        if handled:
            await self.consumer.commit(handled)

    async def _take(self, record: Any, lessons: list[tuple[Route, float]]) -> Output | None:
        """One feedback record (aiokafka's ConsumerRecord): what it produces (a mark, a dead letter, itself
        keyed anew), or None; the route and grade to learn from go to `lessons`."""
        feedback = decode_feedback(record.value)
        if isinstance(feedback, Rejection):
            return self._dead_letter(feedback, record)
        key = feedback.job_id.encode()
        if partition_of(key, self._counts[0]) != record.partition:
            self.stats.rekeyed += 1
            return (self._topic, key, record.value, list(record.headers))
        partition = partition_of(key, self._counts[1])
        route = await self._route(partition, feedback.job_id, record.timestamp / 1000)
        if route is None:
            message = f"no route for job {feedback.job_id!r}: unknown, or older than the routes topic keeps"
            return self._dead_letter(Rejection(kind="unknown_job", message=message, job_id=feedback.job_id), record)
        if route.feedback:
            self.stats.repeated += 1
            return None
        lessons.append((route, feedback.grade))
        marked = msgspec.structs.replace(route, feedback=True)
        self.index.put(partition, marked)
        self.stats.learned += 1
        return (self._routes_topic, key, self._encoder.encode(marked), [])

    async def _route(self, partition: int, job_id: str, sent_at: float) -> Route | None:
        """The job's route: from the index once its partition is loaded, else once the reader has read the
        partition to its present end and the grace after `sent_at` (epoch seconds) has passed."""
        loaded = self._loaded.get(partition)
        if loaded is None:
            return None
        await loaded.wait()
        route = self.index.get(partition, job_id)
        if route is not None:
            return route
        tp = TopicPartition(self._routes_topic, partition)
        end = (await self._reader.end_offsets([tp]))[tp]
        now = time.monotonic()
        grace_until = now + max(0.0, sent_at + ROUTE_GRACE_S - time.time())
        give_up = now + LOOKUP_LIMIT_S
        while (route := self.index.get(partition, job_id)) is None:
            now = time.monotonic()
            if now >= give_up or (self._read_to.get(partition, 0) >= end and now >= grace_until):
                return None
            self._advanced.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), 0.5)
        return route

    def _dead_letter(self, rejection: Rejection, record: Any) -> Output:
        self.stats.dead_lettered += 1
        letter, value = dead_letter(
            rejection, record.topic, record.partition, record.offset, record.value, self._max_bytes
        )
        log.warning(
            "feedback dead-lettered",
            extra={"kind": letter.error_kind, "error": letter.error[:300], "offset": record.offset},
        )
        return (self._dlq, record.key, value, letter.to_headers())

    async def _deliver(self, outputs: list[Output]) -> None:
        """Send `outputs` and wait for their acknowledgement, sending them again until they are acknowledged."""
        failures = 0
        while outputs:
            try:
                sent = [await self._producer.send(t, v, key=k, headers=h) for t, k, v, h in outputs]
                await asyncio.gather(*sent)
                return
            except KafkaError as exc:
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
                log.warning("feedback outputs not acknowledged: sent again", extra={"error": repr(exc)})
                await asyncio.sleep(delay)

    async def _read_routes(self) -> None:
        """Tail the routes partitions of the owned feedback partitions into the index."""
        taken = 0
        while True:
            if taken != self._assignment:
                taken = self._assignment
                await self._take_partitions()
            if not self._wanted:
                self._changed.clear()
                await self._changed.wait()
                continue
            batch = await self._reader.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for record in records:
                    self.index.put_record(tp.partition, record.key, record.value)
            # The position, not the last record's offset: a transaction's markers take offsets too.
            for tp in self._reader.assignment():
                self._read_to[tp.partition] = await self._reader.position(tp)
            if taken == self._assignment:  # else the ends noted are another assignment's
                for partition, loaded in self._loaded.items():
                    fetched = TopicPartition(self._routes_topic, partition) in batch
                    if not loaded.is_set() and self._caught_up(partition, fetched):
                        loaded.set()
            self._advanced.set()

    def _caught_up(self, partition: int, fetched: bool) -> bool:
        highwater = self._reader.highwater(TopicPartition(self._routes_topic, partition))
        return read_to_end(self._read_to.get(partition, 0), self._ends.get(partition, 0), highwater, fetched)

    async def _take_partitions(self) -> None:
        """Assign the reader the wanted routes partitions: the new ones from their beginning, the others where
        it was; note each one's end now (what it must have read before its feedback is taken)."""
        wanted, held = set(self._wanted), self.index.held()
        self.index.drop(held - wanted)
        for partition in held - wanted:
            self._read_to.pop(partition, None)
        new = [TopicPartition(self._routes_topic, p) for p in sorted(wanted - held)]
        self.index.hold(wanted)
        partitions = [TopicPartition(self._routes_topic, p) for p in sorted(wanted)]
        if not partitions:
            return
        self._ends = {tp.partition: end for tp, end in (await self._reader.end_offsets(partitions)).items()}
        self._reader.assign(partitions)
        for tp in partitions:
            if tp.partition in self._read_to:
                self._reader.seek(tp, self._read_to[tp.partition])
        if new:
            await self._reader.seek_to_beginning(*new)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, loop: FeedbackLoop) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.loop.settled()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.loop.assigned({tp.partition for tp in assigned})
