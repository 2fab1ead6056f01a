"""Rate limits: each provider's and model's allowance, shared by every job of this replica.

A job's attempt waits at the gate of its model (and of its provider, when the provider has limits
of its own) until its request and its estimated tokens fit: the prompt's tokens plus the output
cap are reserved before the call and corrected with the real usage after it. The provider's own
headers (what remains) tighten the view at once, and a 429's retry delay closes the gate for every
job until it has passed. Waiting costs no CPU (one timer per gate for its first waiter), never
holds up another provider's jobs, and serves higher priorities first. Each replica takes a share
of every limit, its share of the jobs topic's partitions, recomputed on every rebalance.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable

from msgspec import Struct

from worker.ratelimit.buckets import Bucket
from worker.ratelimit.headers import RateLimitState

KINDS = ("requests", "tokens", "input_tokens", "output_tokens")


class Usage(Struct, frozen=True, kw_only=True):
    """What one attempt takes from the allowance."""

    requests: int = 1
    input_tokens: int = 0
    output_tokens: int = 0

    def amounts(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "tokens": self.input_tokens + self.output_tokens,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }


class GateStats(Struct, kw_only=True):
    """A gate's figures: its allowance (this replica's share, per minute), what it let through, who waits."""

    allowance: dict[str, float]
    used: dict[str, float]
    waiting: int
    rate_limited: int
    waited_s: float


class Gate:
    """One allowance (a provider's or a model's): buckets per limit and a queue of waiters by priority."""

    def __init__(
        self,
        name: str,
        limits: dict[str, int],
        share: float = 1.0,
        margin: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._limits = {k: v for k, v in limits.items() if v > 0}
        self._margin = margin
        self._clock = clock
        now = clock()
        self._share = share
        self._buckets = {k: Bucket(v * share * (1 - margin), now) for k, v in self._limits.items()}
        self._waiters: list[tuple[int, int, dict[str, float], asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._blocked_until = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._used = {k: 0.0 for k in KINDS}
        self.rate_limited = 0
        self.waited_s = 0.0
        self.in_flight = 0  # calls that passed the gate and have not been corrected yet

    @property
    def limited(self) -> bool:
        return bool(self._limits)

    @property
    def waiting(self) -> int:
        """Jobs waiting at this gate (cheap: cancelled waiters still count until they are dropped)."""
        return len(self._waiters)

    def has_capacity(self, usage: Usage) -> bool:
        """Whether `usage` would pass now, with nobody waiting before it."""
        return not self._waiters and self._wait_s(usage.amounts(), self._clock()) == 0.0

    def _wait_s(self, amounts: dict[str, float], now: float) -> float:
        wait = max(0.0, self._blocked_until - now)
        for kind, bucket in self._buckets.items():
            bucket.refill(now)
            wait = max(wait, bucket.wait_s(amounts.get(kind, 0.0)))
        return wait

    def _take(self, amounts: dict[str, float]) -> None:
        for kind, bucket in self._buckets.items():
            bucket.take(amounts.get(kind, 0.0))
        for kind in KINDS:
            self._used[kind] += amounts.get(kind, 0.0)

    def take_now(self, usage: Usage) -> bool:
        """Take `usage` when it fits now with nobody waiting before it (no coroutine, no await); False
        leaves the gate as it was, and the caller waits in `acquire`."""
        if not self._limits and (not self._blocked_until or self._blocked_until <= self._clock()):
            self.in_flight += 1
            return True
        if self._waiters:
            return False
        amounts = usage.amounts()
        if self._wait_s(amounts, self._clock()) == 0.0:
            self._take(amounts)
            self.in_flight += 1
            return True
        return False

    async def acquire(self, usage: Usage, priority: int = 0) -> float:
        """Wait until `usage` fits, take it; returns the seconds waited."""
        if self.take_now(usage):
            return 0.0
        return await self.queue_for(usage, priority)

    async def queue_for(self, usage: Usage, priority: int = 0) -> float:
        """Wait in line (higher priority first) until `usage` fits, take it; returns the seconds waited.
        For a caller whose `take_now` was just refused (`acquire` tries it first)."""
        amounts = usage.amounts()
        now = self._clock()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (-priority, next(self._order), amounts, future))
        self._schedule(0.0)
        try:
            await future
        except asyncio.CancelledError:
            if not future.done():
                future.cancel()
            self._schedule(0.0)
            raise
        waited = self._clock() - now
        self.waited_s += waited
        self.in_flight += 1
        return waited

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, self._dispatch)

    def _dispatch(self) -> None:
        self._timer = None
        now = self._clock()
        while self._waiters:
            _, _, amounts, future = self._waiters[0]
            if future.done():  # cancelled while waiting
                heapq.heappop(self._waiters)
                continue
            wait = self._wait_s(amounts, now)
            if wait > 0:
                if wait != float("inf"):
                    self._schedule(wait)
                else:
                    heapq.heappop(self._waiters)
                    future.set_exception(
                        ValueError(
                            f"{self.name}: a request of {amounts} can never fit its per-minute limits {self._limits}"
                        )
                    )
                    continue
                return
            heapq.heappop(self._waiters)
            self._take(amounts)
            future.set_result(None)

    def correct(self, reserved: Usage, actual: Usage) -> None:
        """The call is over: give back what was reserved and not used, or take what was used beyond it."""
        self.in_flight -= 1
        if not self._buckets:  # no limits: only the requests are counted
            self._used["requests"] += actual.requests - reserved.requests
            return
        reserved_amounts, actual_amounts = reserved.amounts(), actual.amounts()
        for kind, bucket in self._buckets.items():
            difference = reserved_amounts.get(kind, 0.0) - actual_amounts.get(kind, 0.0)
            if difference > 0:
                bucket.give_back(difference)
            else:
                bucket.take(-difference)
        for kind in KINDS:
            self._used[kind] += actual_amounts.get(kind, 0.0) - reserved_amounts.get(kind, 0.0)
        if self._waiters:
            self._schedule(0.0)

    def observe(self, state: RateLimitState | None) -> None:
        """The provider's headers: what remains of the limits, for every replica sharing the key."""
        if state is None:
            return
        now = self._clock()
        for kind in KINDS:
            window = getattr(state, kind)
            bucket = self._buckets.get(kind)
            if window is not None and window.remaining is not None and bucket is not None:
                bucket.refill(now)
                bucket.tighten(window.remaining)

    def throttle(self, delay_s: float) -> None:
        """A 429: nobody goes through this gate for `delay_s`."""
        self.rate_limited += 1
        self._blocked_until = max(self._blocked_until, self._clock() + delay_s)
        if self._waiters:
            self._schedule(0.0)

    def set_share(self, share: float) -> None:
        """This replica's share of every limit (its partitions of the jobs topic over all of them)."""
        now = self._clock()
        self._share = share
        for kind, bucket in self._buckets.items():
            bucket.resize(max(self._limits[kind] * share * (1 - self._margin), 1e-9), now)
        if self._waiters:
            self._schedule(0.0)

    def stats(self) -> GateStats:
        return GateStats(
            allowance={k: round(b.per_minute, 3) for k, b in self._buckets.items()},
            used={k: round(v, 1) for k, v in self._used.items() if k == "requests" or k in self._buckets},
            waiting=sum(1 for *_, f in self._waiters if not f.done()),
            rate_limited=self.rate_limited,
            waited_s=round(self.waited_s, 3),
        )
