"""The worker's adapters over each HTTP client (lean, aiohttp, httpx) against the simulator, side by side in one run.

The simulator runs in a process of its own answering at once, so what differs is the client's
cost: requests per second and the client process's CPU time per request.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

from worker.broker import free_port, wait_for_port
from worker.config import load_config
from worker.messages import ChatMessage
from worker.providers import build_providers
from worker.providers.base import CompletionRequest

REPO = Path(__file__).resolve().parent.parent
CLIENTS = ("lean", "aiohttp", "httpx")


async def _measure(url: str, client: str, requests: int, concurrency: int) -> dict:
    config = load_config(
        env={
            "LLM_ROUTER__PROVIDERS__OPENAI__BASE_URL": f"{url}/v1",
            "LLM_ROUTER__PROVIDERS__OPENAI__HTTP_CLIENT": client,
            "LLM_ROUTER__PROVIDERS__OPENAI__MAX_CONNECTIONS": str(concurrency),
        }
    )
    provider = build_providers(config, env={"OPENAI_API_KEY": "bench"}).clients["openai"]
    request = CompletionRequest("bench", "gpt-4o", [ChatMessage("user", "What is the capital of France?")], 64)
    remaining = requests

    async def loop() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await provider.complete(request)

    try:
        await asyncio.gather(*(loop() for _ in range(min(concurrency, 50))))  # warm the pool
        remaining = requests
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await provider.close()
    return {"requests_per_s": requests / wall, "cpu_us_per_request": cpu / requests * 1e6}


def run(requests: int = 3000, concurrency: int = 64, rounds: int = 3) -> list[dict]:
    """Alternate the clients `rounds` times against one simulator process; the median of each."""
    port = free_port()
    simulator = subprocess.Popen(
        [sys.executable, "-m", "worker", "simulate", "--port", str(port), "--latency-scale", "0"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, 30, simulator)
        samples: dict[str, list[dict]] = {c: [] for c in CLIENTS}
        for _ in range(rounds):
            for client in CLIENTS:
                samples[client].append(asyncio.run(_measure(f"http://127.0.0.1:{port}", client, requests, concurrency)))
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)
    figures = []
    for client in CLIENTS:
        figures.append(
            {
                "bench": "http_client",
                "client": client,
                "requests": requests,
                "concurrency": concurrency,
                "rounds": rounds,
                "requests_per_s": round(statistics.median(s["requests_per_s"] for s in samples[client]), 1),
                "cpu_us_per_request": round(statistics.median(s["cpu_us_per_request"] for s in samples[client]), 1),
            }
        )
    by = {f["client"]: f for f in figures}
    chosen = load_config(env={}).providers["openai"].http_client
    choice: dict = {"bench": "http_client_choice", "chosen": chosen}
    for other in (c for c in CLIENTS if c != chosen):
        choice["requests_per_s_ratio_to_" + other] = round(
            by[chosen]["requests_per_s"] / by[other]["requests_per_s"], 2
        )
        choice["cpu_ratio_to_" + other] = round(by[chosen]["cpu_us_per_request"] / by[other]["cpu_us_per_request"], 2)
    figures.append(choice)
    return figures
