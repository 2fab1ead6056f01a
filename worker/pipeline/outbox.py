"""The outbox: finished jobs' outputs, sent to Kafka as one record batch per topic partition.

A job puts its outputs (result and cost events, or its dead letter) here and is over; the outbox
appends what all jobs put since its last flush to aiokafka record batches (`create_batch`, one per
topic partition), sends them (`send_batch`), and once the broker has acknowledged every output of a
job calls that job's `done`, which finishes its offset. So a job costs one append per output, not a
send, a future and an await each, and the batches grow with the load. One flush runs at a time and
does not wait for the acknowledgements of the one before. aiokafka keeps one request a broker in
flight; a batch sent meanwhile waits in its accumulator, and until the sender takes it the next
flushes append to it too, rather than to a batch that would wait for the request after. A batch
that fails sends its jobs again, with all their outputs, after a backoff, until they are
acknowledged: an offset is never finished before its outputs are on the broker.

A job that ran (deduplication on) is also listed in a finished record (dedupe.py): each flush makes
one a jobs partition listing the ids of its jobs there, on the finished topic's partition of that
number, and a job is finished only when its finished record is acknowledged too.

Outputs are placed where the producer's default partitioner would put them (murmur2 of the key
over the topic's partitions, as the Java client does), a key-less one on a random partition. The
hash is native code (the `murmurhash2` package) where that has wheels, else Python, where it took
1-2 µs a job with the benchmark's short keys and about 5 with a UUID, a tenth of the worker's work.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Callable
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from msgspec import Struct

from worker.observability.logs import get_logger
from worker.observability.telemetry import not_sent, sent
from worker.pipeline.dedupe import IDS_PER_RECORD, FinishedRecords

log = get_logger("outbox")

Output = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]

BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)


class _Entry(Struct, kw_only=True):  # a Struct: made in C, once a job
    """One job's outputs, what to call when all are acknowledged, and their send spans (traced jobs)."""

    outputs: list[Output]
    done: Callable[[], None]
    spans: list[Any] | None
    finished: tuple[int, str] | None = None  # (jobs partition, job id) to list in a finished record
    failures: int = 0  # its sendings that failed; an acknowledgement counts only for the current one
    unacknowledged: int = 0  # its outputs of the current sending not acknowledged yet


class _Listed(Struct, kw_only=True):
    """The jobs a finished record lists, each with its failures when it was listed."""

    jobs: list[tuple[_Entry, int]]


# What a batch holds, in the order of its records: (entry, index of the output, the entry's failures
# when it was appended), or for a finished record (the jobs it lists, -1, 0).
Placed = list[tuple[_Entry | _Listed, int, int]]


class Outbox:
    """Outputs waiting for the broker, sent in batches; see the module's docstring."""

    def __init__(self, producer: AIOKafkaProducer, records: FinishedRecords | None = None) -> None:
        self._producer = producer
        self._records = records
        self._pending: list[_Entry] = []
        # The batch taking each topic partition's outputs, and what it holds: sent and waiting for
        # aiokafka's sender (which closes it when it takes it), or made by the flush running now.
        self._open: dict[tuple[str, int], tuple[Any, Placed]] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._retries: set[asyncio.TimerHandle] = set()
        self._unacknowledged = 0
        self._settled: asyncio.Event | None = None  # made when someone waits for it
        self._closed = False

    @property
    def unacknowledged(self) -> int:
        """Jobs whose outputs are put and not all acknowledged yet."""
        return self._unacknowledged

    def put(
        self,
        outputs: list[Output],
        done: Callable[[], None],
        spans: list[Any] | None = None,
        finished: tuple[int, str] | None = None,
    ) -> None:
        """Send `outputs` (one job's) and list the job in a finished record (`finished`: its jobs partition and
        id; the outbox needs FinishedRecords then); call `done` once the broker acknowledged them all. Never blocks."""
        if self._closed:
            raise RuntimeError("the outbox is closed")
        if finished is not None and self._records is None:
            raise ValueError("a job to list in a finished record: the outbox needs FinishedRecords")
        if not outputs and finished is None:  # nothing to wait for
            asyncio.get_running_loop().call_soon(done)
            return
        self._unacknowledged += 1
        self._queue(_Entry(outputs=outputs, done=done, spans=spans, finished=finished))

    def _queue(self, entry: _Entry) -> None:
        self._pending.append(entry)
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def settled(self, timeout: float) -> bool:
        """Wait until everything put so far is acknowledged, at most `timeout` seconds; whether it was."""
        if not self._unacknowledged:
            return True
        if self._settled is None:
            self._settled = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._settled.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Stop: no more flushes or retries. What is still unacknowledged stays so (its offsets unfinished)."""
        self._closed = True
        for handle in self._retries:
            handle.cancel()
        self._retries.clear()
        if self._flushing is not None:
            self._flushing.cancel()
            await asyncio.gather(self._flushing, return_exceptions=True)

    async def _flush(self) -> None:
        try:
            while self._pending and not self._closed:
                entries, self._pending = self._pending, []
                try:
                    await self._send(entries)
                except KafkaError as exc:  # not even queued (e.g. no metadata for a topic): all of it again
                    self._failed(entries, exc)
        finally:
            self._flushing = None

    async def _send(self, entries: list[_Entry]) -> None:
        """Append the entries' outputs to the batch taking each one's topic partition, send the new batches.

        A partition's batch that an earlier flush sent, and that aiokafka's sender has not taken yet
        (it keeps one request a broker in flight), takes these outputs too: they go with the next
        request instead of the one after it. A batch calls `_landed` with its acknowledgement, for
        all it holds, whichever flushes put it there."""
        producer = self._producer
        cluster = producer.client.cluster
        opened = self._open
        new: list[tuple[tuple[str, int], Any, Placed]] = []  # made here, to send, in order
        partitions: dict[str, list[int]] = {}
        last_key, last_hash = None, 0
        # The jobs to list in finished records, and their ids, by jobs partition.
        listing: dict[int, tuple[list[_Entry], list[str]]] = {}
        try:
            for entry in entries:
                entry.unacknowledged = len(entry.outputs)
                generation = entry.failures
                if entry.finished is not None:
                    entry.unacknowledged += 1
                    jobs_partition, job_id = entry.finished
                    listed = listing.get(jobs_partition)
                    if listed is None:
                        listed = listing[jobs_partition] = ([], [])
                    listed[0].append(entry)
                    listed[1].append(job_id)
                for index, (topic, key, value, headers) in enumerate(entry.outputs):
                    known = partitions.get(topic)
                    if known is None:
                        ids = cluster.partitions_for_topic(topic) or await producer.partitions_for(topic)
                        known = partitions[topic] = sorted(ids)
                    if key is None:
                        partition = random.choice(known)
                    else:
                        if key is not last_key:
                            last_key, last_hash = key, murmur2(key) & 0x7FFFFFFF
                        partition = known[last_hash % len(known)]
                    where = (topic, partition)
                    current = opened.get(where)
                    # BatchBuilder.append returns None when the batch is full, or closed because aiokafka's
                    # sender took it: a new batch takes the output then (and those after it, in order).
                    if (
                        current is None
                        or current[0].append(timestamp=None, key=key, value=value, headers=headers) is None
                    ):
                        current = opened[where] = (producer.create_batch(), [])
                        new.append((where, *current))
                        current[0].append(timestamp=None, key=key, value=value, headers=headers)
                    batch, placed = current
                    placed.append((entry, index, generation))
            if listing:
                await self._list(listing, new)
            for (topic, partition), batch, placed in new:
                future = await producer.send_batch(batch, topic, partition=partition)
                future.add_done_callback(partial(self._landed, (topic, partition), placed))
        except BaseException:
            # Not sent: the batches made here take nothing more, and these entries go again whole (`_flush`).
            for where, batch, placed in new:
                batch.close()
                self._let_go(where, placed)
            raise

    async def _list(
        self, listing: dict[int, tuple[list[_Entry], list[str]]], new: list[tuple[tuple[str, int], Any, Placed]]
    ) -> None:
        """Append the finished records listing each jobs partition's jobs to the batch of the finished topic's
        partition of that number (modulo the topic's partitions); batches made here go to `new`."""
        records = self._records
        if records is None:  # put refuses a job to list without FinishedRecords
            return
        topic = records.topic
        known = sorted(
            self._producer.client.cluster.partitions_for_topic(topic) or await self._producer.partitions_for(topic)
        )
        for jobs_partition, (jobs, job_ids) in listing.items():
            where = (topic, known[jobs_partition % len(known)])
            for start in range(0, len(jobs), IDS_PER_RECORD):
                key, value = records.make(jobs_partition, job_ids[start : start + IDS_PER_RECORD])
                current = self._open.get(where)
                if current is None or current[0].append(timestamp=None, key=key, value=value, headers=[]) is None:
                    current = self._open[where] = (self._producer.create_batch(), [])
                    new.append((where, *current))
                    current[0].append(timestamp=None, key=key, value=value, headers=[])
                listed = _Listed(jobs=[(entry, entry.failures) for entry in jobs[start : start + IDS_PER_RECORD]])
                current[1].append((listed, -1, 0))

    def _landed(self, where: tuple[str, int], placed: Placed, future: asyncio.Future[Any]) -> None:
        """A batch's acknowledgement (or failure), for each output it holds: the jobs whose last output
        it was are finished; on a failure, the jobs it holds are sent again, whole."""
        self._let_go(where, placed)  # taken by the sender (closed), or failed
        outcome: Any = asyncio.CancelledError() if future.cancelled() else (future.exception() or future.result())
        if isinstance(outcome, BaseException):
            self._send_again(placed, outcome)
            return
        finished = []
        for relative, (entry, index, generation) in enumerate(placed):
            if isinstance(entry, _Listed):
                finished.extend(self._listed(entry))
                continue
            if entry.failures != generation:
                continue  # sent again since: its last sending's acknowledgements count
            if entry.spans:
                sent(entry.spans[index], _Landed(outcome.partition, outcome.offset + relative))
            entry.unacknowledged -= 1
            if not entry.unacknowledged:
                finished.append(entry)
        if finished:
            self._finished(finished)

    def _send_again(self, placed: Placed, exc: BaseException) -> None:
        """A batch failed: the jobs it holds outputs of, or lists, are sent again, whole (those not already)."""
        again, seen = [], set()
        for job, generation in _jobs_placed(placed):
            if job.failures == generation and id(job) not in seen:  # not already sent again
                seen.add(id(job))
                again.append(job)
        if again:
            self._failed(again, exc)

    @staticmethod
    def _listed(listed: _Listed) -> list[_Entry]:
        """A finished record's acknowledgement: the jobs it lists whose last acknowledgement it was."""
        finished = []
        for entry, generation in listed.jobs:
            if entry.failures == generation:
                entry.unacknowledged -= 1
                if not entry.unacknowledged:
                    finished.append(entry)
        return finished

    def _let_go(self, where: tuple[str, int], placed: Placed) -> None:
        """The batch holding `placed` takes no more outputs: no longer the partition's open one (nor its jobs kept)."""
        current = self._open.get(where)
        if current is not None and current[1] is placed:
            del self._open[where]

    def _finished(self, entries: list[_Entry]) -> None:
        self._unacknowledged -= len(entries)
        if not self._unacknowledged and self._settled is not None:
            self._settled.set()
            self._settled = None
        for entry in entries:
            entry.done()

    def _failed(self, entries: list[_Entry], exc: BaseException) -> None:
        """Send these entries again after a backoff (their spans end with the error)."""
        if self._closed:
            return
        failures = max(entry.failures for entry in entries)
        delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
        level = log.warning if getattr(exc, "retriable", True) else log.error
        level("publish failed, retrying", extra={"error": repr(exc), "jobs": len(entries), "retry_in_s": delay})
        for entry in entries:
            entry.failures += 1
            for span in entry.spans or ():
                not_sent(span, exc)
            entry.spans = None  # sent again without spans; the outputs keep the first spans' context

        def again() -> None:
            self._retries.discard(handle)
            for entry in entries:
                self._queue(entry)

        handle = asyncio.get_running_loop().call_later(delay, again)
        self._retries.add(handle)


def _jobs_placed(placed: Placed) -> list[tuple[_Entry, int]]:
    """The jobs a batch holds outputs of, or lists, each with its failures when it was placed."""
    jobs = []
    for entry, _, generation in placed:
        if isinstance(entry, _Listed):
            jobs.extend(entry.jobs)
        else:
            jobs.append((entry, generation))
    return jobs


class _Landed:
    """Where one output of an acknowledged batch landed (what `sent` reads)."""

    __slots__ = ("offset", "partition")

    def __init__(self, partition: int, offset: int) -> None:
        self.partition = partition
        self.offset = offset


_M = 0x5BD1E995
_SEED = 0x9747B28C


def murmur2_python(data: bytes) -> int:
    """Kafka's murmur2 of a key (the Java client's `Utils.murmur2`, as aiokafka's partitioner computes
    it), reading the key four bytes at a time: about three times faster than aiokafka's byte loop."""
    length = len(data)
    h = (_SEED ^ length) & 0xFFFFFFFF
    whole = length // 4
    for k in struct.unpack_from(f"<{whole}I", data) if whole else ():
        k = (k * _M) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * _M) & 0xFFFFFFFF
        h = ((h * _M) & 0xFFFFFFFF) ^ k
    extra = length & 3
    if extra:
        tail = data[whole * 4 :]
        if extra >= 3:
            h ^= tail[2] << 16
        if extra >= 2:
            h ^= tail[1] << 8
        h ^= tail[0]
        h = (h * _M) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * _M) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def _murmur2_native() -> Callable[[bytes], int] | None:
    """Kafka's murmur2 in native code (the `murmurhash2` package: MurmurHash2, given Kafka's seed), where
    it has a wheel for this platform."""
    try:
        from murmurhash2 import murmurhash2
    except ImportError:
        return None
    return partial(murmurhash2, seed=_SEED)


_NATIVE = _murmur2_native()
# Kafka's murmur2 of a key: native code where it is installed (10-50 times faster), else `murmur2_python`.
murmur2: Callable[[bytes], int] = _NATIVE if _NATIVE is not None else murmur2_python
MURMUR2 = "native" if _NATIVE is not None else "python"


def partition_of(key: bytes, partitions: int) -> int:
    """Where the default partitioner puts `key` among `partitions` partitions."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
