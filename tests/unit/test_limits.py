"""Rate-limit arithmetic and the gate's behaviour (no Kafka, no HTTP)."""

import asyncio
import math
import time

import pytest

from worker.ratelimit.buckets import Bucket
from worker.ratelimit.gates import Gate, Usage
from worker.ratelimit.headers import RateLimitState, Window
from worker.ratelimit.limits import partition_share


def test_bucket_refills_continuously_up_to_its_capacity():
    bucket = Bucket(600, now=0.0)
    bucket.take(600)
    assert bucket.wait_s(10) == pytest.approx(1.0)  # 10 a second
    bucket.refill(0.5)
    assert bucket.level == pytest.approx(5)
    bucket.refill(1000)
    assert bucket.level == 600
    assert bucket.wait_s(601) == math.inf


def test_bucket_give_back_tighten_and_resize():
    bucket = Bucket(100, now=0.0)
    bucket.take(80)
    bucket.give_back(30)
    assert bucket.level == pytest.approx(50)
    bucket.give_back(500)
    assert bucket.level == 100
    bucket.tighten(40)
    assert bucket.level == 40
    bucket.tighten(90)
    assert bucket.level == 40, "the provider's remaining only ever tightens"
    bucket.resize(50, now=0.0)
    assert (bucket.per_minute, bucket.level) == (50, pytest.approx(20)), "the same fraction stays free"


@pytest.mark.parametrize("owned, total, share", [(4, 12, 1 / 3), (12, 12, 1.0), (1, 4, 0.25), (0, 4, 0.0), (3, 0, 1.0)])
def test_partition_share(owned, total, share):
    assert partition_share(owned, total) == pytest.approx(share)


def test_shares_of_three_replicas_add_up_to_the_limit():
    shares = [partition_share(n, 12) for n in (4, 4, 4)]
    assert sum(shares) == pytest.approx(1.0)
    shares = [partition_share(n, 4) for n in (2, 1, 1)]
    assert sum(shares) == pytest.approx(1.0)


def test_reserve_then_correct_with_the_real_usage():
    gate = Gate("m", {"tokens": 6000}, clock=lambda: 0.0)

    async def scenario():
        await gate.acquire(Usage(1, 100, 1000))  # reserves 1100 tokens
        gate.correct(Usage(1, 100, 1000), Usage(1, 120, 30))  # used 150
        return gate.stats()

    stats = asyncio.run(scenario())
    assert stats.used["tokens"] == pytest.approx(150)
    assert gate._buckets["tokens"].level == pytest.approx(6000 - 150)


def test_headers_tighten_the_view_at_once():
    gate = Gate("m", {"requests": 3000, "tokens": 100000}, clock=lambda: 0.0)
    gate.observe(RateLimitState(requests=Window(3000, 10, 0.5), tokens=Window(100000, 99000, 0.1)))
    assert gate._buckets["requests"].level == 10
    assert gate._buckets["tokens"].level == 99000


def test_the_margin_and_the_share_set_the_allowance():
    gate = Gate("m", {"requests": 3000}, share=1 / 3, margin=0.02, clock=lambda: 0.0)
    assert gate.stats().allowance["requests"] == pytest.approx(980)
    gate.set_share(0.5)
    assert gate.stats().allowance["requests"] == pytest.approx(1470)


def test_waiting_is_paced_by_the_limit_and_higher_priority_goes_first():
    async def scenario():
        gate = Gate("m", {"requests": 600})  # 10 a second, 600 at once when full
        gate._buckets["requests"].take(600)  # empty: every request now waits its turn
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
        return [await gate.acquire(Usage(1, 10**9, 10**9)) for _ in range(1000)]

    assert set(asyncio.run(scenario())) == {0.0}


def test_a_request_larger_than_the_limit_fails_clearly():
    async def scenario():
        gate = Gate("m", {"tokens": 1000})
        gate._buckets["tokens"].take(1)
        await gate.acquire(Usage(1, 900, 200))

    with pytest.raises(ValueError, match="can never fit"):
        asyncio.run(scenario())


def test_a_call_cut_by_the_deadline_returns_its_reservation():
    from worker.config import load_config
    from worker.execution.runner import JobRunner
    from worker.messages import Job
    from worker.providers import build_providers

    config = load_config(
        env={f"LLM_ROUTER__PROVIDERS__{p}__KIND": "echo" for p in ("OPENAI", "ANTHROPIC", "GEMINI", "LLAMA")}
        | {
            "LLM_ROUTER__ROUTING__JOB_DEADLINE_S": "0.1",
            "LLM_ROUTER__MODELS__GPT_4O__TOKENS_PER_MINUTE": "100000",
            "LLM_ROUTER__PROVIDERS__OPENAI__LATENCY_MS": "1000",
        }
    )
    runner = JobRunner(config, build_providers(config).clients)
    outcome = asyncio.run(runner.run(Job(id="j", prompt="q", model="gpt-4o")))
    gate = runner.limits.models["gpt-4o"]
    assert outcome.result.error.kind == "deadline_exceeded"
    assert gate.in_flight == 0 and gate.stats().used["tokens"] == 0
