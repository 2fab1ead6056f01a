"""Idempotence by job id: the finished topic, and the check a job passes before it runs.

Every job that runs is listed in a record of the finished topic (`kafka.topics.finished`, kept for
`worker.dedupe_window_s`) that goes with its outputs: each outbox flush, or each transaction, writes
one record per jobs partition listing the ids of its jobs there (dedupe.py: `FinishedBatch`), to the
finished partition of the same number (modulo the finished topic's partitions). A job's offset is
committed only once that record is acknowledged (or committed in the job's transaction): a restart
never forgets a job whose offset was committed. The record holds no copy of the result: the result
is on the results topic, keyed by the same id, at about the record's time. Producers key jobs by id,
so both copies of a job land on one partition of the jobs topic, owned by one replica. At each
assignment a worker loads the finished ids of its jobs partitions into a `FinishedIds` (dedupe.py);
a revoke forgets them.

A job whose id is there is not run: its first result is read back from the results topic (the
partition its id hashes to, from the finished record's time, or at the offset found by an earlier
read-back) and published again. A copy of a job still running here waits for it and takes its result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from worker.config import KafkaConfig, WorkerConfig
from worker.observability.logs import get_logger
from worker.pipeline.dedupe import Finished, FinishedBatch, FinishedIds, digest
from worker.pipeline.kafka import make_consumer, topic_partitions
from worker.pipeline.outbox import partition_of

log = get_logger("finished")

# How long a duplicate waits for its first result to be readable (past the commit interval, which holds
# an exactly-once transaction's records back) before the job runs again.
READ_BACK_S = 10.0
# A first result is looked for from this much before its finished record's time (both were handed to the sink
# together; their timestamps differ by the batches they went in).
SLACK_MS = 2000
# The longest a load reads; what it has not read by then is not deduplicated.
LOAD_LIMIT_S = 300.0

_DECODER = msgspec.json.Decoder(FinishedBatch)


class Deduplicator:
    """The finished ids of this worker's jobs partitions, the jobs it is running, and the read-back of results."""

    def __init__(self, kafka: KafkaConfig, worker: WorkerConfig, isolation_level: str = "read_uncommitted") -> None:
        self.ids = FinishedIds(worker.dedupe_window_s, worker.dedupe_max_ids)
        self._kafka = kafka
        self._topic = kafka.topics.finished
        self._results_topic = kafka.topics.results
        self._isolation_level = isolation_level
        self._read_back_s = READ_BACK_S + worker.commit_interval_ms / 1000
        # A fetch that finds nothing new returns soon: a read-back ends with one.
        self._reader = make_consumer(kafka, group_id=None, isolation_level=isolation_level, fetch_max_wait_ms=100)
        self._reading = asyncio.Lock()  # one read-back at a time on the reader
        self._results_partitions = 0  # of the results topic; 0: not known (the topic is missing)
        # The load of each owned jobs partition: its jobs wait for it.
        self._loads: dict[int, asyncio.Future[None]] = {}
        self._loading: set[asyncio.Task[None]] = set()
        # Jobs running here, by id: their jobs partition; and the copies of some waiting for their result.
        self._running: dict[str, int] = {}
        self._waiting: dict[str, list[asyncio.Future[bytes | None]]] = {}

    async def start(self) -> None:
        """Connect the reader and learn the results topic's partitions (where each id's result is)."""
        await self._reader.start()
        found = await topic_partitions(self._kafka, [self._results_topic])
        self._results_partitions = len(found.get(self._results_topic, ()))

    async def close(self) -> None:
        """Stop loading and disconnect."""
        for task in self._loading:
            task.cancel()
        await asyncio.gather(*self._loading, return_exceptions=True)
        await self._reader.stop()

    def assigned(self, partitions: Iterable[int]) -> None:
        """Jobs partitions given to this worker: load their finished ids; their jobs wait for the load."""
        loop = asyncio.get_running_loop()
        futures = {p: loop.create_future() for p in partitions if p not in self._loads}
        if not futures:
            return
        self._loads.update(futures)
        task = loop.create_task(self._load(futures))
        self._loading.add(task)
        task.add_done_callback(self._loading.discard)

    def revoked(self, partitions: Iterable[int]) -> None:
        """Jobs partitions taken away (their jobs drained): forget their finished ids."""
        partitions = list(partitions)
        for p in partitions:
            load = self._loads.pop(p, None)
            if load is not None and not load.done():
                load.set_result(None)  # the load skips what it reads of them from now
        self.ids.forget(partitions)

    async def first_result(self, jobs_partition: int, job_id: str) -> bytes | None:
        """The first result of a job whose id finished within the window, or that a copy of it running here
        gives; None when the job is to run (it then counts as running here until `finished`/`abandoned`)."""
        load = self._loads.get(jobs_partition)
        if load is not None and not load.done():
            await load
        while job_id in self._running:
            waiting = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(job_id, []).append(waiting)
            value = await waiting
            if value is not None:
                return value
        found = self.ids.find(digest(job_id), int(time.time()))
        if found is not None:
            value = await self._read_back_logged(found, job_id)
            if value is not None:
                return value
            if job_id in self._running:  # a copy started meanwhile: wait for it
                return await self.first_result(jobs_partition, job_id)
        self._running[job_id] = jobs_partition
        return None

    def finished(self, job_id: str, value: bytes) -> None:
        """A job that ran here has its result `value` (handed to the sink now, to be listed in a finished record)."""
        jobs_partition = self._running.pop(job_id, None)
        if jobs_partition is None:
            return
        now_s = int(time.time())
        self.ids.add(digest(job_id), jobs_partition, now_s, now_s)
        if job_id in self._waiting:
            self._answer(job_id, value)

    def abandoned(self, job_id: str) -> None:
        """A job that ran here ended without a result (cancelled): a copy waiting for it runs itself."""
        if self._running.pop(job_id, None) is not None:
            self._answer(job_id, None)

    def _answer(self, job_id: str, value: bytes | None) -> None:
        """The copies waiting for `job_id` take its result (None: they run themselves)."""
        for copy in self._waiting.pop(job_id, ()):
            if not copy.done():
                copy.set_result(value)

    async def _read_back_logged(self, found: Finished, job_id: str) -> bytes | None:
        """A finished job's first result, or None (then the job runs again, said in a warning)."""
        try:
            value = await self._read_back(found, job_id)
        except KafkaError as exc:
            value, error = None, repr(exc)
        else:
            error = "not found"
        if value is None:
            log.warning(
                "a finished job's result could not be read back: the job runs again",
                extra={"job_id": job_id, "offset": found.offset, "error": error},
            )
        return value

    async def _load(self, futures: dict[int, asyncio.Future[None]]) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(LOAD_LIMIT_S):
                added = await self._read_finished(futures)
            log.info(
                "finished ids loaded",
                extra={
                    "partitions": sorted(futures),
                    "ids": added,
                    "remembered": len(self.ids),
                    "load_s": round(time.monotonic() - started, 3),
                },
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning(
                "finished ids not (all) loaded: duplicates of these partitions may run again",
                extra={"partitions": sorted(futures), "error": repr(exc)},
            )
        finally:
            for load in futures.values():
                if not load.done():
                    load.set_result(None)

    async def _read_finished(self, futures: dict[int, asyncio.Future[None]]) -> int:
        """Read the finished records of the jobs partitions in `futures` (from the start of the window to
        the end they had when the load began) into the ids; how many ids were added."""
        consumer = make_consumer(self._kafka, group_id=None, isolation_level=self._isolation_level)
        await consumer.start()
        try:
            found = await topic_partitions(self._kafka, [self._topic, self._results_topic])
            partitions = len(found.get(self._topic, ()))
            self._results_partitions = len(found.get(self._results_topic, ()))
            if not partitions:
                return 0
            # The finished records of jobs partition p are on finished partition p modulo the finished partitions.
            sources = [TopicPartition(self._topic, p) for p in sorted({p % partitions for p in futures})]
            ends = await self._positions(consumer, sources)
            added = 0
            while ends:
                batch = await consumer.getmany(*ends, timeout_ms=200)
                now_s = int(time.time())
                for records in batch.values():
                    for record in records:
                        added += self._add_listed(record.value, record.timestamp // 1000, futures, now_s)
                # Done with a partition at its end offset, once a fetch brings nothing more: the embedded
                # broker answers a lower end offset than the last record's when that came in a batch of several.
                for tp in list(ends):
                    # The fetches' high watermark is the broker's end when the listed end offset is low.
                    end = max(ends[tp], consumer.highwater(tp) or 0)
                    if tp not in batch and await consumer.position(tp) >= end:
                        del ends[tp]
            return added
        finally:
            await consumer.stop()

    def _add_listed(self, value: bytes, timestamp_s: int, futures: dict[int, asyncio.Future[None]], now_s: int) -> int:
        """Add the ids a finished record lists, when they are of a jobs partition this load is for (and still
        owned); how many were new."""
        try:
            listed = _DECODER.decode(value or b"")
        except msgspec.DecodeError:
            return 0  # not a finished record of this worker's making: nothing to learn from it
        load = futures.get(listed.jobs_partition)
        if load is None or self._loads.get(listed.jobs_partition) is not load:
            return 0  # another partition's, or revoked meanwhile
        add, jobs_partition = self.ids.add, listed.jobs_partition
        return sum(add(digest(job_id), jobs_partition, timestamp_s, now_s) for job_id in listed.ids)

    async def _positions(self, consumer: AIOKafkaConsumer, sources: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Assign `sources` to `consumer` at the first record of the window; the end offset of each one that
        may have records to read."""
        if not sources:
            return {}
        ends = await consumer.end_offsets(sources)
        cutoff_ms = int((time.time() - self.ids.window_s) * 1000)
        starts = await consumer.offsets_for_times(dict.fromkeys(sources, cutoff_ms))
        consumer.assign(sources)
        left = {}
        for tp in sources:
            start = starts.get(tp)
            if start is None:  # nothing as recent as the window's start
                continue
            # A broker that answers a timestamp it lacks with no timestamp: read from the beginning.
            if ends[tp] > 0:
                consumer.seek(tp, start.offset if start.timestamp >= 0 else 0)
                left[tp] = ends[tp]
        return left

    async def _read_back(self, found: Finished, job_id: str) -> bytes | None:
        """The first result of `job_id`, read from the results topic; None when it cannot be found. A job that
        finished within the read-back time may have its result still on its way: it is looked for again until
        that time has passed. For an older one a scan to the partition's end settles it (its result is gone:
        the results topic's retention, or a topic made anew), so that a run of such duplicates does not hold
        the worker up."""
        if not self._results_partitions:
            return None  # no results topic (missing when the worker started)
        key = job_id.encode()
        tp = TopicPartition(self._results_topic, partition_of(key, self._results_partitions))
        async with self._reading:
            recent = time.time() - found.timestamp_s < self._read_back_s
            deadline = time.monotonic() + self._read_back_s
            reader = self._reader
            if reader.assignment() != {tp}:
                reader.assign([tp])
            reader.resume(tp)
            try:
                return await self._find(tp, found, job_id, deadline, again=recent)
            finally:
                reader.pause(tp)  # no fetching between read-backs

    async def _find(
        self, tp: TopicPartition, found: Finished, job_id: str, deadline: float, again: bool
    ) -> bytes | None:
        key = job_id.encode()
        start = found.offset
        while True:
            if start is None:  # not read back before: look for it from the time it finished
                start = await self._offset_at(tp, found.timestamp_s * 1000 - SLACK_MS)
            if start is not None:
                located, start = await self._scan(tp, start, key, deadline)
                if located is not None:
                    offset, value = located
                    self.ids.locate(digest(job_id), offset)
                    return value
            if not again or time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.05)  # not on the broker yet (an unacknowledged or uncommitted output)

    async def _offset_at(self, tp: TopicPartition, timestamp_ms: int) -> int | None:
        """The offset of the first record of `tp` from `timestamp_ms` on, None when there is none yet."""
        found = (await self._reader.offsets_for_times({tp: max(0, timestamp_ms)})).get(tp)
        # A broker without such a record may answer one with no timestamp (Tansu) rather than none.
        return found.offset if found is not None and found.timestamp >= 0 else None

    async def _scan(
        self, tp: TopicPartition, start: int, key: bytes, deadline: float
    ) -> tuple[tuple[int, bytes] | None, int]:
        """The first record keyed `key` from `start` to the partition's end (its end offset reached and a fetch
        bringing nothing more; a busy broker's fetch may come back empty before that), or until `deadline`:
        (its offset, its value), or None; and where a next scan starts."""
        reader = self._reader
        reader.seek(tp, start)
        end = (await reader.end_offsets([tp]))[tp]
        while time.monotonic() < deadline:
            records = (await reader.getmany(tp, timeout_ms=100)).get(tp)
            if not records:
                if await reader.position(tp) >= max(end, reader.highwater(tp) or 0):
                    break
                continue
            for record in records:
                if record.key == key:
                    return (record.offset, record.value), record.offset + 1
        return None, await reader.position(tp)
