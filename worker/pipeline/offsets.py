"""Offset tracking: which offsets of each partition are safe to commit.

Jobs of one partition finish out of order; the committed position may only pass offsets whose job
has finished (its outputs acknowledged by the broker), so it is the first unfinished offset, or one
past the last offset taken when nothing is unfinished. Pure: no Kafka here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


class PartitionOffsets:
    """The offsets taken from one partition and not yet known to be committed."""

    __slots__ = ("_done", "_next", "_order", "committed")

    def __init__(self) -> None:
        self._order: deque[int] = deque()
        self._done: set[int] = set()
        self._next: int | None = None
        self.committed: int | None = None

    def add(self, offset: int) -> None:
        """Record that the job at `offset` was taken. Offsets must increase."""
        self.take([offset])

    def take(self, offsets: list[int]) -> None:
        """Record that the jobs at `offsets` (one fetch's, increasing) were taken."""
        if not offsets:
            return
        if (self._next is not None and offsets[0] < self._next) or offsets[-1] < offsets[0]:
            raise ValueError(
                f"offsets {offsets[0]}..{offsets[-1]} taken after {(self._next or 0) - 1}: offsets must increase"
            )
        self._order.extend(offsets)
        self._next = offsets[-1] + 1

    def finish(self, offset: int) -> bool:
        """Record that the job at `offset` finished; False when it was not pending."""
        order, done = self._order, self._done
        if not order:
            return False
        if offset != order[0]:  # not the oldest pending one: it waits in `done` until the ones before it finish
            assert self._next is not None  # set by `take`, which put the pending offsets in `order`
            if offset < order[0] or offset >= self._next or offset in done:
                return False
            done.add(offset)
            return True
        order.popleft()  # the oldest: the position moves past it, and past the finished ones after it
        while order and order[0] in done:
            done.remove(order.popleft())
        return True

    @property
    def pending(self) -> int:
        """Jobs taken and not finished."""
        return len(self._order) - len(self._done)

    @property
    def position(self) -> int | None:
        """The offset to commit: everything below it has finished. None before any offset is taken."""
        if self._order:
            return self._order[0]
        return self._next

    def to_commit(self) -> int | None:
        """The position, when it is past what was last committed."""
        position = self.position
        if position is None or (self.committed is not None and position <= self.committed):
            return None
        return position


class OffsetTracker(Generic[P]):
    """Per-partition offset tracking across the partitions this worker owns."""

    def __init__(self) -> None:
        self._partitions: dict[P, PartitionOffsets] = {}
        self.in_flight = 0

    def add(self, partition: P, offset: int) -> None:
        """A job was taken."""
        self.take(partition, [offset])

    def take(self, partition: P, offsets: list[int]) -> None:
        """The jobs of one fetch from `partition` were taken (offsets increasing): `add` for each, at once."""
        partition_offsets = self._partitions.get(partition)
        if partition_offsets is None:
            partition_offsets = PartitionOffsets()
            partition_offsets.take(offsets)  # may refuse them: then the partition stays unknown
            self._partitions[partition] = partition_offsets
        else:
            partition_offsets.take(offsets)
        self.in_flight += len(offsets)

    def finish(self, partition: P, offset: int) -> None:
        """A job finished; a partition dropped meanwhile (revoked) is ignored."""
        offsets = self._partitions.get(partition)
        if offsets is not None and offsets.finish(offset):
            self.in_flight -= 1

    def pending(self, partition: P) -> int:
        offsets = self._partitions.get(partition)
        return offsets.pending if offsets else 0

    def to_commit(self, partitions: Iterable[P] | None = None) -> dict[P, int]:
        """Positions that advanced since the last commit, for the given partitions (default all)."""
        keys = self._partitions.keys() if partitions is None else partitions
        out = {}
        for partition in keys:
            offsets = self._partitions.get(partition)
            if offsets is not None:
                position = offsets.to_commit()
                if position is not None:
                    out[partition] = position
        return out

    def committed(self, positions: dict[P, int]) -> None:
        """The broker acknowledged a commit of these positions."""
        for partition, position in positions.items():
            offsets = self._partitions.get(partition)
            if offsets is not None and (offsets.committed is None or position > offsets.committed):
                offsets.committed = position

    def drop(self, partitions: Iterable[P]) -> None:
        """Forget partitions (revoked); their unfinished jobs no longer count as in flight."""
        for partition in partitions:
            offsets = self._partitions.pop(partition, None)
            if offsets is not None:
                self.in_flight -= offsets.pending

    def partitions(self) -> list[P]:
        return list(self._partitions)

    def committed_positions(self) -> dict[P, int]:
        """The last committed position of each partition that has one."""
        return {p: o.committed for p, o in self._partitions.items() if o.committed is not None}


def read_to_end(read: int, end_at_assignment: int, highwater: int | None, fetched: bool) -> bool:
    """Whether a reader of a partition from its beginning has its whole state: read to the end the partition
    had when assigned, and to the broker's end when the last fetch brought records (the embedded broker lists
    an end short of a last batch of several records)."""
    if read < end_at_assignment:
        return False
    return not fetched or read >= (highwater or 0)
