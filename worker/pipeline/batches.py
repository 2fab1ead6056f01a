"""The batch desk: jobs parked for a provider's batch API, submitted, polled and resumed, durably.

A job that can wait (`complete_within_s`) and whose plan asks a model by batch parks: the consume loop
writes its record (messages.ParkedJob) to the batches topic, keyed by job id, and commits the job's
offset once it is acknowledged, so the jobs topic never waits for a batch. The batches topic's
partitions are shared out in a group of their own: the replica that owns partition p owns every record
in it. For its partitions a replica reads the topic from the beginning (compacted: the latest record of
each job and batch) and then:
- submits the queued jobs of each model together, when `batch.max_requests` are queued or the first has
  waited `batch.max_wait_s`, within the provider's batch queue (`batch.max_enqueued_tokens`); the batch's
  record (messages.OpenBatch, in the same partition) and each job's record with the batch id follow;
- polls each open batch every `batch.poll_interval_s`; when it has ended, resumes each of its jobs with
  its line (the runner: an answer that passes ends the job, else the next model, by batch again while
  the deadline allows); a job's outputs go with its record's tombstone (or its record parked anew);
- gives up on a job whose batch has not answered by its deadline less `routing.job_deadline_s`: it runs
  synchronously; a batch none of whose jobs still waits is cancelled; a line answered after its job was
  given up is billed by the provider, and gets its cost event only.
A replica that dies hands its partitions to the others, which read them again and carry on: a job is
lost by no crash, and is answered twice only when a crash falls between its outputs and its tombstone
(at-least-once) or never (exactly-once: the outputs and the tombstone share a transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import defaultdict
from collections.abc import Iterable

import msgspec
from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from worker.config import Config
from worker.errors import ProviderError
from worker.execution.job_run import cost_event
from worker.execution.runner import JobOutcome, JobRunner, Parked
from worker.messages import Attempt, BatchedJob, ChatMessage, CostEvent, OpenBatch, ParkedJob
from worker.observability.logs import get_logger
from worker.pipeline.kafka import make_consumer, make_producer, transactional_id
from worker.pipeline.offsets import read_to_end
from worker.pipeline.outbox import BACKOFF_S
from worker.providers.base import BatchApi, BatchLine, BatchRequest
from worker.routing.pricing import content_tokens

log = get_logger("batches")

_RECORD = msgspec.json.Decoder(ParkedJob | OpenBatch)
_ENCODER = msgspec.json.Encoder()
TICK_S = 0.5  # how often the desk looks for batches to submit, poll and give up


class DeskStats(msgspec.Struct):
    """Counters of what this replica's desk did since it started."""

    submitted: int = 0  # batches
    lines: int = 0  # jobs submitted in them
    resumed: int = 0  # jobs resumed with their line
    given_up: int = 0  # jobs run synchronously after their batch was late
    late_lines: int = 0  # answers after their job was given up: a cost event only
    cancelled: int = 0  # batches cancelled


def custom_id(job_id: str) -> str:
    """A job's id in a batch: a digest of it, within every provider's rules for custom ids (Anthropic's:
    1-64 of [a-zA-Z0-9_-]), whatever characters the job id holds."""
    return "j" + hashlib.sha256(job_id.encode()).hexdigest()[:40]


def batch_key(batch_id: str) -> str:
    """The batches topic's key of a batch's record."""
    return f"batch:{batch_id}"


class BatchesPartition:
    """One owned partition of the batches topic: its parked jobs and open batches, as the topic holds them."""

    def __init__(self) -> None:
        self.jobs: dict[str, ParkedJob] = {}
        self.batches: dict[str, OpenBatch] = {}
        self.loaded = False

    def apply(self, key: str, value: bytes | None) -> None:
        """A record of the partition, in order: the latest per key; a tombstone removes."""
        if value is None:
            self.jobs.pop(key, None)
            self.batches.pop(key.removeprefix("batch:"), None)
            return
        record = _RECORD.decode(value)
        if isinstance(record, ParkedJob):
            self.jobs[key] = record
        else:
            self.batches[record.batch_id] = record

    def queued(self) -> dict[str, list[ParkedJob]]:
        """The jobs in no batch yet, by the model their batch asks."""
        by_model: dict[str, list[ParkedJob]] = defaultdict(list)
        for job in self.jobs.values():
            if job.batch_id is None:
                by_model[job.model].append(job)
        return by_model


class BatchDesk:
    """One replica's share of the batches topic."""

    def __init__(
        self, config: Config, runner: JobRunner, apis: dict[str, BatchApi], producer: AIOKafkaProducer
    ) -> None:
        kafka = config.kafka
        self._config = config
        self._topic = kafka.topics.batches
        self._topics = kafka.topics
        self._runner = runner
        self._apis = apis
        exactly_once = config.worker.delivery == "exactly_once"
        # Exactly-once: a producer of the desk's own, whose transactions each hold a job's outputs and its
        # record's tombstone (a lock keeps them one at a time); else the worker's producer.
        self._producer = producer
        self._transactions: asyncio.Lock | None = None
        if exactly_once:
            self._producer = make_producer(
                kafka,
                enable_idempotence=True,
                transactional_id=f"{transactional_id(kafka)}-batches",
                transaction_timeout_ms=kafka.transaction_timeout_ms,
            )
            self._transactions = asyncio.Lock()
        isolation = "read_committed" if exactly_once else "read_uncommitted"
        self.consumer = make_consumer(
            kafka, group_id=f"{kafka.group_id}-batches", isolation_level=isolation, fetch_max_wait_ms=100
        )
        self._partitions: dict[int, BatchesPartition] = {}
        self._ends: dict[int, int] = {}
        # Keys this desk wrote, with the offset written: not acted on again until read back.
        self._written: dict[str, int] = {}
        self._polled: dict[str, float] = {}  # batch id -> when it was last polled
        self._cancelled: set[str] = set()
        self._retry_at: dict[str, float] = {}  # model -> when a refused submission may be tried again
        self._acting = asyncio.Lock()  # a rebalance waits for the desk's round
        self.grace_s = config.worker.shutdown_grace_s
        self._resuming = asyncio.Semaphore(config.worker.max_in_flight)
        self.stats = DeskStats()

    async def run(self) -> None:
        """Own a share of the batches topic until cancelled."""
        if self._transactions is not None:
            await self._producer.start()
        self.consumer.subscribe([self._topic], listener=_Rebalance(self))
        await self.consumer.start()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._read())
                tasks.create_task(self._act())
        finally:
            await self.consumer.stop()
            if self._transactions is not None:
                await self._producer.stop()

    @property
    def parked(self) -> int:
        """The jobs parked in the partitions this replica owns."""
        return sum(len(p.jobs) for p in self._partitions.values())

    async def assigned(self, partitions: set[int]) -> None:
        """Partitions now owned: read from their beginning (the whole state), each acted on once read."""
        new = [p for p in partitions if p not in self._partitions]
        for p in set(self._partitions) - partitions:
            del self._partitions[p]
        log.info("batches partitions assigned", extra={"partitions": sorted(partitions)})
        if not new:
            return
        tps = [TopicPartition(self._topic, p) for p in new]
        ends = await self.consumer.end_offsets(tps)
        for tp in tps:
            self._partitions[tp.partition] = BatchesPartition()
            self._ends[tp.partition] = ends[tp]
        await self.consumer.seek_to_beginning(*tps)

    async def settled(self) -> None:
        """Return once the desk's round (submissions, resumes) is over: a revoke waits for it."""
        async with self._acting:
            pass

    async def _read(self) -> None:
        while True:
            fetched = await self.consumer.getmany(timeout_ms=200)
            for tp, records in fetched.items():
                partition = self._partitions.get(tp.partition)
                if partition is None:
                    continue
                for record in records:
                    key = record.key.decode() if record.key else ""
                    try:
                        partition.apply(key, record.value)
                    except msgspec.DecodeError:
                        log.warning("unreadable batches record skipped", extra={"offset": record.offset})
                    if self._written.get(key, -1) <= record.offset:
                        self._written.pop(key, None)
            for p, partition in self._partitions.items():
                if not partition.loaded:
                    partition.loaded = await self._caught_up(p, TopicPartition(self._topic, p) in fetched)

    async def _caught_up(self, p: int, fetched: bool) -> bool:
        tp = TopicPartition(self._topic, p)
        return read_to_end(await self.consumer.position(tp), self._ends.get(p, 0), self.consumer.highwater(tp), fetched)

    async def _act(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            async with self._acting:
                for p, partition in list(self._partitions.items()):
                    if not partition.loaded:
                        continue
                    try:
                        await self._submit_due(p, partition)
                        await self._poll_due(p, partition)
                        await self._give_up_due(p, partition)
                    except KafkaError as exc:  # the writes are made again next round (nothing acted on)
                        log.warning("batches topic write failed", extra={"error": repr(exc)})

    def _settled(self, key: str) -> bool:
        """Whether the record of `key` is as this desk last wrote it (nothing of ours still to read back)."""
        return key not in self._written

    # Submission

    async def _submit_due(self, p: int, partition: BatchesPartition) -> None:
        """Submit each model's queued jobs that are due: enough of them, or the first waited long enough."""
        now = time.time()
        batch = self._config.batch
        for model, jobs in partition.queued().items():
            jobs = [j for j in jobs if self._settled(j.job.id)]
            if not jobs or self._retry_at.get(model, 0.0) > now:
                continue
            if len(jobs) < batch.max_requests and min(j.parked_at for j in jobs) + batch.max_wait_s > now:
                continue
            jobs.sort(key=lambda j: j.parked_at)
            await self._submit(p, partition, model, self._within_queue(model, jobs[: batch.max_requests], partition))

    def _within_queue(self, model: str, jobs: list[ParkedJob], partition: BatchesPartition) -> list[ParkedJob]:
        """The first of `jobs` that fit in the provider's batch queue beside its open batches."""
        limit = self._config.batch.max_enqueued_tokens
        if not limit:
            return jobs
        provider = self._config.models[model].provider
        used = sum(
            b.tokens for part in self._partitions.values() for b in part.batches.values() if b.provider == provider
        )
        taken = []
        for job in jobs:
            used += _tokens(job)
            if used > limit:
                break
            taken.append(job)
        return taken

    async def _submit(self, p: int, partition: BatchesPartition, model: str, jobs: list[ParkedJob]) -> None:
        """Send `jobs` as one batch to `model`, then record the batch and each job's place in it."""
        if not jobs:
            return
        provider = self._config.models[model].provider
        requests = [BatchRequest(custom_id=custom_id(j.job.id), request=self._runner.batch_request(j)) for j in jobs]
        try:
            batch_id = await self._apis[provider].submit_batch(model, requests)
        except ProviderError as exc:
            self._retry_at[model] = time.time() + max(exc.retry_after_s or 0.0, self._config.batch.max_wait_s)
            log.warning("batch not submitted", extra={"model": model, "jobs": len(jobs), "error": exc.message})
            return
        record = OpenBatch(
            batch_id=batch_id,
            provider=provider,
            model=model,
            jobs=[BatchedJob(j.job.id, j.job.tenant, j.task, len(j.attempts) + 1) for j in jobs],
            submitted_at=time.time(),
            tokens=sum(_tokens(j) for j in jobs),
        )
        records: list[tuple[str, bytes | None]] = [(batch_key(batch_id), _ENCODER.encode(record))]
        records += [(j.job.id, _ENCODER.encode(msgspec.structs.replace(j, batch_id=batch_id))) for j in jobs]
        await self._write(p, _Writes(records=records))
        self._polled[batch_id] = time.time()
        self.stats.submitted += 1
        self.stats.lines += len(jobs)
        log.info("batch submitted", extra={"batch_id": batch_id, "model": model, "jobs": len(jobs)})

    # Polling

    async def _poll_due(self, p: int, partition: BatchesPartition) -> None:
        """Ask after each open batch not asked after for a poll interval; finish the ended ones."""
        now = time.time()
        for batch in list(partition.batches.values()):
            key = batch_key(batch.batch_id)
            if (
                not self._settled(key)
                or self._polled.get(batch.batch_id, 0.0) + self._config.batch.poll_interval_s > now
            ):
                continue
            self._polled[batch.batch_id] = now
            api = self._apis.get(batch.provider)
            if api is None:
                continue
            try:
                state = await api.batch_state(batch.batch_id)
                if state.status == "ended":
                    await self._finish(p, partition, batch, await api.batch_results(batch.batch_id))
                elif batch.batch_id not in self._cancelled and not self._waiting_on(partition, batch):
                    await api.cancel_batch(batch.batch_id)
                    self._cancelled.add(batch.batch_id)
                    self.stats.cancelled += 1
            except ProviderError as exc:
                log.warning("batch poll failed", extra={"batch_id": batch.batch_id, "error": exc.message})

    @staticmethod
    def _waiting_on(partition: BatchesPartition, batch: OpenBatch) -> bool:
        """Whether a job still waits for `batch`'s answer."""
        return any(
            (job := partition.jobs.get(j.job_id)) is not None and job.batch_id == batch.batch_id for j in batch.jobs
        )

    async def _finish(self, p: int, partition: BatchesPartition, batch: OpenBatch, lines: list[BatchLine]) -> None:
        """An ended batch: each waiting job resumed with its line, each answer whose job was given up billed;
        then the batch's record removed."""
        batched = {custom_id(j.job_id): j for j in batch.jobs}
        resumes, late = [], []
        for line in lines:
            if line.custom_id not in batched:
                continue
            job_id = batched[line.custom_id].job_id
            job = partition.jobs.get(job_id)
            if job is not None and job.batch_id == batch.batch_id and self._settled(job_id):
                resumes.append(self._resume(job, line))
            elif line.completion is not None:
                late.append(self._late_cost(batch, batched[line.custom_id], line))
        self.stats.late_lines += len(late)
        writes = _Writes.of(await asyncio.gather(*resumes))
        writes.outputs += [(self._topics.costs, e.job_id, _ENCODER.encode(e)) for e in late]
        writes.records.append((batch_key(batch.batch_id), None))
        await self._write(p, writes)
        self._polled.pop(batch.batch_id, None)
        self._cancelled.discard(batch.batch_id)

    def _late_cost(self, batch: OpenBatch, job: BatchedJob, line: BatchLine) -> CostEvent:
        """The cost event of an answer that came after its job was given up (the provider bills it)."""
        completion = line.completion
        assert completion is not None
        attempt = Attempt(
            number=job.attempt,
            provider=batch.provider,
            model=batch.model,
            outcome="ok",
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            cached_input_tokens=completion.cached_input_tokens,
            cache_write_input_tokens=completion.cache_write_input_tokens,
            cost_usd=self._runner.batch_cost(batch.model, completion),
            latency_ms=0.0,
            via="batch",
            batch_id=batch.batch_id,
        )
        return cost_event(attempt, job_id=job.job_id, tenant=job.tenant, task=job.task)

    # Giving up

    async def _give_up_due(self, p: int, partition: BatchesPartition) -> None:
        """Run synchronously each job whose batch has not answered by its deadline less a synchronous chain's."""
        give_up_at = time.time() + self._config.routing.job_deadline_s
        late = [j for j in partition.jobs.values() if j.due <= give_up_at and self._settled(j.job.id)]
        if late:
            self.stats.given_up += len(late)
            await self._write(p, _Writes.of(await asyncio.gather(*(self._resume(job, None) for job in late))))

    # Resuming

    async def _resume(self, job: ParkedJob, line: BatchLine | None) -> _Writes:
        """Go on with a parked job; what it comes to: its outputs and its record's tombstone, or its record
        parked anew (with the cost events so far)."""
        async with self._resuming:
            outcome = await self._runner.resume(job, line)
        if line is not None:
            self.stats.resumed += 1
        key = job.job.id
        costs = [(self._topics.costs, key, _ENCODER.encode(e)) for e in outcome.cost_events]
        if isinstance(outcome, Parked):
            return _Writes(records=[(key, _ENCODER.encode(outcome.job))], outputs=costs)
        return _Writes(records=[(key, None)], outputs=costs + self._outputs(outcome))

    def _outputs(self, outcome: JobOutcome) -> list[tuple[str, str, bytes]]:
        key = outcome.result.job_id
        outputs = [(self._topics.results, key, _ENCODER.encode(outcome.result))]
        if outcome.route is not None:
            outputs.append((self._topics.routes, key, _ENCODER.encode(outcome.route)))
        return outputs

    # Writing

    async def _write(self, p: int, writes: _Writes) -> None:
        """Send the outputs and then the batches topic's records (in partition `p`) until acknowledged, in one
        transaction in exactly-once mode; note where the records landed (not acted on again until read back)."""
        failures = 0
        while True:
            try:
                if self._transactions is None:
                    landed = await self._send(p, writes)
                else:
                    async with self._transactions, self._producer.transaction():
                        landed = await self._send(p, writes)
                self._written.update(landed)
                return
            except KafkaError as exc:  # an open transaction is aborted: none of it is seen
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
                log.warning("batch desk outputs not acknowledged: sent again", extra={"error": repr(exc)})
                await asyncio.sleep(delay)

    async def _send(self, p: int, writes: _Writes) -> dict[str, int]:
        """Send the outputs, then the records once the outputs are acknowledged; each record's offset by key."""
        sent = [await self._producer.send(t, v, key=k.encode()) for t, k, v in writes.outputs]
        await asyncio.gather(*sent)
        records = writes.records
        landed = [await self._producer.send(self._topic, v, key=k.encode(), partition=p) for k, v in records]
        return {key: metadata.offset for (key, _), metadata in zip(records, await asyncio.gather(*landed), strict=True)}


class _Writes(msgspec.Struct, kw_only=True):
    """What the desk writes together: the batches topic's records (key, value or None for a tombstone) and the
    outputs they follow (topic, key, value)."""

    records: list[tuple[str, bytes | None]] = []
    outputs: list[tuple[str, str, bytes]] = []

    @classmethod
    def of(cls, parts: Iterable[_Writes]) -> _Writes:
        """The writes of `parts`, together."""
        writes = cls()
        for part in parts:
            writes.records += part.records
            writes.outputs += part.outputs
        return writes


def _tokens(job: ParkedJob) -> int:
    """What a job's line holds of its provider's batch queue: its prompt's estimate and its output cap."""
    messages = job.job.messages or [ChatMessage(role="user", content=job.job.prompt or "")]
    return content_tokens(messages) + job.max_output_tokens


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, desk: BatchDesk) -> None:
        self.desk = desk

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.desk.settled(), self.desk.grace_s)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.desk.assigned({tp.partition for tp in assigned})
