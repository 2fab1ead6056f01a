"""The consume loop: Kafka in, many jobs in flight, outputs acknowledged, offsets committed.

Records arrive in batches from `getmany`. A task runs each partition's records of a fetch one after
another while they finish without waiting; the first that waits keeps that task, and every record
after it gets one of its own (`Worker._run_records`). A job hands its result and cost events (or its
dead letter) to the outbox (outbox.py: one record batch per topic partition for all jobs finished
meanwhile). A job's offset is finished only when the broker acknowledged its outputs (acks=all), and
the committer commits per partition only the contiguous finished prefix. At `max_in_flight` the
partitions are paused rather than buffered. A revoke or a stop lets in-flight jobs finish within the
grace period, commits, and abandons the rest uncommitted (they are redelivered).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import socket
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.protocol.commit import OffsetCommitRequest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from worker.config import Config
from worker.execution.runner import JobOutcome, JobRunner
from worker.messages import ErrorInfo, Job, Result, Usage
from worker.observability.logs import get_logger
from worker.observability.telemetry import OFF, TRACE_HEADERS, Telemetry, inject, not_sent, sent, start_send_span
from worker.pipeline import state
from worker.pipeline.intake import Rejection, dead_letter, decode_job
from worker.pipeline.kafka import DeliveryError, make_consumer, make_producer
from worker.pipeline.offsets import OffsetTracker
from worker.pipeline.outbox import Outbox, Output
from worker.pipeline.resumed import Resumed
from worker.providers import Providers, build_providers
from worker.ratelimit.limits import partition_share
from worker.runtime import tune_gc

log = get_logger("consume")


class Batch:
    """Records of one partition that one task runs in order (`Worker._run_records`); `done` of them are."""

    __slots__ = ("done", "records", "task")
    task: asyncio.Task[None]  # set at once by whoever makes the batch

    def __init__(self, records: list) -> None:
        self.records = records
        self.done = 0

    @property
    def left(self) -> int:
        return len(self.records) - self.done


Running = dict[int, Batch]  # a partition's batches in progress, by the offset of their first record


class WorkerStats(msgspec.Struct):
    """Counters of what this worker did since it started."""

    taken: int = 0
    results_ok: int = 0
    results_failed: int = 0
    dead_lettered: int = 0
    cost_events: int = 0
    abandoned: int = 0
    commits: int = 0


class Worker:
    """One worker replica: a group member of the jobs topic."""

    def __init__(self, config: Config, providers: Providers | None = None, telemetry: Telemetry = OFF) -> None:
        self.config = config
        self.telemetry = telemetry
        providers = providers if providers is not None else build_providers(config)
        self.providers = providers.clients
        for name, reason in providers.unavailable.items():
            log.warning(
                "provider skipped: its models are left out of every plan", extra={"provider": name, "reason": reason}
            )
        self.runner = JobRunner(config, self.providers, providers.unavailable, telemetry=telemetry)
        self.stats = WorkerStats()
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self._tasks: dict[TopicPartition, Running] = defaultdict(dict)
        self._releasing: set[TopicPartition] = set()
        self._capacity = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._encoder = msgspec.json.Encoder()
        self._results_topic, self._costs_topic = config.kafka.topics.results, config.kafka.topics.costs
        self._max_job_bytes = config.worker.max_job_bytes
        self._paused = False
        # Paused partitions resume once a fiftieth of the limit is free, not at every finished job; not a
        # tenth either: with long calls each resume starts that many calls at once, and the bursts come
        # back a call's length later (with 1 s calls at 5,200 in flight a tenth held jobs/s to 0.87 of
        # in-flight / latency, a fiftieth to 0.92: `make bench`, section throughput).
        self._resume_at = config.worker.max_in_flight - max(1, config.worker.max_in_flight // 50)
        self.exactly_once = config.worker.delivery == "exactly_once"
        # Exactly-once: finished jobs' outputs (and their send spans) wait here until a transaction
        # commits them with their offsets.
        self._ready: dict[TopicPartition, dict[int, tuple[list[Output], list | None]]] = defaultdict(dict)
        self._held = 0
        self._fatal: BaseException | None = None  # a fenced transactional producer: the worker stops
        self._stop: asyncio.Event | None = None
        if self.exactly_once:
            self.consumer = make_consumer(config.kafka, isolation_level="read_committed")
            self.transactional_id = (
                config.kafka.transactional_id or f"{config.kafka.group_id}-{socket.gethostname()}-{os.getpid()}"
            )
            self.producer = make_producer(
                config.kafka,
                enable_idempotence=True,
                transactional_id=self.transactional_id,
                transaction_timeout_ms=config.kafka.transaction_timeout_ms,
            )
        else:
            self.consumer = make_consumer(config.kafka)
            self.producer = make_producer(config.kafka)
        self.outbox = Outbox(self.producer)  # at-least-once: outputs go as soon as their job is done
        self._observe()

    def _observe(self) -> None:
        """Gauges read when the metric reader collects: in flight, lag, the rate-limit gates, learned rates."""
        metrics = self.runner.metrics
        metrics.gauge(
            "llm_router.jobs.in_flight",
            "{job}",
            "Jobs taken and not yet finished",
            lambda: [(self.tracker.in_flight, {})],
        )
        metrics.gauge(
            "llm_router.consumer.lag",
            "{message}",
            "Messages of each owned partition of the jobs topic not yet committed",
            self._lag,
        )
        gates = lambda: [(g, s) for g, s in self.runner.limits.stats().items()]  # noqa: E731
        metrics.gauge(
            "llm_router.rate_limit.allowance",
            "1/min",
            "Each gate's allowance a minute (this replica's share)",
            lambda: [
                (v, {"llm_router.gate": g, "llm_router.limit": k}) for g, s in gates() for k, v in s.allowance.items()
            ],
        )
        metrics.gauge(
            "llm_router.rate_limit.used",
            "1",
            "What each gate let through since start, by limit (requests, tokens)",
            lambda: [(v, {"llm_router.gate": g, "llm_router.limit": k}) for g, s in gates() for k, v in s.used.items()],
        )
        metrics.gauge(
            "llm_router.rate_limit.waiting",
            "{job}",
            "Jobs waiting at each gate",
            lambda: [(s.waiting, {"llm_router.gate": g}) for g, s in gates()],
        )
        metrics.gauge(
            "llm_router.rate_limit.rate_limited",
            "{response}",
            "429s each gate received since start",
            lambda: [(s.rate_limited, {"llm_router.gate": g}) for g, s in gates()],
        )
        metrics.gauge(
            "llm_router.learned_success_rate",
            "1",
            "The learned probability of a correct answer, by task type and model",
            lambda: [
                (rate, {"llm_router.task": task, "llm_router.model": model})
                for task, rates in self.runner.quality.snapshot().items()
                for model, rate in rates.items()
            ],
        )

    def _lag(self) -> list[tuple[float, dict[str, str | int]]]:
        committed = self.tracker.committed_positions()
        out = []
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                out.append(
                    (
                        highwater - committed.get(tp, 0),
                        {
                            "messaging.destination.name": tp.topic,
                            "messaging.destination.partition.id": str(tp.partition),
                        },
                    )
                )
        return out

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then drain within the grace period, commit and leave."""
        self._stop = stop
        tune_gc()
        topics = self.config.kafka.topics
        await self.runner.limits.start()
        await self._start_producer()
        try:
            self.consumer.subscribe([topics.jobs], listener=_Rebalance(self))
            await self.consumer.start()
            await self._warn_missing_topics()
            await self._restore_learned_rates()
            committer = asyncio.create_task(self._commit_every(self.config.worker.commit_interval_ms / 1000))
            publisher = asyncio.create_task(self._publish_rates_every(self.config.routing.state_publish_interval_s))
            try:
                await self._intake(stop)
            finally:
                await self._release(self.tracker.partitions(), reason="shutdown")
                for task in (committer, publisher):
                    task.cancel()
                await asyncio.gather(committer, publisher, return_exceptions=True)
                await self._publish_rates()
                await self.consumer.stop()
        finally:
            await self.outbox.close()
            await self.producer.stop()
            await self.runner.limits.close()
            for provider in self.providers.values():
                await provider.close()
        log.info("worker stopped", extra={"stats": msgspec.to_builtins(self.stats)})
        if self._fatal is not None:
            raise self._fatal

    async def _start_producer(self) -> None:
        try:
            await self.producer.start()
        except KafkaError as exc:
            if self.exactly_once:
                raise DeliveryError(
                    f"worker.delivery = exactly_once needs a broker with transactions (Apache Kafka); "
                    f"{self.config.kafka.bootstrap_servers} refused a transactional producer: {exc!r}"
                ) from exc
            raise

    async def _restore_learned_rates(self) -> None:
        try:
            states = await state.load(self.config.kafka)
        except KafkaError as exc:
            log.warning("learned rates not restored: starting from the priors", extra={"error": repr(exc)})
            return
        self.runner.quality.restore(states)
        if states:
            log.info(
                "learned rates restored",
                extra={"pairs": len({(s.task, s.model) for s in states}), "rates": self.runner.quality.snapshot()},
            )

    async def _publish_rates_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._publish_rates()

    async def _publish_rates(self) -> None:
        changes = self.runner.quality.take_changes()
        if changes:
            try:
                await state.publish(self.producer, self.config.kafka.topics.state, changes)
            except KafkaError as exc:
                log.warning("learned rates not published", extra={"error": repr(exc)})
                return
            log.info("learned rates", extra={"rates": self.runner.quality.snapshot()})

    async def _warn_missing_topics(self) -> None:
        known = await self.consumer.topics()
        topics = self.config.kafka.topics
        missing = [t for t in (topics.jobs, topics.results, topics.costs, topics.dlq) if t not in known]
        if missing:
            log.warning(
                "topics missing: create them with `llm-router topics create`",
                extra={"topics": missing, "bootstrap_servers": self.config.kafka.bootstrap_servers},
            )

    async def _intake(self, stop: asyncio.Event) -> None:
        worker = self.config.worker
        stopping = asyncio.ensure_future(stop.wait())
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                busy = self.tracker.in_flight + self._held
                free = worker.max_in_flight - busy
                if free <= 0 or (self._paused and busy > self._resume_at):
                    self._pause()
                    self._capacity.clear()
                    capacity = asyncio.ensure_future(self._capacity.wait())
                    await asyncio.wait(
                        {capacity, stopping}, timeout=worker.poll_timeout_ms / 1000, return_when=asyncio.FIRST_COMPLETED
                    )
                    capacity.cancel()
                    continue
                self._resume()
                fetched = await self.consumer.getmany(
                    timeout_ms=worker.poll_timeout_ms, max_records=min(worker.batch_max_records, free)
                )
                assigned = self.consumer.assignment() if fetched else frozenset()
                for tp, records in fetched.items():
                    if tp in self._releasing or tp not in assigned:
                        continue  # revoked meanwhile: its new owner takes these from the committed offset
                    tasks = self._tasks[tp]
                    self.tracker.take(tp, [record.offset for record in records])
                    tasks[records[0].offset] = batch = Batch(records)
                    batch.task = loop.create_task(self._run_records(tp, batch, tasks))
                    self.stats.taken += len(records)
        finally:
            stopping.cancel()

    def _pause(self) -> None:
        assigned = self.consumer.assignment()
        if assigned:
            self.consumer.pause(*assigned)
        self._paused = True

    def _resume(self) -> None:
        if self._paused:
            self.consumer.resume(*self.consumer.assignment())
            self._paused = False

    async def _run_records(self, tp: TopicPartition, batch: Batch, tasks: Running) -> None:
        """Run the batch's records in this task, one after another, while each finishes without waiting
        (an in-process provider, a dead letter, no route). When one waits instead (any call over the
        network), this task stays with it, and every record after it gets a task of its own at once
        (`_hand_off`), as if each had had one from the start.

        A job that waits must own the task it started in: the job deadline, and the HTTP clients'
        timeouts, cancel the task that was current when they were set. A task a record costs its
        creation, a turn of the event loop and its registration among all tasks: 5% of the worker's
        instructions on jobs that need no I/O (`make bench`, worker_echo)."""
        # The context the records after a waiting one start from (not the waiting job's: its spans);
        # a batch of one has none after it.
        context = contextvars.copy_context() if len(batch.records) > 1 else None
        try:
            handle = self._handle
            while batch.done < len(batch.records):  # `_hand_off` shortens them
                if batch.done == len(batch.records) - 1:  # the last: no record after it to hand off
                    await handle(tp, batch.records[batch.done], batch.task)
                    batch.done += 1
                    continue
                job = handle(tp, batch.records[batch.done], batch.task)
                try:
                    waiting_on = job.send(None)  # its first step: to its end, or to what it waits for
                except StopIteration:
                    batch.done += 1
                    continue
                self._hand_off(tp, batch, tasks, context)  # type: ignore[arg-type]  # not the last record: a batch of several
                await Resumed(job, waiting_on)
                batch.done += 1
        finally:
            tasks.pop(batch.records[0].offset, None)

    def _hand_off(self, tp: TopicPartition, batch: Batch, tasks: Running, context: contextvars.Context) -> None:
        """The batch's record `batch.done` waits: those after it get a task each. Not while the
        partition is being released: the drain then waits for the batch as it is."""
        waiting = batch.done
        if waiting >= len(batch.records) - 1 or tp in self._releasing:
            return
        later, batch.records = batch.records[waiting + 1 :], batch.records[: waiting + 1]
        create_task, run = asyncio.get_running_loop().create_task, self._run_records
        for record in later:
            tasks[record.offset] = alone = Batch([record])
            alone.task = create_task(run(tp, alone, tasks), context=context.copy())

    async def _handle(self, tp: TopicPartition, record, task: asyncio.Task[None]) -> None:
        """Run one record to its outputs and hand them on: to the outbox, or (exactly-once) to the next transaction.
        `task` runs it (its job deadline cancels that task)."""
        try:
            telemetry = self.telemetry
            if telemetry.tracing:
                await self._traced(tp, record, task)
                return
            # No spans of ours: the producer's context still reaches the outputs as it came.
            carried = [(k, v) for k, v in record.headers if k in TRACE_HEADERS] if record.headers else []
            outputs = await self._process(record, task)
            if carried:
                outputs = _with_headers(outputs, carried)
            self._hand_on(tp, record.offset, outputs)
        except Exception:
            log.exception(
                "job crashed; its offset stays uncommitted",
                extra={"partition": record.partition, "offset": record.offset},
            )

    async def _traced(self, tp: TopicPartition, record, task: asyncio.Task[None]) -> None:
        telemetry = self.telemetry
        parent, links = telemetry.process_context(record.headers)
        attributes = {
            "messaging.system": "kafka",
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": record.topic,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
            "messaging.consumer.group.name": self.config.kafka.group_id,
        }
        if record.key is not None:
            attributes["messaging.kafka.message.key"] = record.key.decode("utf-8", "replace")
        with telemetry.tracer.start_as_current_span(
            f"process {record.topic}", context=parent, kind=SpanKind.CONSUMER, links=links, attributes=attributes
        ) as span:
            outputs = await self._process(record, task)
            if not span.is_recording():
                # Not sampled: the outputs carry the process span's context.
                context: list[tuple[str, bytes]] = []
                inject(context)
                self._hand_on(tp, record.offset, _with_headers(outputs, context))
                return
            # A send span for each output, ended at the broker's acknowledgement (by the outbox), or
            # (exactly-once) when the transaction holding it commits.
            spans, traced = [], []
            for topic, key, value, headers in outputs:
                send = start_send_span(telemetry, topic, key)
                spans.append(send)
                headers = list(headers)
                inject(headers, trace.set_span_in_context(send))
                traced.append((topic, key, value, headers))
            self._hand_on(tp, record.offset, traced, spans)

    def _hand_on(self, tp: TopicPartition, offset: int, outputs: list[Output], spans: list | None = None) -> None:
        if self.exactly_once:
            self._ready[tp][offset] = (outputs, spans)
            self._held += 1
            self._finish(tp, offset)
        else:
            self.outbox.put(outputs, partial(self._finish, tp, offset), spans)

    def _finish(self, tp: TopicPartition, offset: int) -> None:
        """A job's outputs are acknowledged (or held for the transaction): its offset may be committed."""
        self.tracker.finish(tp, offset)
        if (
            self._paused and self.tracker.in_flight + self._held <= self._resume_at
        ):  # the intake waits only while paused
            self._capacity.set()

    async def _process(self, record, task: asyncio.Task[None]) -> list[Output]:
        """A record's outputs: its result and cost events, or its dead letter (`task`: the one running it)."""
        decoded = decode_job(record.value, self._max_job_bytes)
        if isinstance(decoded, Rejection):
            self.stats.dead_lettered += 1
            if self.telemetry.metering:
                self.runner.metrics.dead_letter(decoded.kind)
            if self.telemetry.tracing:
                span = trace.get_current_span()
                span.set_attribute("error.type", "dead_lettered")
                span.set_status(Status(StatusCode.ERROR, decoded.kind))
            return [self._dead_letter(decoded, record)]
        if self.telemetry.tracing:
            trace.get_current_span().set_attribute("llm_router.job.id", decoded.id)
        try:
            outcome = await self.runner.run(decoded, task)
        except Exception as exc:  # a bug must still give the job a result, never silence
            outcome = self._internal_error(decoded, exc)
        if outcome.result.status == "ok":
            self.stats.results_ok += 1
        else:
            self.stats.results_failed += 1
        self.stats.cost_events += len(outcome.cost_events)
        return self._job_outputs(outcome)

    @staticmethod
    def _internal_error(job: Job, exc: Exception) -> JobOutcome:
        log.exception("job failed inside the worker", extra={"job_id": job.id})
        result = Result(
            job_id=job.id,
            status="failed",
            attempts=[],
            usage=Usage(),
            cost_usd=0.0,
            latency_ms=0.0,
            finished_at=_now(),
            tenant=job.tenant,
            error=ErrorInfo("internal", f"{type(exc).__name__}: {exc}"),
        )
        return JobOutcome(result, [])

    def _job_outputs(self, outcome: JobOutcome) -> list[Output]:
        key = outcome.result.job_id.encode()
        encode, costs = self._encoder.encode, self._costs_topic
        outputs: list[Output] = []
        for event in outcome.cost_events:
            outputs.append((costs, key, encode(event), []))
        outputs.append((self._results_topic, key, encode(outcome.result), []))
        return outputs

    def _dead_letter(self, rejection: Rejection, record) -> Output:
        limit = self.config.worker.max_job_bytes
        letter, value = dead_letter(rejection, record.topic, record.partition, record.offset, record.value, limit)
        log.warning(
            "dead-lettered",
            extra={
                "kind": letter.error_kind,
                "error": letter.error[:300],
                "partition": record.partition,
                "offset": record.offset,
            },
        )
        return (self.config.kafka.topics.dlq, record.key, value, letter.to_headers())

    async def _commit_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.commit()

    async def commit(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Commit the finished prefix of the given partitions (default: all still owned)."""
        async with self._commit_lock:
            if self._fatal is not None:
                return
            owned = [tp for tp in (partitions if partitions is not None else self.tracker.partitions())]
            positions = self.tracker.to_commit(owned)
            if not positions:
                return
            if not self._member():
                # The coordinator forgot this member (its session expired, or the broker lost its state):
                # the partitions are lost, not revoked. Their finished jobs are redone by the next owner.
                log.warning(
                    "not committed: this worker lost its membership of the group",
                    extra={"partitions": sorted(tp.partition for tp in positions)},
                )
                return
            if self.exactly_once:
                if not await self._commit_transaction(positions):
                    return
            else:
                try:
                    await self.consumer.commit(positions)
                except KafkaError as exc:
                    log.warning("commit failed", extra={"error": repr(exc)})
                    return
            self.tracker.committed(positions)
            self.stats.commits += 1

    def _member(self) -> bool:
        """Whether the consumer still holds a generation of the group.

        When the coordinator answers UnknownMemberId or IllegalGeneration, aiokafka resets the
        generation to -1 before it calls the revoke listener, and a commit sent then goes out as a
        standalone commit, which a group without members accepts: it would write offsets of partitions
        this worker no longer owns, or of a topic that was since recreated (a broker that lost its
        data), where they skip the new jobs below them, or leave the partition stuck past its end."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        return coordinator is None or coordinator.generation != OffsetCommitRequest.DEFAULT_GENERATION_ID

    async def _commit_transaction(self, positions: dict[TopicPartition, int]) -> bool:
        """One transaction: the outputs of every job below `positions`, and the positions as the group's offsets."""
        offsets = {tp: sorted(o for o in self._ready[tp] if o < position) for tp, position in positions.items()}
        traced: list[tuple[Any, asyncio.Future[Any]]] = []  # (send span, the send's acknowledgement)
        try:
            async with self.producer.transaction():
                for tp, finished in offsets.items():
                    for offset in finished:
                        outputs, spans = self._ready[tp][offset]
                        for index, (topic, key, value, headers) in enumerate(outputs):
                            acknowledged = await self.producer.send(topic, value, key=key, headers=headers)
                            if spans:
                                traced.append((spans[index], acknowledged))
                await self.producer.send_offsets_to_transaction(positions, self.config.kafka.group_id)
        except ProducerFenced as exc:
            # Another replica took this transactional id: this one must not write again.
            log.error(
                "fenced: another producer took this transactional id; stopping",
                extra={"transactional_id": self.transactional_id},
            )
            self._fatal = exc
            if self._stop is not None:
                self._stop.set()
            self._not_sent(offsets, exc)
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
            self._held -= len(finished)
        self._capacity.set()
        return True

    def _not_sent(self, offsets: dict[TopicPartition, list[int]], exc: BaseException) -> None:
        """The transaction holding these jobs' outputs failed: their send spans end with the error (the
        outputs go in a later transaction, or to the partition's next owner, without spans)."""
        for tp, finished in offsets.items():
            ready = self._ready.get(tp, {})
            for offset in finished:
                outputs, spans = ready.get(offset, ([], None))
                for span in spans or ():
                    not_sent(span, exc)
                if spans:
                    ready[offset] = (outputs, None)

    async def _release(self, partitions: Iterable[TopicPartition], reason: str) -> None:
        """Stop taking from `partitions`, let their jobs finish within the grace period, commit, forget."""
        partitions = [tp for tp in partitions]
        if not partitions:
            return
        self._releasing.update(partitions)
        try:
            started = time.monotonic()
            await self._drain(partitions, reason, started + self.config.worker.shutdown_grace_s)
            # Finished jobs' outputs still on their way to the broker: their offsets finish at the acknowledgement.
            left = self.config.worker.shutdown_grace_s - (time.monotonic() - started)
            if not await self.outbox.settled(max(0.0, left)):
                log.warning(
                    "outputs not acknowledged within the grace period: their jobs stay uncommitted",
                    extra={"reason": reason, "jobs": self.outbox.unacknowledged},
                )
            await self.commit(partitions)
            self.tracker.drop(partitions)
            for tp in partitions:
                self._tasks.pop(tp, None)
                # Not committed: the partition's next owner redoes them.
                self._not_sent(
                    {tp: list(self._ready.get(tp, ()))},
                    RuntimeError(f"not committed before the partition was released ({reason})"),
                )
                self._held -= len(self._ready.pop(tp, {}))
            log.info(
                "partitions released",
                extra={
                    "reason": reason,
                    "partitions": sorted(tp.partition for tp in partitions),
                    "drain_s": round(time.monotonic() - started, 3),
                },
            )
        finally:
            self._releasing.difference_update(partitions)
        self._capacity.set()

    async def _drain(self, partitions: list[TopicPartition], reason: str, until: float) -> None:
        """Wait for the jobs of `partitions` until `until` (monotonic), then cancel those left."""

        def running() -> list[Batch]:
            return [batch for tp in partitions for batch in self._tasks.get(tp, {}).values() if not batch.task.done()]

        batches = running()
        if batches:
            log.info("draining in-flight jobs", extra={"reason": reason, "jobs": sum(batch.left for batch in batches)})
        while batches:
            left = until - time.monotonic()
            if left <= 0:
                unfinished = {batch.task for batch in batches}
                abandoned = sum(batch.left for batch in batches)
                for task in unfinished:
                    task.cancel()
                await asyncio.wait(unfinished)
                self.stats.abandoned += abandoned
                log.warning("abandoned unfinished jobs uncommitted", extra={"reason": reason, "jobs": abandoned})
                return
            await asyncio.wait({batch.task for batch in batches}, timeout=left)
            batches = running()  # and those handed a task of their own meanwhile (`_hand_off`)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker._release(revoked, reason="revoked")

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        worker = self._worker
        if worker._paused and assigned:
            worker.consumer.pause(*assigned)
        total = len(worker.consumer.partitions_for_topic(worker.config.kafka.topics.jobs) or ())
        share = partition_share(len(assigned), total)
        if share > 0:
            worker.runner.limits.set_share(share)
        log.info(
            "partitions assigned",
            extra={"partitions": sorted(tp.partition for tp in assigned), "rate_limit_share": round(share, 4)},
        )


def _with_headers(outputs: list[Output], headers: list[tuple[str, bytes]]) -> list[Output]:
    """The outputs with `headers` after their own."""
    return [(topic, key, value, own + headers) for topic, key, value, own in outputs]


def _now() -> datetime:
    return datetime.now(UTC)
