"""The record of finished job ids: which ids finished within the dedupe window, and where each one's
first result is on the results topic. Pure: no Kafka here (finished.py reads and writes the topics).

An id is remembered as an 8-byte digest (blake2b) mapped to one packed int (the time it finished in
seconds, the jobs partition it belongs to, its result's partition on the results topic and, once a
read-back found it, its offset), in insertion order, so the oldest are forgotten first when there
are more than `max_ids`, and those older than the window are dropped. The result's bytes are not
kept: they are read back from the results topic when a duplicate comes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from hashlib import blake2b
from typing import NamedTuple

_OFFSET_BITS = 48  # offset + 1 (0: not known yet)
_PARTITION_BITS = 16
_PARTITION_MASK = (1 << _PARTITION_BITS) - 1
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1
_JOBS_SHIFT = _OFFSET_BITS + _PARTITION_BITS
_TIME_SHIFT = _JOBS_SHIFT + _PARTITION_BITS


class Finished(NamedTuple):
    """Where a finished job's first result is."""

    jobs_partition: int  # the partition of the jobs topic the id belongs to
    partition: int  # of the results topic
    offset: int | None  # on the results topic; None: not read back yet (found from `timestamp_s` then)
    timestamp_s: int  # when it finished (its finished record's timestamp)


def digest(key: bytes) -> int:
    """The 8-byte digest of a job id (UTF-8, as the records' keys hold it) that the record keeps instead of the id."""
    return int.from_bytes(blake2b(key, digest_size=8).digest(), "little")


def _pack(jobs_partition: int, partition: int, offset: int | None, timestamp_s: int) -> int:
    if not (0 <= partition <= _PARTITION_MASK and 0 <= jobs_partition <= _PARTITION_MASK):
        raise ValueError(f"partitions {jobs_partition}, {partition}: at most {_PARTITION_MASK}")
    position = 0 if offset is None else offset + 1
    if not 0 <= position <= _OFFSET_MASK:
        raise ValueError(f"offset {offset}: at most {_OFFSET_MASK - 1}")
    return (timestamp_s << _TIME_SHIFT) | (jobs_partition << _JOBS_SHIFT) | (partition << _OFFSET_BITS) | position


def _unpack(packed: int) -> Finished:
    position = packed & _OFFSET_MASK
    return Finished(
        jobs_partition=(packed >> _JOBS_SHIFT) & _PARTITION_MASK,
        partition=(packed >> _OFFSET_BITS) & _PARTITION_MASK,
        offset=position - 1 if position else None,
        timestamp_s=packed >> _TIME_SHIFT,
    )


class FinishedIds:
    """The finished ids of the jobs partitions a worker owns, at most `max_ids`, none older than `window_s`."""

    def __init__(self, window_s: int, max_ids: int) -> None:
        if window_s <= 0 or max_ids <= 0:
            raise ValueError("window_s and max_ids must be positive")
        self.window_s = window_s
        self.max_ids = max_ids
        self._ids: dict[int, int] = {}  # digest -> packed Finished
        self._order: deque[int] = deque()  # the digests in insertion order, each once
        self.evicted = 0  # ids forgotten for room (not for age): a duplicate of one runs again

    def __len__(self) -> int:
        return len(self._ids)

    def add(
        self, key: int, jobs_partition: int, partition: int, offset: int | None, timestamp_s: int, now_s: int
    ) -> bool:
        """Remember that the job of digest `key` finished; False when it is known already (the first record
        stays) or older than the window."""
        if key in self._ids or timestamp_s < now_s - self.window_s:
            return False
        self._ids[key] = _pack(jobs_partition, partition, offset, timestamp_s)
        self._order.append(key)
        self.expire(now_s)
        while len(self._ids) > self.max_ids:
            del self._ids[self._order.popleft()]
            self.evicted += 1
        return True

    def find(self, key: int, now_s: int) -> Finished | None:
        """Where the job of digest `key` finished, if it did within the window."""
        packed = self._ids.get(key)
        if packed is None:
            return None
        found = _unpack(packed)
        return found if found.timestamp_s >= now_s - self.window_s else None

    def locate(self, key: int, offset: int) -> None:
        """The offset of the first result of the job of digest `key`, once read back."""
        packed = self._ids.get(key)
        if packed is not None:
            found = _unpack(packed)
            self._ids[key] = _pack(found.jobs_partition, found.partition, offset, found.timestamp_s)

    def expire(self, now_s: int) -> int:
        """Drop the oldest ids while they are older than the window; how many. (Ids come roughly in time
        order: one behind a newer one waits for it, and `find` ignores it meanwhile.)"""
        ids, order, oldest = self._ids, self._order, now_s - self.window_s
        dropped = 0
        while order and (ids[order[0]] >> _TIME_SHIFT) < oldest:
            del ids[order.popleft()]
            dropped += 1
        return dropped

    def forget(self, jobs_partitions: Collection[int]) -> int:
        """Forget the ids of these jobs partitions (revoked); how many."""
        if not jobs_partitions:
            return 0
        gone = set(jobs_partitions)
        before = len(self._ids)
        self._ids = {k: v for k, v in self._ids.items() if (v >> _JOBS_SHIFT) & _PARTITION_MASK not in gone}
        self._order = deque(k for k in self._order if k in self._ids)
        return before - len(self._ids)
