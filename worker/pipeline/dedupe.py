"""The record of finished job ids: which ids finished within the dedupe window, and where each one's
first result is on the results topic. Pure: no Kafka here (finished.py reads and writes the topics).

An id is remembered as its 8-byte digest mapped to one int packing the time it finished in seconds
and the jobs partition it belongs to (and, once a read-back found its first result, that result's
offset on the results topic, kept apart), in insertion order, so the oldest are forgotten first when
there are more than `max_ids`, and those older than the window are dropped. The result's bytes are not kept: they
are read back from the results topic when a duplicate comes (its partition follows from the id).

The finished topic's records list the ids of jobs that finished together (`FinishedBatch`, made by
`FinishedRecords`): one record per jobs partition per delivery (an outbox flush, a transaction), not
one a job.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Collection
from typing import NamedTuple

import msgspec

_PARTITION_BITS = 16
_PARTITION_MASK = (1 << _PARTITION_BITS) - 1

# The most ids a finished record lists: ids are at most 256 characters, so a record stays well under the
# broker's message.max.bytes (1 MB by default) whatever they hold; with short ids it is some 20 KB.
IDS_PER_RECORD = 500


class FinishedBatch(msgspec.Struct, kw_only=True):
    """The value of a finished record: the ids of jobs of one jobs partition that finished together."""

    jobs_partition: int
    ids: list[str]


class FinishedRecords:
    """Makes the finished topic's records. Each one's key is unique (this writer's and a count), so that
    compaction never drops one: the topic's retention (the dedupe window) bounds it."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._writer = uuid.uuid4().hex
        self._written = 0
        self._encoder = msgspec.json.Encoder()

    def make(self, jobs_partition: int, job_ids: list[str]) -> tuple[bytes, bytes]:
        """The key and value of a record listing `job_ids` (at most IDS_PER_RECORD) of `jobs_partition`. It goes
        to the finished topic's partition of that number, modulo the topic's partitions."""
        self._written += 1
        value = self._encoder.encode(FinishedBatch(jobs_partition=jobs_partition, ids=job_ids))
        return f"{self._writer}-{self._written}".encode(), value


class Finished(NamedTuple):
    """Where a finished job's first result is."""

    jobs_partition: int  # the partition of the jobs topic the id belongs to
    offset: int | None  # on the results topic; None: not read back yet (found from `timestamp_s` then)
    timestamp_s: int  # when it finished (its finished record's timestamp)


# The 8-byte digest of a job id that the record keeps instead of the id: its `hash`, which a str computes once
# and keeps. It is keyed per process (string hash randomization), as the record is: each process loads the
# finished ids anew. Two ids of one digest cost a read-back: it looks for the id itself, finds no result, and
# the job runs.
digest: Callable[[str], int] = hash


class FinishedIds:
    """The finished ids of the jobs partitions a worker owns, at most `max_ids`, none older than `window_s`."""

    def __init__(self, window_s: int, max_ids: int) -> None:
        if window_s <= 0 or max_ids <= 0:
            raise ValueError("window_s and max_ids must be positive")
        self.window_s = window_s
        self.max_ids = max_ids
        # digest -> the time it finished and its jobs partition, packed in one int small enough to stay two
        # machine words; the offsets of the results read back apart, as few ids have one.
        self._ids: dict[int, int] = {}
        self._offsets: dict[int, int] = {}
        self._order: deque[int] = deque()  # the digests in insertion order, each once
        self._expired_s = 0  # when the ids were last expired: once a second is enough
        self.evicted = 0  # ids forgotten for room (not for age): a duplicate of one runs again

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, key: int, jobs_partition: int, timestamp_s: int, now_s: int, offset: int | None = None) -> bool:
        """Remember that the job of digest `key` finished; False when it is known already (the first record
        stays) or older than the window."""
        if key in self._ids or timestamp_s < now_s - self.window_s:
            return False
        if not 0 <= jobs_partition <= _PARTITION_MASK:
            raise ValueError(f"partition {jobs_partition}: at most {_PARTITION_MASK}")
        self._ids[key] = (timestamp_s << _PARTITION_BITS) | jobs_partition
        self._order.append(key)
        if offset is not None:
            self._offsets[key] = offset
        if now_s != self._expired_s:
            self.expire(now_s)
        if len(self._ids) > self.max_ids:
            self._evict()
        return True

    def find(self, key: int, now_s: int) -> Finished | None:
        """Where the job of digest `key` finished, if it did within the window."""
        packed = self._ids.get(key)
        if packed is None or (packed >> _PARTITION_BITS) < now_s - self.window_s:
            return None
        return Finished(
            jobs_partition=packed & _PARTITION_MASK,
            offset=self._offsets.get(key),
            timestamp_s=packed >> _PARTITION_BITS,
        )

    def locate(self, key: int, offset: int) -> None:
        """The offset of the first result of the job of digest `key`, once read back."""
        if key in self._ids:
            self._offsets[key] = offset

    def expire(self, now_s: int) -> int:
        """Drop the oldest ids while they are older than the window; how many. (Ids come roughly in time
        order: one behind a newer one waits for it, and `find` ignores it meanwhile.)"""
        self._expired_s = now_s
        ids, order, oldest = self._ids, self._order, now_s - self.window_s
        dropped = 0
        while order and (ids[order[0]] >> _PARTITION_BITS) < oldest:
            self._drop(order.popleft())
            dropped += 1
        return dropped

    def forget(self, jobs_partitions: Collection[int]) -> int:
        """Forget the ids of these jobs partitions (revoked); how many."""
        if not jobs_partitions:
            return 0
        gone = set(jobs_partitions)
        before = len(self._ids)
        self._ids = {k: v for k, v in self._ids.items() if v & _PARTITION_MASK not in gone}
        self._offsets = {k: v for k, v in self._offsets.items() if k in self._ids}
        self._order = deque(k for k in self._order if k in self._ids)
        return before - len(self._ids)

    def _evict(self) -> None:
        """Forget the oldest ids while there are more than `max_ids`."""
        while len(self._ids) > self.max_ids:
            self._drop(self._order.popleft())
            self.evicted += 1

    def _drop(self, key: int) -> None:
        del self._ids[key]
        if self._offsets:
            self._offsets.pop(key, None)
