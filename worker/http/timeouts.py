"""Call timeouts: every call of a transport gets the same number of seconds, and one timer watches them all.

`asyncio.timeout` costs a timer handle, a heap push and a cancel for every call, several times what
this does (at thousands of calls in flight a call's whole CPU cost is tens of microseconds: `make
bench`, section http_client). Timeouts of one length expire in the order they were set, so they go
into buckets of TICK_S by expiry time, oldest first in the dict (a dict keeps insertion order), and a
single timer, armed for the oldest bucket, cancels the tasks of the buckets whose time has come. A
timeout fires up to TICK_S late, never early. The semantics are those of `asyncio.timeout`: the task
is cancelled, and `CallTimeout.caused` tells that cancellation from any other (which keeps propagating).
"""

from __future__ import annotations

import asyncio
import math

from msgspec import Struct

TICK_S = 0.02


class CallTimeout(Struct, eq=False):  # eq=False: hashed by identity, a member of its bucket's set
    """One call's timeout; `expired` once it cancelled the call's task."""

    task: asyncio.Task
    bucket: int
    cancelling: int  # the task's pending cancellations when the timeout was set
    expired: bool = False

    def caused(self) -> bool:
        """After a CancelledError: whether this timeout caused it (and no other cancellation is pending)."""
        return self.expired and self.task.uncancel() <= self.cancelling


class CallTimeouts:
    """Timeouts of `seconds` for the tasks making calls; see the module's docstring."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._buckets: dict[int, set[CallTimeout]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the timer's

    def start(self) -> CallTimeout:
        """Cancel the current task in `seconds` unless `end` is called first."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a call timeout needs a running task")
        loop = task.get_loop()
        bucket = math.ceil((loop.time() + self.seconds) / TICK_S)
        timeout = CallTimeout(task=task, bucket=bucket, cancelling=task.cancelling())
        members = self._buckets.get(bucket)
        if members is None:
            members = self._buckets[bucket] = set()
        members.add(timeout)
        if self._timer is None or self._loop is not loop:  # none armed, or armed on a loop since gone
            self._loop = loop
            self._timer = loop.call_at(bucket * TICK_S, self._expire)
        return timeout

    def end(self, timeout: CallTimeout) -> None:
        """The call is over: its timeout no longer applies."""
        members = self._buckets.get(timeout.bucket)
        if members is not None:
            members.discard(timeout)
            if not members:
                del self._buckets[timeout.bucket]

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
            for timeout in buckets.pop(bucket):
                timeout.expired = True
                timeout.task.cancel()
