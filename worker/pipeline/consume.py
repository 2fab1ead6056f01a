"""The consume loop: Kafka in, many jobs in flight, outputs delivered, offsets committed.

Records arrive in batches from `getmany`; each record runs as a task of its own (an eager task where
the Python version has them, so a job that needs no I/O finishes without a turn of the event loop).
A finished job hands its result, cost events and route (or its dead letter) to the sink of the configured
delivery (sinks.py): the outbox for at-least-once, a transaction for exactly-once. The sink finishes
the job's offset when its outputs are safe, and the committer commits per partition only the
contiguous finished prefix. At `max_in_flight` the partitions are paused rather than buffered. A
revoke or a stop lets in-flight jobs finish within the grace period, commits, and abandons the rest
uncommitted (they are redelivered). Beside the loop, each replica takes its share of the feedback
topic (feedback.py) and shares what it learns with the other replicas (evidence.py).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable
from functools import partial
from typing import Any

import msgspec
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from worker.config import Config, ConfigError
from worker.execution.runner import JobOutcome, JobRunner, Parked
from worker.messages import Job, Result
from worker.observability.endpoint import Endpoint
from worker.observability.logs import get_logger
from worker.observability.prometheus import CONTENT_TYPE
from worker.observability.telemetry import OFF, TRACE_HEADERS, Telemetry, inject, start_send_span
from worker.pipeline import evidence, state
from worker.pipeline.batches import BatchDesk
from worker.pipeline.budgets import BUDGET_EXCEEDED, Budgets, Refusal, SpendLedger, today
from worker.pipeline.connection import BrokerWatch, watch_client_logs
from worker.pipeline.dedupe import FinishedRecords
from worker.pipeline.evidence import EvidenceTail
from worker.pipeline.feedback import FeedbackLoop
from worker.pipeline.finished import Deduplicator
from worker.pipeline.intake import Rejection, dead_letter, decode_job, rejected_result
from worker.pipeline.kafka import make_consumer, make_producer, wait_for_broker
from worker.pipeline.offsets import OffsetTracker
from worker.pipeline.outbox import Output
from worker.pipeline.sinks import OutboxSink, Sink, TransactionalSink
from worker.pipeline.spend import SpendTail
from worker.providers import Providers, batch_apis, build_providers
from worker.ratelimit.gates import GateStats
from worker.ratelimit.limits import partition_share
from worker.runtime import tune_gc

log = get_logger("consume")


class WorkerStats(msgspec.Struct):
    """Counters of what this worker did since it started."""

    taken: int = 0
    results_ok: int = 0
    results_failed: int = 0
    dead_lettered: int = 0
    cost_events: int = 0
    abandoned: int = 0
    commits: int = 0
    duplicates: int = 0  # jobs not run again: their id had finished (their first result published again)
    parked: int = 0  # jobs handed to the batch desk (batches.py)
    budget_exceeded: int = 0  # jobs refused: their tenant's spend of the day had reached its budget


class Worker:
    """One worker replica: a group member of the jobs topic."""

    def __init__(self, config: Config, providers: Providers | None = None, telemetry: Telemetry = OFF) -> None:
        self.config = config
        self.telemetry = telemetry
        providers = providers if providers is not None else build_providers(config)
        if not providers.clients:
            raise ConfigError(_no_usable_provider(config, providers.unavailable))
        self.providers = providers.clients
        self._skipped = providers.unavailable  # said once the broker answered
        apis = batch_apis(config, self.providers) if config.batch.enabled else {}
        self.runner = JobRunner(
            config,
            self.providers,
            providers.unavailable,
            telemetry=telemetry,
            batch_discounts={name: config.providers[name].batch_discount for name in apis},
        )
        self.stats = WorkerStats()
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        # The running jobs of each owned partition, by offset: what a release waits for, or cancels.
        self._jobs: dict[TopicPartition, dict[int, asyncio.Task[None]]] = defaultdict(dict)
        self._releasing: set[TopicPartition] = set()
        self._capacity = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._encoder = msgspec.json.Encoder()
        topics = config.kafka.topics
        self._results_topic, self._costs_topic, self._routes_topic = topics.results, topics.costs, topics.routes
        self._max_job_bytes = config.worker.max_job_bytes
        self._paused = False
        self._no_provider_since: float | None = None  # paused because no provider can take a job
        self._membership_lost = False  # said so; quiet until a commit goes through
        # Paused partitions resume once a fiftieth of the limit is free, not at every finished job; not a
        # tenth either: with long calls each resume starts that many calls at once, and the bursts come
        # back a call's length later (`make bench`, section throughput).
        self._resume_at = config.worker.max_in_flight - max(1, config.worker.max_in_flight // 50)
        self._fatal: BaseException | None = None  # a fenced transactional producer: the worker stops
        self._stop: asyncio.Event | None = None
        # The finished records listing the jobs that ran (deduplication), written by the sink with their outputs.
        records = FinishedRecords(config.kafka.topics.finished) if config.worker.dedupe_window_s > 0 else None
        self.sink: Sink
        if config.worker.delivery == "exactly_once":
            self.consumer = make_consumer(config.kafka, isolation_level="read_committed")
            self.sink = TransactionalSink(config.kafka, self._finish, fenced=self._fenced, records=records)
        else:
            self.consumer = make_consumer(config.kafka)
            self.sink = OutboxSink(config.kafka, self.consumer, self._finish, records)
        self.producer = self.sink.producer
        # Learned rates, evidence and feedback marks are sent outside the jobs' transactions.
        exactly_once = config.worker.delivery == "exactly_once"
        self.learning_producer = make_producer(config.kafka) if exactly_once else self.producer
        self.replica = evidence.replica_id()
        self.feedback = FeedbackLoop(config, self.runner.quality, self.learning_producer)
        self.evidence = EvidenceTail(config.kafka, self.replica, self.runner.quality)
        # Jobs parked for a provider's batch: none without a provider whose batch API may be used.
        self.batches = BatchDesk(config, self.runner, apis, self.learning_producer) if apis else None
        self._sharing = False  # evidence is sent and taken (the evidence topic exists)
        self.broker = BrokerWatch(self.consumer.topics, config.kafka.bootstrap_servers)
        self._joined = False  # the group assigned this member its partitions (none, maybe) at least once
        self.endpoint: Endpoint | None = None  # /metrics, /healthz, /readyz: on with worker.http_port
        if config.worker.http_port:
            self.endpoint = Endpoint(
                config.worker.http_host, config.worker.http_port, self.readiness, telemetry.exposition, CONTENT_TYPE
            )
        isolation = "read_committed" if config.worker.delivery == "exactly_once" else "read_uncommitted"
        self.dedupe: Deduplicator | None = None  # idempotence by job id (finished.py); off with a window of 0
        if config.worker.dedupe_window_s > 0:
            self.dedupe = Deduplicator(config.kafka, config.worker, isolation)
        # Tenant budgets (budgets.py, spend.py): the day's spend from the costs topic; none without a budget.
        budgets = Budgets(config)
        self.spend = SpendTail(config.kafka, SpendLedger(budgets), isolation) if budgets.any else None
        self._observe()

    @property
    def serving(self) -> bool:
        """Whether the worker takes jobs: some provider can take one (else its partitions are paused)."""
        return self._no_provider_since is None

    async def readiness(self) -> str | None:
        """Why the worker is not ready (None when it is): it joined the group, the broker answers, and
        Redis does when the rate limits are shared through it."""
        if not self._joined:
            return "the consumer group is not joined yet"
        if not self.broker.connected:
            return f"the broker ({self.config.kafka.bootstrap_servers}) does not answer"
        return await self.runner.limits.unreachable()

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
            "llm_router.broker.connected",
            "1",
            "1 while the broker answers, 0 while it is lost",
            lambda: [(1 if self.broker.connected else 0, {})],
        )
        metrics.gauge(
            "llm_router.worker.serving",
            "1",
            "1 while some provider can take jobs, 0 while the partitions are paused for want of one",
            lambda: [(1 if self.serving else 0, {})],
        )
        if self.spend is not None:
            ledger = self.spend.ledger
            metrics.gauge(
                "llm_router.tenant.spend",
                "USD",
                "Each budgeted tenant's spend of the UTC day, from the cost events this replica has counted",
                lambda: [(spent, {"llm_router.tenant": tenant}) for tenant, spent in ledger.budgeted(today())],
            )
        metrics.gauge(
            "llm_router.consumer.lag",
            "{message}",
            "Messages of each owned partition of the jobs topic not yet committed",
            self._lag,
        )

        def gates() -> list[tuple[str, GateStats]]:
            return list(self.runner.limits.stats().items())

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
        metrics.gauge(
            "llm_router.json_format_rate",
            "1",
            "The learned probability that a model's answer to a JSON job is JSON, by model",
            lambda: [
                (rate, {"llm_router.model": model})
                for model, rate in self.runner.quality.json_format.snapshot().items()
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
        """Consume until `stop` is set, then drain within the grace period, commit and leave; the HTTP endpoint
        (`worker.http_port`) answers meanwhile, from before the broker does."""
        tune_gc()
        if self.endpoint is None:
            await self._run(stop)
            return
        await self.endpoint.start()
        try:
            await self._run(stop)
        finally:
            await self.endpoint.close()

    async def _run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        topics = self.config.kafka.topics
        if not await self._broker_answers(stop):
            await self._close_providers()
            log.info("worker stopped before the broker answered")
            return
        self._log_start()
        await self.runner.limits.start()
        await self.sink.start()
        if self.learning_producer is not self.producer:
            await self.learning_producer.start()
        try:
            if self.dedupe is not None:
                await self.dedupe.start()
            spending = self.spend is not None and await self._start_spend(self.spend)
            self.consumer.subscribe([topics.jobs], listener=_Rebalance(self))
            await self.consumer.start()
            await self._warn_missing_topics()
            await self._restore_learned_rates()
            await self._start_sharing()
            background = [
                asyncio.create_task(self._commit_every(self.config.worker.commit_interval_ms / 1000)),
                asyncio.create_task(self._publish_rates_every(self.config.routing.state_publish_interval_s)),
                asyncio.create_task(self.broker.run()),
                asyncio.create_task(self._take_feedback()),
            ]
            if self.batches is not None:
                background.append(asyncio.create_task(self._run_batches(self.batches)))
            if self._sharing:
                background.append(asyncio.create_task(self.evidence.run()))
            if spending and self.spend is not None:
                background.append(asyncio.create_task(self._tail_spend(self.spend)))
            unwatch = watch_client_logs(self.broker)
            try:
                await self._intake(stop)
            finally:
                await self.release(self.tracker.partitions(), reason="shutdown")
                unwatch()
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                await self._publish_rates()
                await self.consumer.stop()
        finally:
            await self.evidence.close()
            if self.dedupe is not None:
                await self.dedupe.close()
            if self.spend is not None:
                await self.spend.close()
            if self.learning_producer is not self.producer:
                await self.learning_producer.stop()
            await self.sink.close()
            await self.runner.limits.close()
            await self._close_providers()
        log.info(
            "worker stopped",
            extra={"stats": msgspec.to_builtins(self.stats), "feedback": msgspec.to_builtins(self.feedback.stats)},
        )
        if self._fatal is not None:
            raise self._fatal

    def _log_start(self) -> None:
        """The worker's first lines, once the broker answered (before, a stopped broker's one error line says all)."""
        kafka = self.config.kafka
        log.info(
            "worker starting",
            extra={
                "bootstrap_servers": kafka.bootstrap_servers,
                "group_id": kafka.group_id,
                "jobs_topic": kafka.topics.jobs,
                "event_loop": type(asyncio.get_running_loop()).__module__.partition(".")[0],
            },
        )
        for name, reason in self._skipped.items():
            log.warning(
                "provider skipped: its models are left out of every plan", extra={"provider": name, "reason": reason}
            )

    async def _broker_answers(self, stop: asyncio.Event) -> bool:
        """Wait for the broker (`kafka.connect_timeout_s`, then BrokerUnavailable; BrokerRefused at once when it
        refuses the credentials or its certificate fails verification); False when the worker is stopped first."""
        waiting = asyncio.ensure_future(wait_for_broker(self.config.kafka))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not waiting.done():
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
        if waiting.cancelled():
            return False
        waiting.result()  # BrokerUnavailable, BrokerRefused
        return True

    async def _close_providers(self) -> None:
        for provider in self.providers.values():
            await provider.close()

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

    async def _start_sharing(self) -> None:
        """Tail the evidence topic from its end (after the learned rates are restored: they hold what came before)."""
        try:
            self._sharing = await self.evidence.start()
        except KafkaError as exc:
            log.warning("evidence not shared: this replica learns alone", extra={"error": repr(exc)})

    async def _start_spend(self, spend: SpendTail) -> bool:
        """Start reading the day's spend; False when it cannot be read (budgets then go by this replica's own
        cost events)."""
        try:
            return await spend.start()
        except KafkaError as exc:
            log.warning(
                "the day's spend not read: budgets count this replica's cost events only", extra={"error": repr(exc)}
            )
            return False

    async def _tail_spend(self, spend: SpendTail) -> None:
        try:
            await spend.run()
        except Exception:  # the broker failed it, or a bug: said; budgets go on with what was read
            log.exception("the costs topic no longer read: budgets count this replica's cost events from now")

    async def _take_feedback(self) -> None:
        try:
            await self.feedback.run()
        except Exception:  # the broker failed it, or a bug: said, and the jobs go on
            log.exception("feedback no longer taken by this replica")

    async def _run_batches(self, desk: BatchDesk) -> None:
        try:
            await desk.run()
        except Exception:  # the broker failed it, or a bug: said; parked jobs wait for another replica
            log.exception("parked jobs no longer handled by this replica")

    async def _publish_rates_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._publish_rates()

    async def _publish_rates(self) -> None:
        """The learned rates changed since the last time to the state topic, and what this replica learned to the
        other replicas."""
        quality, topics = self.runner.quality, self.config.kafka.topics
        changes = quality.take_changes()
        try:
            if changes:
                await state.publish(self.learning_producer, topics.state, changes)
            if self._sharing:
                await evidence.publish(self.learning_producer, topics.evidence, self.replica, quality)
        except KafkaError as exc:
            self._kafka_failed("learned rates not published", exc)
            return
        if changes:
            log.info("learned rates", extra={"rates": quality.snapshot()})

    async def _warn_missing_topics(self) -> None:
        known = await self.consumer.topics()
        topics = self.config.kafka.topics
        needed = [topics.jobs, topics.results, topics.costs, topics.dlq, topics.feedback, topics.routes]
        needed += [topics.evidence] + ([topics.finished] if self.dedupe else [])
        needed += [topics.batches] if self.batches is not None else []
        missing = [t for t in needed if t not in known]
        if missing:
            log.warning(
                "topics missing: create them with `llm-router topics create`",
                extra={"topics": missing, "bootstrap_servers": self.config.kafka.bootstrap_servers},
            )

    async def _intake(self, stop: asyncio.Event) -> None:
        worker = self.config.worker
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                if not self._provider_available():
                    await self._wait_for_provider()
                    continue
                busy = self.tracker.in_flight + self.sink.held
                free = worker.max_in_flight - busy
                if self._no_provider_since is not None:  # only a probe may go out: one job at a time
                    free = min(free, 0 if busy else 1)
                if free <= 0 or (self._paused and busy > self._resume_at):
                    await self._wait_for_capacity(stopping)
                    continue
                self._resume()
                fetched = await self.consumer.getmany(
                    timeout_ms=worker.poll_timeout_ms, max_records=min(worker.batch_max_records, free)
                )
                self._start_jobs(fetched)
        finally:
            stopping.cancel()

    async def _wait_for_capacity(self, stopping: asyncio.Future[Any]) -> None:
        """Pause the partitions until enough jobs finish (or the worker stops, or a poll interval passes)."""
        self._pause()
        self._capacity.clear()
        capacity = asyncio.ensure_future(self._capacity.wait())
        await asyncio.wait(
            {capacity, stopping},
            timeout=self.config.worker.poll_timeout_ms / 1000,
            return_when=asyncio.FIRST_COMPLETED,
        )
        capacity.cancel()

    def _provider_available(self) -> bool:
        """Whether some provider can take a job, if only as a probe (a breaker half-open, a rotation retry
        due). The pause is logged when none can; the resume once a provider takes jobs again, not probes."""
        serving = self.runner.serving()
        if self._no_provider_since is not None and self.runner.healthy():
            log.info(
                "a provider can take jobs again: partitions resumed",
                extra={"paused_s": round(time.monotonic() - self._no_provider_since, 1)},
            )
            self._no_provider_since = None
        elif not serving and self._no_provider_since is None:
            self._no_provider_since = time.monotonic()
            log.warning(
                "no provider can take jobs: partitions paused, jobs taken run to their results",
                extra={
                    "out_of_rotation": sorted(self.runner.health.out_of_rotation()),
                    "breakers_open": sorted(self.runner.breakers.blocked(time.monotonic())),
                },
            )
        return serving

    async def _wait_for_provider(self) -> None:
        """Paused until a provider can take jobs. The poll goes on, empty (its partitions paused), so that
        the group does not take this worker for a stuck one; a stop ends it within a poll timeout."""
        self._pause()
        await self.consumer.getmany(timeout_ms=self.config.worker.poll_timeout_ms, max_records=1)

    def _start_jobs(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        """A task for each fetched record, except those of partitions revoked meanwhile (their new owner
        takes them from the committed offset)."""
        assigned = self.consumer.assignment() if fetched else frozenset()
        start = _task_starter()
        for tp, records in fetched.items():
            if tp in self._releasing or tp not in assigned:
                continue
            self.tracker.take(tp, [record.offset for record in records])
            self.stats.taken += len(records)
            running = self._jobs[tp]
            for record in records:
                job = start(self._handle(tp, record, running))
                if not job.done():  # an eager task may have finished already
                    running[record.offset] = job

    def _pause(self) -> None:
        assigned = self.consumer.assignment()
        if assigned:
            self.consumer.pause(*assigned)
        self._paused = True

    def _resume(self) -> None:
        if self._paused:
            self.consumer.resume(*self.consumer.assignment())
            self._paused = False

    async def _handle(self, tp: TopicPartition, record: Any, running: dict[int, asyncio.Task[None]]) -> None:
        """Run one record (aiokafka's ConsumerRecord) to its outputs and hand them to the sink; then leave
        `running`, its partition's running jobs."""
        try:
            if self.telemetry.tracing:
                await self._traced(tp, record)
                return
            # No spans of ours: the producer's context still reaches the outputs as it came.
            carried = [(k, v) for k, v in record.headers if k in TRACE_HEADERS] if record.headers else []
            outputs, finished = await self._process(record)
            if carried:
                outputs = _with_headers(outputs, carried)
            self.sink.put(tp, record.offset, outputs, None, finished)
        except Exception:
            log.exception(
                "job crashed; its offset stays uncommitted",
                extra={"partition": record.partition, "offset": record.offset},
            )
        finally:
            running.pop(record.offset, None)

    async def _traced(self, tp: TopicPartition, record: Any) -> None:
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
            outputs, finished = await self._process(record)
            if not span.is_recording():
                # Not sampled: the outputs carry the process span's context.
                context: list[tuple[str, bytes]] = []
                inject(context)
                self.sink.put(tp, record.offset, _with_headers(outputs, context), None, finished)
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
            self.sink.put(tp, record.offset, traced, spans, finished)

    def _finish(self, tp: TopicPartition, offset: int) -> None:
        """A job's outputs are acknowledged (or held for the transaction): its offset may be committed."""
        self.tracker.finish(tp, offset)
        # The intake waits for capacity only while paused.
        if self._paused and self.tracker.in_flight + self.sink.held <= self._resume_at:
            self._capacity.set()

    def _fenced(self, exc: BaseException) -> None:
        """Another replica took the transactional id: this worker stops, and `run` raises `exc`."""
        self._fatal = exc
        if self._stop is not None:
            self._stop.set()

    async def _process(self, record: Any) -> tuple[list[Output], str | None]:
        """A record's (aiokafka's ConsumerRecord) outputs: its result and cost events, or its dead letter; and
        the id to list in a finished record when the job ran (deduplication on)."""
        decoded = decode_job(record.value, self._max_job_bytes)
        if isinstance(decoded, Rejection):
            self.stats.dead_lettered += 1
            if self.telemetry.metering:
                self.runner.metrics.dead_letter(decoded.kind)
            if self.telemetry.tracing:
                span = trace.get_current_span()
                span.set_attribute("error.type", "dead_lettered")
                span.set_status(Status(StatusCode.ERROR, decoded.kind))
            outputs = [self._dead_letter(decoded, record)]
            result = rejected_result(decoded)
            if result is not None:  # whoever waits on the results topic for its id is answered too
                outputs.append((self._results_topic, result.job_id.encode(), self._encoder.encode(result), []))
            return outputs, None
        if self.telemetry.tracing:
            trace.get_current_span().set_attribute("llm_router.job.id", decoded.id)
        if self.dedupe is not None:
            first = await self.dedupe.first_result(record.partition, decoded.id)
            if first is not None:
                return self._repeated(decoded.id, first), None
        if self.spend is not None:
            refusal = await self.spend.refusal(decoded.tenant or "")
            if refusal is not None:
                if self.dedupe is not None:  # not listed as finished: produced again once the budget allows, it runs
                    self.dedupe.abandoned(decoded.id)
                return self._refused(decoded, refusal), None
        due = record.timestamp / 1000 + decoded.complete_within_s if decoded.complete_within_s else None
        try:
            outcome = await self.runner.run(decoded, due=due)
        except Exception as exc:  # a bug must still give the job a result, never silence
            outcome = self._internal_error(decoded, exc)
        except asyncio.CancelledError:  # abandoned: a copy waiting for its result runs itself
            if self.dedupe is not None:
                self.dedupe.abandoned(decoded.id)
            raise
        self.stats.cost_events += len(outcome.cost_events)
        if isinstance(outcome, Parked):  # its offset is committed once its record is on the batches topic
            self.stats.parked += 1
            return self._parked_outputs(outcome), None
        if outcome.result.status == "ok":
            self.stats.results_ok += 1
        else:
            self.stats.results_failed += 1
        return self._job_outputs(outcome), decoded.id if self.dedupe is not None else None

    @staticmethod
    def _internal_error(job: Job, exc: Exception) -> JobOutcome:
        log.exception("job failed inside the worker", extra={"job_id": job.id})
        result = Result.failed(
            job_id=job.id, kind="internal", message=f"{type(exc).__name__}: {exc}", tenant=job.tenant
        )
        return JobOutcome(result=result, cost_events=[])

    def _refused(self, job: Job, refusal: Refusal) -> list[Output]:
        """A job of a tenant whose spend of the day reached its budget: a failed result, no attempt."""
        self.stats.budget_exceeded += 1
        self.stats.results_failed += 1
        result = Result.failed(job_id=job.id, kind=BUDGET_EXCEEDED, message=refusal.message, tenant=job.tenant)
        if self.telemetry.metering:
            self.runner.metrics.job(result)
            self.runner.metrics.budget_exceeded(refusal.tenant)
        if self.telemetry.tracing:
            span = trace.get_current_span()
            span.set_attribute("error.type", BUDGET_EXCEEDED)
            span.set_status(Status(StatusCode.ERROR, refusal.message))
        return [(self._results_topic, job.id.encode(), self._encoder.encode(result), [])]

    def _job_outputs(self, outcome: JobOutcome) -> list[Output]:
        key = outcome.result.job_id.encode()
        if self.spend is not None:  # counted now; the tail skips them when it reads them back
            self.spend.ledger.add_own(outcome.cost_events)
        encode, costs = self._encoder.encode, self._costs_topic
        outputs: list[Output] = []
        for event in outcome.cost_events:
            outputs.append((costs, key, encode(event), []))
        result = encode(outcome.result)
        outputs.append((self._results_topic, key, result, []))
        if outcome.route is not None:
            outputs.append((self._routes_topic, key, encode(outcome.route), []))
        if self.dedupe is not None:
            self.dedupe.finished(outcome.result.job_id, result)
        return outputs

    def _parked_outputs(self, parked: Parked) -> list[Output]:
        """A job parked for a batch: the cost events of its attempts so far, and its record."""
        key = parked.job.job.id.encode()
        if self.spend is not None:
            self.spend.ledger.add_own(parked.cost_events)
        outputs: list[Output] = [(self._costs_topic, key, self._encoder.encode(e), []) for e in parked.cost_events]
        outputs.append((self.config.kafka.topics.batches, key, self._encoder.encode(parked.job), []))
        return outputs

    def _repeated(self, job_id: str, result: bytes) -> list[Output]:
        """A job whose id finished already: its first result again, and nothing else."""
        self.stats.duplicates += 1
        if self.telemetry.metering:
            self.runner.metrics.duplicate()
        if self.telemetry.tracing:
            trace.get_current_span().set_attribute("llm_router.job.duplicate", True)
        return [(self._results_topic, job_id.encode(), result, [])]

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
            positions = self.tracker.to_commit(list(partitions) if partitions is not None else None)
            if not positions or not await self._still_ours(positions):
                return
            if await self.sink.commit(positions):
                self.tracker.committed(positions)
                self.stats.commits += 1
                self._capacity.set()  # exactly-once: the transaction's jobs no longer count in flight

    def _kafka_failed(self, event: str, exc: BaseException) -> None:
        """A call to the broker failed: logged while the broker is thought there (and the watch probes it);
        while it is lost, its one line says it all."""
        if self.broker.connected:
            log.warning(event, extra={"error": repr(exc)})
            self.broker.suspect()

    async def _still_ours(self, positions: dict[TopicPartition, int]) -> bool:
        """Whether every partition's committed offset on the broker is still the last this worker committed.

        A worker whose membership the coordinator forgot (its session expired, or the broker lost its
        state) is told so only at its next heartbeat, and aiokafka then sends its commits as standalone
        commits, which a group without members accepts: they would write offsets of partitions this
        worker no longer owns, or of a topic that was since recreated, where they skip the new jobs
        below them. An offset that moved under this worker, or vanished, shows either case."""
        ours = self.tracker.committed_positions()
        try:
            found = await asyncio.gather(*(self.consumer.committed(tp) for tp in positions))
        except KafkaError as exc:
            self._kafka_failed("not committed: the committed offsets could not be read", exc)
            return False
        moved = sorted(
            tp.partition for tp, broker in zip(positions, found, strict=True) if broker != ours.get(tp, broker)
        )
        if moved:
            # The partitions are lost, not revoked: their finished jobs are redone by the next owner. Said
            # once until a commit goes through again (the next rebalance ends it).
            if not self._membership_lost:
                log.warning(
                    "not committed: the group's offsets changed under this worker (membership lost)",
                    extra={"partitions": moved},
                )
            self._membership_lost = True
            return False
        self._membership_lost = False
        return True

    async def release(self, partitions: Iterable[TopicPartition], reason: str) -> None:
        """Stop taking from `partitions`, let their jobs finish within the grace period, commit, forget."""
        partitions = list(partitions)
        if not partitions:
            return
        self._releasing.update(partitions)
        try:
            started = time.monotonic()
            await self._drain(partitions, reason, started + self.config.worker.shutdown_grace_s)
            # Finished jobs' outputs still on their way to the broker: their offsets finish at the acknowledgement.
            left = self.config.worker.shutdown_grace_s - (time.monotonic() - started)
            if not await self.sink.settled(max(0.0, left)):
                log.warning(
                    "outputs not acknowledged within the grace period: their jobs stay uncommitted",
                    extra={"reason": reason, "jobs": self.sink.unacknowledged},
                )
            await self.commit(partitions)
            self.tracker.drop(partitions)
            self.sink.forget(partitions, reason)
            if self.dedupe is not None:
                self.dedupe.revoked(tp.partition for tp in partitions)
            for tp in partitions:
                self._jobs.pop(tp, None)
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
        jobs = {job for tp in partitions for job in self._jobs.get(tp, {}).values()}
        if not jobs:
            return
        log.info("draining in-flight jobs", extra={"reason": reason, "jobs": len(jobs)})
        _, unfinished = await asyncio.wait(jobs, timeout=max(0.0, until - time.monotonic()))
        if unfinished:
            for job in unfinished:
                job.cancel()
            await asyncio.wait(unfinished)
            self.stats.abandoned += len(unfinished)
            log.warning("abandoned unfinished jobs uncommitted", extra={"reason": reason, "jobs": len(unfinished)})

    def assigned(self, partitions: set[TopicPartition]) -> None:
        """New partitions: paused like the others while the worker is at capacity; the rate-limit share follows."""
        self._joined = True
        if self._paused and partitions:
            self.consumer.pause(*partitions)
        total = len(self.consumer.partitions_for_topic(self.config.kafka.topics.jobs) or ())
        share = partition_share(len(partitions), total)
        if share > 0:
            self.runner.limits.set_share(share)
        if self.dedupe is not None:
            self.dedupe.assigned(tp.partition for tp in partitions)
        log.info(
            "partitions assigned",
            extra={"partitions": sorted(tp.partition for tp in partitions), "rate_limit_share": round(share, 4)},
        )


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.worker.release(revoked, reason="revoked")

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.worker.assigned(assigned)


def _no_usable_provider(config: Config, unavailable: dict[str, str]) -> str:
    """Why no provider can be called, naming the variables looked for."""
    variables = [p.api_key_env for p in config.providers.values() if p.api_key_env]
    reasons = "; ".join(f"{name}: {why}" for name, why in unavailable.items())
    return f"no usable provider: set at least one of {', '.join(variables)} ({reasons})"


def _with_headers(outputs: list[Output], headers: list[tuple[str, bytes]]) -> list[Output]:
    """The outputs with `headers` after their own."""
    return [(topic, key, value, own + headers) for topic, key, value, own in outputs]


def _task_starter() -> Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]:
    """What starts a job's task on the running loop: an eager task where Python has them (3.12+), so a
    job that finishes without waiting (an in-process provider, a dead letter) costs no turn of the loop."""
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12):
        return partial(asyncio.Task, loop=loop, eager_start=True)
    return loop.create_task
