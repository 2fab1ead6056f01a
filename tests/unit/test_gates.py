"""The gate of a model or a provider: reserve then correct, headers, shares, waiting by priority, 429s."""

import asyncio
import time

import pytest

from worker.ratelimit.gates import Gate, Usage
from worker.ratelimit.headers import RateLimitState, Window


def test_reserve_then_correct_with_the_real_usage():
    gate = Gate("m", {"tokens": 6000}, clock=lambda: 0.0)

    async def scenario():
        reserved = Usage(requests=1, input_tokens=100, output_tokens=1000)
        await gate.acquire(reserved)  # reserves 1100 tokens
        gate.correct(reserved, Usage(requests=1, input_tokens=120, output_tokens=30))  # used 150
        return gate.stats()

    stats = asyncio.run(scenario())
    assert stats.used["tokens"] == pytest.approx(150)
    # What is free again is the limit less what was used (the gate's clock stands still: nothing refills).
    assert gate.has_capacity(Usage(requests=1, input_tokens=6000 - 150))
    assert not gate.has_capacity(Usage(requests=1, input_tokens=6000 - 150 + 1))


def test_headers_tighten_the_view_at_once():
    gate = Gate("m", {"requests": 3000, "tokens": 100000}, clock=lambda: 0.0)
    gate.observe(
        RateLimitState(
            requests=Window(limit=3000, remaining=10, reset_s=0.5),
            tokens=Window(limit=100000, remaining=99000, reset_s=0.1),
        )
    )
    assert gate.has_capacity(Usage(requests=10)) and not gate.has_capacity(Usage(requests=11))
    assert gate.has_capacity(Usage(requests=0, input_tokens=99000))
    assert not gate.has_capacity(Usage(requests=0, input_tokens=99001))


def test_the_margin_and_the_share_set_the_allowance():
    gate = Gate("m", {"requests": 3000}, share=1 / 3, margin=0.02, clock=lambda: 0.0)
    assert gate.stats().allowance["requests"] == pytest.approx(980)
    gate.set_share(0.5)
    assert gate.stats().allowance["requests"] == pytest.approx(1470)


def test_waiting_is_paced_by_the_limit_and_higher_priority_goes_first():
    async def scenario():
        gate = Gate("m", {"requests": 600})  # 10 a second, 600 at once when full
        assert gate.take_now(Usage(requests=600))  # empty: every request now waits its turn
        order = []

        async def job(name, priority):
            await gate.acquire(Usage(), priority)
            order.append((name, time.monotonic()))

        started = time.monotonic()
        tasks = [asyncio.create_task(job(f"low{i}", 0)) for i in range(3)]
        await asyncio.sleep(0.01)
        tasks.append(asyncio.create_task(job("high", 5)))
        await asyncio.gather(*tasks)
        return started, order, gate.stats()

    started, order, stats = asyncio.run(scenario())
    assert order[0][0] == "high", "the higher priority jumps the queue"
    elapsed = order[-1][1] - started
    assert 0.35 <= elapsed <= 0.8, f"4 requests at 10/s take about 0.4 s, took {elapsed:.2f}"
    assert stats.waiting == 0 and stats.waited_s > 0


def test_a_429_closes_the_gate_for_everyone_until_its_delay_has_passed():
    async def scenario():
        gate = Gate("m", {"requests": 6000})
        gate.throttle(0.3)
        started = time.monotonic()
        await asyncio.gather(*(gate.acquire(Usage()) for _ in range(5)))
        return time.monotonic() - started, gate.stats()

    elapsed, stats = asyncio.run(scenario())
    assert 0.28 <= elapsed <= 0.6 and stats.rate_limited == 1


def test_an_unlimited_gate_never_waits():
    async def scenario():
        gate = Gate("m", {})
        return [await gate.acquire(Usage(requests=1, input_tokens=10**9, output_tokens=10**9)) for _ in range(1000)]

    assert set(asyncio.run(scenario())) == {0.0}


def test_a_request_larger_than_the_limit_fails_clearly():
    async def scenario():
        gate = Gate("m", {"tokens": 1000})
        assert gate.take_now(Usage(requests=1, input_tokens=1))
        await gate.acquire(Usage(requests=1, input_tokens=900, output_tokens=200))

    with pytest.raises(ValueError, match="can never fit"):
        asyncio.run(scenario())
