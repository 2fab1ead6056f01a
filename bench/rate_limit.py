"""One replica against a provider limit of 3,000 requests a minute, calls of 0.5 s, for 40 s.

The simulator (its own process) enforces the same limit and counts what it served; the worker
(with Kafka: the embedded broker, or KAFKA_BOOTSTRAP_SERVERS) must use the allowance without a 429.
The steady part starts once the first minute's allowance (the buckets start full) has been served.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import msgspec

from worker.broker import EmbeddedBroker, free_port, wait_for_port
from worker.cli.runs import produce, running_worker
from worker.config import Topics, load_config
from worker.messages import Job
from worker.pipeline.kafka import create_topics
from worker.providers import build_providers
from worker.simulator.endpoints import SIMULATOR_KEY, on_simulator
from worker.simulator.settings import dump_simulator_config, load_simulator_config

REPO = Path(__file__).resolve().parent.parent
LIMIT = 3000
SECONDS = 40


def _slope(points: list[tuple[float, int]]) -> float:
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_c = sum(c for _, c in points) / n
    return sum((t - mean_t) * (c - mean_c) for t, c in points) / sum((t - mean_t) ** 2 for t, _ in points)


async def _run(bootstrap: str, url: str) -> tuple[list[tuple[float, int]], dict]:
    run_id = uuid.uuid4().hex[:8]
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LLM_ROUTER__KAFKA__GROUP_ID": f"bench-{run_id}",
        "LLM_ROUTER__KAFKA__SESSION_TIMEOUT_MS": "6000",
        "LLM_ROUTER__MODELS__GPT_4O__REQUESTS_PER_MINUTE": str(LIMIT),
        "LLM_ROUTER__WORKER__SHUTDOWN_GRACE_S": "1",
        **{f"LLM_ROUTER__KAFKA__TOPICS__{t.upper()}": f"bench-{run_id}.{t}" for t in Topics.__struct_fields__},
    }
    config = load_config(env=env)
    providers, keys = {}, {}
    for name, provider in config.providers.items():
        providers[name], key_env = on_simulator(name, provider, url)
        keys[key_env] = SIMULATOR_KEY
    config = msgspec.structs.replace(config, providers=providers)
    await create_topics(config.kafka, partitions=4)
    encoder = msgspec.json.Encoder()
    jobs = LIMIT + LIMIT // 60 * (SECONDS + 10)
    samples: list[tuple[float, int]] = []
    async with running_worker(config, build_providers(config, env=keys)), httpx.AsyncClient() as client:
        await produce(
            config.kafka,
            [(None, encoder.encode(Job(id=f"b{i}", prompt=f"question {i}", model="gpt-4o"))) for i in range(jobs)],
        )
        end = time.monotonic() + SECONDS + 8
        while time.monotonic() < end:
            await asyncio.sleep(0.5)
            stats = (await client.get(f"{url}/_sim/stats")).json()
            samples.append((time.monotonic(), stats["models"].get("gpt-4o", {}).get("ok", 0)))
        stats = (await client.get(f"{url}/_sim/stats")).json()
    return samples, stats


def run() -> list[dict]:
    config = load_simulator_config()
    gpt4o = msgspec.structs.replace(
        config.models["gpt-4o"], latency_ms=500, latency_jitter=0.0, output_tokens=100, requests_per_minute=LIMIT
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "simulator.toml"
        path.write_text(
            dump_simulator_config(msgspec.structs.replace(config, models=config.models | {"gpt-4o": gpt4o}))
        )
        port = free_port()
        simulator = subprocess.Popen(
            [sys.executable, "-m", "worker", "simulate", "--port", str(port), "--config", str(path)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        broker = None if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else EmbeddedBroker()
        try:
            wait_for_port("127.0.0.1", port, 30, simulator)
            bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or broker.start()  # type: ignore[union-attr]  # broker is set when the variable is not
            samples, stats = asyncio.run(_run(bootstrap, f"http://127.0.0.1:{port}"))
        finally:
            simulator.terminate()
            simulator.wait(timeout=10)
            if broker:
                broker.stop()
    steady = [s for s in samples if s[1] > LIMIT * 1.05]
    rate = _slope(steady) * 60 if len(steady) > 2 else 0.0
    return [
        {
            "bench": "rate_limit_one_replica",
            "limit_per_min": LIMIT,
            "call_s": 0.5,
            "steady_s": round(steady[-1][0] - steady[0][0], 1) if steady else 0,
            "served_per_min": round(rate, 1),
            "ratio_to_limit": round(rate / LIMIT, 4),
            "rate_limited_429s": stats["rate_limited_sent"],
        }
    ]
