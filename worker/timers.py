"""Deadlines of one length for many tasks (each job's, each HTTP call's), and one timer watching them all.

`asyncio.timeout` costs a timer handle, a heap push and a cancel for every job or call: 8.3 µs a call
against 1.3 (`make bench`, section http_client, http_call_timeout), at thousands in flight.
Deadlines of one length expire in the order they were set, so they go into buckets of TICK_S by
expiry time, oldest first in the dict (a dict keeps insertion order), and a single timer, armed for
the oldest bucket, cancels the tasks of the buckets whose time has come. A deadline fires up to
TICK_S late, never early. The semantics are those of `asyncio.timeout`: the task is cancelled, and
`Deadline.expired` tells that cancellation from any other (which keeps propagating).
"""

from __future__ import annotations

import asyncio
import math

from msgspec import Struct

TICK_S = 0.02


class Deadline(Struct, eq=False, kw_only=True):  # eq=False: hashed by identity, a member of its bucket's set
    """One job's deadline; `expired` once it cancelled its task. (A Struct: built in C, once a job.)"""

    task: asyncio.Task
    bucket: int
    cancelling: int  # the task's pending cancellations when the deadline was set
    expired: bool = False

    def timed_out(self) -> bool:
        """After a CancelledError: whether the deadline caused it (and no other cancellation is pending)."""
        return self.expired and self.task.uncancel() <= self.cancelling


class Deadlines:
    """Deadlines of `seconds` for the current task of each job; see the module's docstring."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._buckets: dict[int, set[Deadline]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the timer's

    def start(self, task: asyncio.Task | None = None) -> Deadline:
        """Cancel `task` (default: the current one) in `seconds` unless `end` is called first."""
        if task is None:
            task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline needs a running task")
        loop = task.get_loop()
        bucket = math.ceil((loop.time() + self.seconds) / TICK_S)
        deadline = Deadline(task=task, bucket=bucket, cancelling=task.cancelling())
        members = self._buckets.get(bucket)
        if members is None:
            members = self._buckets[bucket] = set()
        members.add(deadline)
        if self._timer is None or self._loop is not loop:  # none armed, or armed on a loop since gone
            self._loop = loop
            self._timer = loop.call_at(bucket * TICK_S, self._expire)
        return deadline

    def end(self, deadline: Deadline) -> None:
        """The job is over: its deadline no longer applies."""
        members = self._buckets.get(deadline.bucket)
        if members is not None:
            members.discard(deadline)
            if not members:
                del self._buckets[deadline.bucket]

    @property
    def watched(self) -> int:
        return sum(len(m) for m in self._buckets.values())

    def _expire(self) -> None:
        self._timer = None
        buckets = self._buckets
        loop = asyncio.get_running_loop()
        now = loop.time()
        while buckets:
            bucket = next(iter(buckets))
            if bucket * TICK_S > now:
                self._timer = loop.call_at(bucket * TICK_S, self._expire)
                return
            for deadline in buckets.pop(bucket):
                deadline.expired = True
                deadline.task.cancel()
