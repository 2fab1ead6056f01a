"""The worker's adapters over each HTTP client (lean, aiohttp, httpx) against the simulator, side by side in one run.

The simulator runs in a process of its own answering at once, so what differs is the client's
cost: requests per second and the client process's CPU time per request. Then what a call's timeout
costs at 5,000 calls in flight, on the worker's event loop: `asyncio.timeout` against the one timer
the lean client uses (worker/timers.py).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import throughput
from worker import runtime
from worker.broker import free_port, wait_for_port
from worker.config import load_config
from worker.messages import ChatMessage
from worker.providers import build_providers
from worker.providers.base import CompletionRequest
from worker.timers import Deadlines

REPO = Path(__file__).resolve().parent.parent
CLIENTS = ("lean", "aiohttp", "httpx")
TIMEOUT_IN_FLIGHT = 5_000
TIMEOUT_CALLS = 100_000
TIMEOUTS = ("none", "asyncio.timeout", "CallTimeouts")


async def _measure(url: str, client: str, requests: int, concurrency: int) -> dict:
    config = load_config(
        env={
            "LLM_ROUTER__PROVIDERS__OPENAI__BASE_URL": f"{url}/v1",
            "LLM_ROUTER__PROVIDERS__OPENAI__HTTP_CLIENT": client,
            "LLM_ROUTER__PROVIDERS__OPENAI__MAX_CONNECTIONS": str(concurrency),
        }
    )
    provider = build_providers(config, env={"OPENAI_API_KEY": "bench"}).clients["openai"]
    request = CompletionRequest(
        job_id="bench",
        model="gpt-4o",
        messages=[ChatMessage(role="user", content="What is the capital of France?")],
        max_output_tokens=64,
    )
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


async def _timeout_cpu(kind: str) -> float:
    """CPU µs a call: TIMEOUT_IN_FLIGHT tasks each awaiting answers (futures set a loop iteration later)
    in turn, each wait under a 60 s timeout of `kind` ("none": no timeout)."""
    loop = asyncio.get_running_loop()
    timeouts = Deadlines(60)
    waiting: list[asyncio.Future[None]] = []

    async def calls() -> None:
        for _ in range(TIMEOUT_CALLS // TIMEOUT_IN_FLIGHT):
            answer = loop.create_future()
            waiting.append(answer)
            if kind == "asyncio.timeout":
                async with asyncio.timeout(60):
                    await answer
            elif kind == "CallTimeouts":
                timeout = timeouts.start()
                try:
                    await answer
                finally:
                    timeouts.end(timeout)
            else:
                await answer

    async def answer_all(done: asyncio.Future[list[None]]) -> None:
        while not done.done():
            await asyncio.sleep(0)
            answers = waiting[:]
            waiting.clear()
            for answer in answers:
                answer.set_result(None)

    cpu = time.process_time()
    done = asyncio.gather(*(calls() for _ in range(TIMEOUT_IN_FLIGHT)))
    answering = asyncio.ensure_future(answer_all(done))
    await done
    cpu = time.process_time() - cpu
    await answering
    return cpu / TIMEOUT_CALLS * 1e6


def timeout_costs(rounds: int = 3) -> dict:
    """What a call's timeout adds to its CPU, by kind: the median round, less the median without one."""
    samples: dict[str, list[float]] = {kind: [] for kind in TIMEOUTS}
    for _ in range(rounds):
        for kind in TIMEOUTS:
            samples[kind].append(runtime.run(_timeout_cpu(kind), throughput.EVENT_LOOP))
    base = statistics.median(samples["none"])
    return {
        "bench": "http_call_timeout",
        "in_flight": TIMEOUT_IN_FLIGHT,
        "event_loop": runtime.loop_name(throughput.EVENT_LOOP),
        "asyncio_timeout_us_per_call": round(statistics.median(samples["asyncio.timeout"]) - base, 2),
        "call_timeouts_us_per_call": round(statistics.median(samples["CallTimeouts"]) - base, 2),
    }


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
    figures.append(timeout_costs())
    return figures
