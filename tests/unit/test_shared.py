"""The shared rate limiter against a real Redis server on loopback (Debian's redis-server)."""

import asyncio
import time
import uuid

import pytest

from worker.config import ConfigError, load_config
from worker.ratelimit.gates import Usage
from worker.ratelimit.limits import RateLimits
from worker.ratelimit.shared import SharedAllowance, SharedGate


def allowance(redis_url):
    return SharedAllowance(redis_url, prefix=f"test:{uuid.uuid4().hex}:")


def test_replicas_draw_from_one_bucket_and_together_never_pass_the_limit(redis_url):
    """Three gates (three replicas) sharing a 600/min limit: after the first full minute's burst, 10 a second in all."""

    async def scenario():
        shared = [allowance(redis_url) for _ in range(3)]
        for s in shared[1:]:
            s.prefix = shared[0].prefix
        gates = [SharedGate("model:m", {"requests": 600}, s, block_s=0.1) for s in shared]
        granted: list[float] = []

        async def one(gate):
            await gate.acquire(Usage(requests=1, input_tokens=0, output_tokens=0))
            granted.append(time.monotonic())

        start = time.monotonic()
        await asyncio.gather(*(one(gates[i % 3]) for i in range(600 + 30)))
        took = time.monotonic() - start
        for s in shared:
            await s.close()
        return took, granted, [g.stats().used["requests"] for g in gates]

    took, granted, used = asyncio.run(scenario())
    assert sum(used) == 630
    assert min(used) > 0, f"every replica got a share: {used}"
    # 600 fit the full bucket at once; the 30 beyond it need 3 s at 10 a second, whoever asks.
    assert 2.7 <= took <= 4.5, took
    first_second = sum(1 for t in granted if t - granted[0] < 1.0)
    assert first_second <= 600 + 10 + 3, first_second


def test_a_429_on_one_replica_closes_the_gate_of_every_replica(redis_url):
    async def scenario():
        a, b = allowance(redis_url), allowance(redis_url)
        b.prefix = a.prefix
        first, second = SharedGate("provider:p", {"requests": 6000}, a), SharedGate("provider:p", {"requests": 6000}, b)
        first.throttle(1.0)
        await asyncio.sleep(0.05)  # the block reaches Redis
        start = time.monotonic()
        await second.acquire(Usage(requests=1, input_tokens=0, output_tokens=0))
        waited = time.monotonic() - start
        await a.close()
        await b.close()
        return waited

    waited = asyncio.run(scenario())
    assert 0.8 <= waited <= 1.5, f"the other replica waited out the retry delay: {waited:.2f} s"


def test_what_a_call_did_not_use_stays_in_the_local_credit_without_a_round_trip(redis_url):
    async def scenario():
        shared = allowance(redis_url)
        gate = SharedGate("model:m", {"tokens": 6000}, shared, block_s=0.1)
        reserved = Usage(requests=0, input_tokens=100, output_tokens=900)
        await gate.acquire(reserved)  # 1,000 tokens reserved
        # 150 used: 850 back in the credit
        gate.correct(reserved, Usage(requests=0, input_tokens=100, output_tokens=50))
        calls = 0
        original = shared.take

        async def counting(*args):
            nonlocal calls
            calls += 1
            return await original(*args)

        shared.take = counting
        await gate.acquire(Usage(requests=0, input_tokens=100, output_tokens=700))  # 800 fit the credit
        await shared.close()
        return calls, gate.stats()

    calls, stats = asyncio.run(scenario())
    assert calls == 0
    assert stats.used["tokens"] == pytest.approx(950)


def test_a_request_larger_than_a_minutes_limit_fails_at_once(redis_url):
    async def scenario():
        shared = allowance(redis_url)
        gate = SharedGate("model:m", {"tokens": 1000}, shared)
        with pytest.raises(ValueError, match="can never fit"):
            await gate.acquire(Usage(requests=1, input_tokens=900, output_tokens=500))
        await shared.close()

    asyncio.run(scenario())


def test_an_unreachable_redis_fails_the_start_naming_its_address():
    config = load_config(env={"LLM_ROUTER__RATE_LIMITS__BACKEND": "redis://127.0.0.1:1/0"})

    async def scenario():
        limits = RateLimits(config)
        try:
            await limits.start()
        finally:
            await limits.close()

    with pytest.raises(ConnectionError, match=r"redis://127\.0\.0\.1:1/0: cannot reach Redis"):
        asyncio.run(scenario())


def test_readiness_says_why_redis_is_unreachable_and_nothing_when_it_answers(redis_url):
    """What /readyz reports of the shared rate limiter: nothing with local limits or a Redis that answers,
    the address and the error with one that does not."""

    async def unreachable(backend: str) -> str | None:
        limits = RateLimits(load_config(env={"LLM_ROUTER__RATE_LIMITS__BACKEND": backend}))
        try:
            return await limits.unreachable()
        finally:
            await limits.close()

    async def scenario():
        return [await unreachable(b) for b in ("local", redis_url, "redis://127.0.0.1:1/0")]

    local, answering, closed = asyncio.run(scenario())
    assert local is None and answering is None
    assert closed is not None and closed.startswith("rate_limits.backend redis://127.0.0.1:1/0: cannot reach Redis")


def test_the_backend_must_be_local_or_a_redis_url():
    with pytest.raises(ConfigError, match='backend must be "local" or a redis'):
        load_config(env={"LLM_ROUTER__RATE_LIMITS__BACKEND": "memcached://x"})
