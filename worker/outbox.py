"""The outbox: finished jobs' outputs, sent to Kafka as one record batch per topic partition.

A job puts its outputs (result and cost events, or its dead letter) here and is over; the outbox
appends what all jobs put since its last flush to aiokafka record batches (`create_batch`, one per
topic partition), sends them (`send_batch`), and once the broker has acknowledged every output of a
job calls that job's `done`, which finishes its offset. So a job costs one append per output, not a
send, a future and an await each, and the batches grow with the load. One flush runs at a time and
does not wait for the acknowledgements of the one before; a batch that fails is sent again, with the
other outputs of its jobs, after a backoff, until it is acknowledged: an offset is never finished
before its outputs are on the broker.

Outputs are placed where the producer's default partitioner would put them (murmur2 of the key
over the topic's partitions, as the Java client does), a key-less one on a random partition. The
hash is native code (the `murmurhash2` package) where that has wheels, else Python, where it took
1-2 µs a job with the benchmark's short keys and about 5 with a UUID, a tenth of the worker's work.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from msgspec import Struct

from worker.logs import get_logger
from worker.telemetry import not_sent, sent

log = get_logger("outbox")

Output = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]

BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)


class _Entry(Struct):  # a Struct: made in C, once a job
    """One job's outputs, what to call when all are acknowledged, and their send spans (traced jobs)."""

    outputs: list[Output]
    done: Callable[[], None]
    spans: list[Any] | None
    failures: int = 0


class Outbox:
    """Outputs waiting for the broker, sent in batches; see the module's docstring."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._pending: list[_Entry] = []
        self._flushing: asyncio.Task[None] | None = None
        self._retries: set[asyncio.TimerHandle] = set()
        self._unacknowledged = 0
        self._settled: asyncio.Event | None = None  # made when someone waits for it
        self._closed = False

    @property
    def unacknowledged(self) -> int:
        """Jobs whose outputs are put and not all acknowledged yet."""
        return self._unacknowledged

    def put(self, outputs: list[Output], done: Callable[[], None], spans: list[Any] | None = None) -> None:
        """Send `outputs` (one job's); call `done` once the broker acknowledged them all. Never blocks."""
        if self._closed:
            raise RuntimeError("the outbox is closed")
        self._unacknowledged += 1
        self._queue(_Entry(outputs, done, spans))

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
        """Append the entries' outputs to a batch per topic partition, send the batches, and watch the acknowledgements."""
        producer = self._producer
        cluster = producer.client.cluster
        batches: dict[tuple[str, int], Any] = {}
        placed: dict[tuple[str, int], list[tuple[_Entry, int]]] = defaultdict(list)  # (entry, index of its output) by batch
        partitions: dict[str, list[int]] = {}
        full: list[tuple[tuple[str, int], Any, list[tuple[_Entry, int]]]] = []
        last_key, last_hash = None, 0
        for entry in entries:
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
                batch = batches.get(where)
                if batch is None:
                    batch = batches[where] = producer.create_batch()
                # BatchBuilder.append without its wrapper (keyword arguments, serializers we do not
                # use): a tenth of the outbox's work. Its record builder returns None when full.
                if batch._builder.append(batch._relative_offset, None, key, value, headers) is not None:  # noqa: SLF001
                    batch._relative_offset += 1  # noqa: SLF001
                else:
                    # Full: it goes as it is, and a new one takes this output.
                    full.append((where, batch, placed.pop(where)))
                    batch = batches[where] = producer.create_batch()
                    batch.append(timestamp=None, key=key, value=value, headers=headers)
                placed[where].append((entry, index))
        sends = full + [(where, batch, placed[where]) for where, batch in batches.items()]
        futures: list[asyncio.Future[Any]] = []
        for (topic, partition), batch, _ in sends:
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        self._watch(entries, sends, futures)

    def _watch(self, entries: list[_Entry], sends: list[tuple[tuple[str, int], Any, list[tuple[_Entry, int]]]], futures: list[asyncio.Future[Any]]) -> None:
        """`_acknowledged` with every batch's outcome (its answer, or its exception) once the last one
        has one. Not `asyncio.gather`, whose own future would take one more turn of the event loop,
        and a turn of a busy loop is milliseconds more in flight for every job of the flush."""
        outcomes: list[Any] = [None] * len(futures)
        remaining = len(futures)

        def landed(index: int, future: asyncio.Future[Any]) -> None:
            nonlocal remaining
            if future.cancelled():
                outcomes[index] = asyncio.CancelledError()
            else:
                outcomes[index] = future.exception() or future.result()
            remaining -= 1
            if not remaining:
                self._acknowledged(entries, sends, outcomes)

        if not futures:
            asyncio.get_running_loop().call_soon(self._acknowledged, entries, sends, outcomes)
        for index, future in enumerate(futures):
            future.add_done_callback(partial(landed, index))

    def _acknowledged(self, entries: list[_Entry], sends: list[tuple[tuple[str, int], Any, list[tuple[_Entry, int]]]], outcomes: list[Any]) -> None:
        failed: dict[int, tuple[_Entry, BaseException]] = {}
        for (_, _, outputs), outcome in zip(sends, outcomes):
            if isinstance(outcome, BaseException):
                for entry, _ in outputs:
                    failed[id(entry)] = (entry, outcome)
            elif outcome is not None:
                for relative, (entry, index) in enumerate(outputs):
                    if entry.spans and id(entry) not in failed:
                        sent(entry.spans[index], _Landed(outcome.partition, outcome.offset + relative))
        self._finished(entries if not failed else [e for e in entries if id(e) not in failed])
        if failed:
            by_error: dict[int, tuple[BaseException, list[_Entry]]] = {}
            for entry, exc in failed.values():
                by_error.setdefault(id(exc), (exc, []))[1].append(entry)
            for exc, again in by_error.values():
                self._failed(again, exc)

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


class _Landed:
    """Where one output of an acknowledged batch landed (what `sent` reads)."""

    __slots__ = ("partition", "offset")

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


try:  # the same hash in native code (the `murmurhash2` package: MurmurHash2, given Kafka's seed)
    from murmurhash2 import murmurhash2 as _native
except ImportError:  # no wheel for this platform: the Python one
    _native = None

if _native is not None:

    def murmur2(data: bytes) -> int:
        """Kafka's murmur2 of a key, in native code: what `murmur2_python` computes, 10-50 times faster."""
        return _native(data, _SEED)

    MURMUR2 = "native"
else:
    murmur2 = murmur2_python
    MURMUR2 = "python"
