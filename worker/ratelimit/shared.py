"""Rate limits shared by every replica through Redis (`rate_limits.backend = "redis://..."`).

One token bucket per gate and limit lives in Redis, refilled by a Lua script on Redis's own clock,
so every replica draws from the same allowance: exact global limits, whatever the partitions. To
keep round trips off the hot path a gate takes its allowance in small blocks (`rate_limits.block_s`
worth of the limit) into a local credit and spends it locally; what a call did not use (reserved
output tokens) stays in the credit for the next job. A 429 closes the gate for every replica: its
retry delay is written to Redis and the script refuses everyone until it has passed.

When Redis cannot be reached, jobs wait at the gate (nothing is called over the limit, nothing is
lost) and the failure is logged once per outage.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Callable

from worker.observability.logs import get_logger
from worker.ratelimit.gates import KINDS, Gate
from worker.ratelimit.headers import RateLimitState

log = get_logger("limits")

# KEYS[1]: the gate's blocked-until key; KEYS[2..]: one bucket per limit.
# ARGV: per bucket, its capacity (units a minute) then the amount asked.
# Returns 0 when every amount was taken, else the milliseconds to wait before asking again.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local blocked = redis.call('PTTL', KEYS[1])
if blocked > 0 then return blocked end
local levels = {}
local wait = 0
for i = 2, #KEYS do
  local cap = tonumber(ARGV[2 * i - 3])
  local amount = tonumber(ARGV[2 * i - 2])
  local v = redis.call('HMGET', KEYS[i], 'level', 'ts')
  local level = tonumber(v[1]) or cap
  local ts = tonumber(v[2]) or now
  if now > ts then level = math.min(cap, level + (now - ts) * cap / 60000) end
  levels[i] = level
  if amount > level then
    local w = math.ceil((amount - level) * 60000 / cap)
    if w > wait then wait = w end
  end
end
if wait > 0 then return wait end
for i = 2, #KEYS do
  redis.call('HSET', KEYS[i], 'level', tostring(levels[i] - tonumber(ARGV[2 * i - 2])), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[i], 120000)
end
return 0
"""

# KEYS[1]: the blocked-until key; ARGV[1]: milliseconds. Never shortens a longer block.
BLOCK = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then redis.call('SET', KEYS[1], '1', 'PX', ms) end
return 0
"""


class SharedAllowance:
    """The connection to Redis and the two scripts every shared gate uses."""

    def __init__(self, url: str, prefix: str = "llm-router:rate-limits:") -> None:
        import redis.asyncio as redis  # only needed with this backend

        self.url = url
        self.prefix = prefix
        self._redis = redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._take = self._redis.register_script(TAKE)
        self._block = self._redis.register_script(BLOCK)
        self._failing = False

    async def check(self) -> None:
        """Fail fast, with the address, when Redis cannot be reached at start."""
        try:
            await self._redis.ping()
        except Exception as exc:
            raise ConnectionError(f"rate_limits.backend {self.url}: cannot reach Redis: {exc}") from exc

    async def take(self, gate: str, capacities: dict[str, float], amounts: dict[str, float]) -> float:
        """Take `amounts` from the gate's buckets at once: 0.0, or the seconds to wait before asking again."""
        kinds = list(amounts)
        keys = [f"{self.prefix}{gate}:blocked", *(f"{self.prefix}{gate}:{k}" for k in kinds)]
        args = [x for k in kinds for x in (capacities[k], amounts[k])]
        return await self._call(self._take, keys, args) / 1000

    async def block(self, gate: str, seconds: float) -> None:
        await self._call(self._block, [f"{self.prefix}{gate}:blocked"], [max(1, int(seconds * 1000))])

    async def _call(self, script, keys: list[str], args: list[float]) -> float:
        try:
            answer = float(await script(keys=keys, args=args))
        except Exception as exc:
            if not self._failing:
                log.warning(
                    "Redis rate limiter unreachable: jobs wait at their gates until it answers",
                    extra={"backend": self.url, "error": str(exc)},
                )
            self._failing = True
            raise
        if self._failing:
            log.info("Redis rate limiter reachable again", extra={"backend": self.url})
            self._failing = False
        return answer

    async def close(self) -> None:
        await self._redis.aclose()


class SharedGate(Gate):
    """A gate whose allowance is taken from Redis in blocks and spent from a local credit."""

    RETRY_S = 0.5  # after a failed round trip to Redis

    def __init__(
        self,
        name: str,
        limits: dict[str, int],
        shared: SharedAllowance,
        margin: float = 0.0,
        block_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name, limits, margin=margin, clock=clock)
        self._shared = shared
        self._capacity = {k: v * (1 - margin) for k, v in self._limits.items()}
        self._block = {k: max(1.0, c * block_s / 60) for k, c in self._capacity.items()}
        self._credit = {k: 0.0 for k in self._limits}
        self._filler: asyncio.Task[None] | None = None

    def _wait_s(self, amounts: dict[str, float], now: float) -> float:
        for kind, capacity in self._capacity.items():
            if amounts.get(kind, 0.0) > capacity:
                return math.inf
        if now < self._blocked_until:
            return self._blocked_until - now
        short = any(amounts.get(k, 0.0) > c for k, c in self._credit.items())
        return 1e-3 if short else 0.0  # short of credit: the filler asks Redis

    def has_capacity(self, usage) -> bool:
        """Nobody waits and no 429 closed the gate: the next block is likely to come at once."""
        return not self._waiters and self._clock() >= self._blocked_until

    def _take(self, amounts: dict[str, float]) -> None:
        for kind in self._credit:
            self._credit[kind] -= amounts.get(kind, 0.0)
        for kind in KINDS:
            self._used[kind] += amounts.get(kind, 0.0)

    def _schedule(self, delay: float) -> None:
        if self._filler is None or self._filler.done():
            self._filler = asyncio.get_running_loop().create_task(self._fill())

    async def _fill(self) -> None:
        """Serve the waiters in priority order, taking blocks from Redis as the credit runs out."""
        while self._waiters:
            _, _, amounts, future = self._waiters[0]
            if future.done():
                self._pop()
                continue
            now = self._clock()
            wait = self._wait_s(amounts, now)
            if wait == 0.0:
                self._pop()
                self._take(amounts)
                future.set_result(None)
                continue
            if wait == math.inf:
                self._pop()
                future.set_exception(
                    ValueError(
                        f"{self.name}: a request of {amounts} can never fit its per-minute limits {self._limits}"
                    )
                )
                continue
            if now < self._blocked_until:
                await asyncio.sleep(self._blocked_until - now)
                continue
            need = {
                k: min(c, max(self._block[k], amounts.get(k, 0.0) - self._credit[k]))
                for k, c in self._capacity.items()
                if amounts.get(k, 0.0) > self._credit[k]
            }
            try:
                wait = await self._shared.take(self.name, self._capacity, need)
            except Exception:
                await asyncio.sleep(self.RETRY_S)
                continue
            if wait == 0.0:
                for kind, amount in need.items():
                    self._credit[kind] += amount
            else:
                await asyncio.sleep(wait)

    def _pop(self) -> None:
        heapq.heappop(self._waiters)

    def correct(self, reserved, actual) -> None:
        """What the call did not use stays in this replica's credit; what it used beyond is owed."""
        self.in_flight -= 1
        reserved_amounts, actual_amounts = reserved.amounts(), actual.amounts()
        for kind in self._credit:
            self._credit[kind] += reserved_amounts.get(kind, 0.0) - actual_amounts.get(kind, 0.0)
        for kind in KINDS:
            self._used[kind] += actual_amounts.get(kind, 0.0) - reserved_amounts.get(kind, 0.0)
        if self._waiters:
            self._schedule(0.0)

    def observe(self, state: RateLimitState | None) -> None:
        """The global bucket is exact already; the provider's headers add nothing to it."""

    def throttle(self, delay_s: float) -> None:
        """A 429: this gate closes at once, and every other replica's at its next round trip."""
        super().throttle(delay_s)
        task = asyncio.get_running_loop().create_task(self._shared.block(self.name, delay_s))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # failures are logged by SharedAllowance

    def set_share(self, share: float) -> None:
        """Shared limits are global: the partitions a replica owns do not change them."""

    def stats(self):
        stats = super().stats()
        stats.allowance = {k: round(c, 3) for k, c in self._capacity.items()}
        return stats
