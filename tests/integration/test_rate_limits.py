"""Rate limits against the simulator enforcing the same limits (real broker, simulator process)."""

import asyncio
import subprocess
import sys
import time

import httpx
import msgspec
import pytest

from tests.integration.helpers import PROVIDERS, REPO, Setup, job_bytes, make_topics, produce
from worker.broker import free_port, wait_for_port
from worker.cli.runs import running_worker
from worker.providers import build_providers
from worker.simulator.settings import dump_simulator_config, load_simulator_config

# What is measured here is the gates against the simulator's limits; Kafka only carries the jobs. Each test drives a
# simulator at its limit and counts 429s: under pytest-xdist, one heavy test at a time (the group on one worker).
pytestmark = [pytest.mark.one_broker, pytest.mark.xdist_group("heavy")]

KEYS = {"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k", "GEMINI_API_KEY": "k", "LLAMA_API_KEY": "k"}
RPM = 1200  # 20 a second


def start_simulator(tmp_path, **gpt4o):
    """A simulator process whose gpt-4o takes 0.5 s a call and enforces the given limits."""
    config = load_simulator_config()
    models = dict(config.models)
    models["gpt-4o"] = msgspec.structs.replace(
        models["gpt-4o"], latency_ms=500, latency_jitter=0.0, output_tokens=100, **gpt4o
    )
    path = tmp_path / "simulator.toml"
    path.write_text(dump_simulator_config(msgspec.structs.replace(config, models=models)))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "simulate", "--port", str(port), "--config", str(path)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port("127.0.0.1", port, 30, process)
    return process, f"http://127.0.0.1:{port}"


def worker_setup(bootstrap, url, **extra):
    overrides = {
        "LLM_ROUTER__PROVIDERS__OPENAI__BASE_URL": f"{url}/v1",
        "LLM_ROUTER__PROVIDERS__ANTHROPIC__BASE_URL": url,
        "LLM_ROUTER__PROVIDERS__GEMINI__BASE_URL": f"{url}/v1beta",
        "LLM_ROUTER__PROVIDERS__LLAMA__BASE_URL": f"{url}/v1",
        "LLM_ROUTER__MODELS__GPT_4O__REQUESTS_PER_MINUTE": RPM,
        "LLM_ROUTER__WORKER__SHUTDOWN_GRACE_S": 1,  # jobs still waiting for the allowance are abandoned, not drained
        **{
            f"LLM_ROUTER__PROVIDERS__{p}__KIND": kind
            for p, kind in zip(PROVIDERS, ("openai", "anthropic", "gemini", "openai_compatible"), strict=True)
        },
    }
    return Setup(bootstrap, **(overrides | extra))


def slope(points):
    """Least-squares slope of (time, count): the served rate, less noisy than two end points."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_c = sum(c for _, c in points) / n
    return sum((t - mean_t) * (c - mean_c) for t, c in points) / sum((t - mean_t) ** 2 for t, _ in points)


async def sample(url: str, count: int, every_s: float = 0.5) -> list[tuple[float, dict]]:
    """The simulator's gpt-4o counts every `every_s` seconds, `count` times."""
    samples = []
    for _ in range(count):
        await asyncio.sleep(every_s)
        samples.append((time.monotonic(), (await asyncio.to_thread(stats, url))["models"].get("gpt-4o", {})))
    return samples


def stats(url):
    return httpx.get(f"{url}/_sim/stats").json()


def test_one_replica_uses_the_request_allowance_without_a_single_429(bootstrap, tmp_path, report):
    process, url = start_simulator(tmp_path, requests_per_minute=RPM)
    setup = worker_setup(bootstrap, url)
    jobs = 1200 + 20 * 40  # a steady part of about 25 s: the rate is measured to a few tenths of a percent

    async def scenario():
        await make_topics(setup)
        async with running_worker(setup.config, build_providers(setup.config, env=KEYS)):
            await produce(
                setup, [(f"r{i}".encode(), job_bytes(f"r{i}", f"question {i}", model="gpt-4o")) for i in range(jobs)]
            )
            samples = [(t, served.get("ok", 0)) for t, served in await sample(url, 64)]
        return samples, await asyncio.to_thread(stats, url)

    try:
        samples, served = asyncio.run(scenario())
    finally:
        process.terminate()
        process.wait(timeout=10)
    # The steady part: after the first burst (the allowance starts full) has been served.
    steady = [s for s in samples if 1300 < s[1] < jobs]
    rate = slope(steady)
    report(
        f"rate limit, one replica: {RPM} requests/min limit, 0.5 s calls: steady served rate "
        f"{rate * 60:.0f}/min = {rate * 60 / RPM:.1%} of the limit over {steady[-1][0] - steady[0][0]:.1f} s; "
        f"429s from the simulator: {served['rate_limited_sent']}"
    )
    assert served["rate_limited_sent"] == 0
    assert rate * 60 >= 0.97 * RPM


def test_after_a_429_with_a_retry_delay_nobody_calls_the_provider_until_it_has_passed(bootstrap, tmp_path, report):
    process, url = start_simulator(tmp_path)
    setup = worker_setup(bootstrap, url, LLM_ROUTER__WORKER__MAX_RETRIES_PER_JOB=10)

    async def scenario():
        await make_topics(setup)
        async with running_worker(setup.config, build_providers(setup.config, env=KEYS)) as worker:
            await produce(
                setup, [(f"t{i}".encode(), job_bytes(f"t{i}", f"question {i}", model="gpt-4o")) for i in range(3000)]
            )
            while (await asyncio.to_thread(stats, url))["requests"] < 1400:  # past the first burst: 20 a second
                await asyncio.sleep(0.05)
            in_flight = worker.runner.limits.models["gpt-4o"].in_flight
            before = (await asyncio.to_thread(stats, url))["requests"]
            await asyncio.to_thread(
                httpx.patch, f"{url}/_sim/models/gpt-4o", json={"errors": {"rate_limited": 1.0}, "retry_after_s": 5}
            )
            await asyncio.sleep(4.8)
            after = (await asyncio.to_thread(stats, url))["requests"]
        return in_flight, after - before

    try:
        in_flight, sent = asyncio.run(scenario())
    finally:
        process.terminate()
        process.wait(timeout=10)
    report(
        f"429 with a 5 s retry delay: calls in flight when it began {in_flight}; "
        f"requests to the provider in the next 4.8 s: {sent}"
    )
    assert sent <= in_flight + 1, "only the calls already under way (and the one that met the first 429)"


TPM = 60000  # about 9 calls a second of ~110 tokens: binds long before 1,200 requests a minute


def test_a_tokens_per_minute_limit_binds_before_the_request_limit_and_holds(bootstrap, tmp_path, report):
    process, url = start_simulator(tmp_path, requests_per_minute=RPM, tokens_per_minute=TPM)
    setup = worker_setup(bootstrap, url, LLM_ROUTER__MODELS__GPT_4O__TOKENS_PER_MINUTE=TPM)
    jobs = 900

    async def scenario():
        await make_topics(setup)
        async with running_worker(setup.config, build_providers(setup.config, env=KEYS)):
            await produce(
                setup, [(f"k{i}".encode(), job_bytes(f"k{i}", f"question {i}", model="gpt-4o")) for i in range(jobs)]
            )
            samples = [
                (t, s.get("input_tokens", 0) + s.get("output_tokens", 0), s.get("ok", 0))
                for t, s in await sample(url, 50)
            ]
        return samples, await asyncio.to_thread(stats, url)

    try:
        samples, served = asyncio.run(scenario())
    finally:
        process.terminate()
        process.wait(timeout=10)
    # The steady part: after the first minute's allowance (the bucket starts full) has been used.
    steady = [s for s in samples if s[1] > TPM * 1.1 and s[2] < jobs]
    token_rate = slope([(t, tokens) for t, tokens, _ in steady]) * 60
    request_rate = slope([(t, ok) for t, _, ok in steady]) * 60
    report(
        f"rate limit, tokens: {TPM} tokens/min and {RPM} requests/min: steady {token_rate:.0f} tokens/min = "
        f"{token_rate / TPM:.1%} of the token limit at {request_rate:.0f} requests/min; "
        f"429s: {served['rate_limited_sent']}"
    )
    assert served["rate_limited_sent"] == 0
    assert token_rate >= 0.97 * TPM
    assert request_rate < 0.8 * RPM, "the token limit binds first"


@pytest.mark.parametrize("backend", ["partition share", "redis"])
def test_three_replicas_share_one_key(bootstrap, tmp_path, replicas, report, request, backend):
    process, url = start_simulator(tmp_path, requests_per_minute=RPM)
    shared = {}
    if backend == "redis":
        shared = {
            "LLM_ROUTER__RATE_LIMITS__BACKEND": request.getfixturevalue("redis_url"),
            "LLM_ROUTER__RATE_LIMITS__REDIS_PREFIX": f"test:{tmp_path.name}:",
        }
    setup = worker_setup(bootstrap, url, **shared)
    jobs = 2400

    async def scenario():
        await make_topics(setup, partitions=12)
        await replicas.start_settled(setup, 3, partitions=12, **KEYS)
        await produce(
            setup, [(f"s{i}".encode(), job_bytes(f"s{i}", f"question {i}", model="gpt-4o")) for i in range(jobs)]
        )
        samples = [(t, served.get("ok", 0)) for t, served in await sample(url, 50)]
        return samples, await asyncio.to_thread(stats, url)

    try:
        samples, served = asyncio.run(scenario())
    finally:
        replicas.stop()  # before the simulator they call
        process.terminate()
        process.wait(timeout=10)
    shares = [
        e.get("rate_limit_share") for r in replicas for e in r.events() if e.get("event") == "partitions assigned"
    ][-3:]
    steady = [s for s in samples if RPM * 1.1 < s[1] < jobs * 0.95]
    rate = slope(steady) * 60
    report(
        f"rate limit, 3 replicas, {backend} (shares {shares}): combined {rate:.0f}/min = "
        f"{rate / RPM:.1%} of {RPM}/min; 429s: {served['rate_limited_sent']}"
    )
    assert served["rate_limited_sent"] == 0
    assert rate >= (0.97 if backend == "redis" else 0.90) * RPM
