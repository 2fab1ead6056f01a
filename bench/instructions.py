"""Instructions a job, counted by valgrind: the worker (echo provider) against the raw floor.

Timings on a shared machine drift by more than most changes to the worker; the number of instructions
a process executes does not. Each consumer (the worker, telemetry off, every provider the in-process
echo; and the raw floor's loop, `throughput._raw_loop`) runs in a process of its own under
`valgrind --tool=cachegrind --cache-sim=no`, drains a backlog of SMALL jobs, and exits once every
one is done (its outputs acknowledged); then again with LARGE jobs. The difference of the two counts
over LARGE - SMALL is the instructions a job, without start-up and shut-down. The jobs are produced
before each consumer starts (by this process, not counted); the broker runs outside valgrind, which
slows the consumer some 50 times, so its fetches come back full: this counts the work a job, not the
waits. The figures' ratio (raw floor over worker) is the ratio of jobs/s the two would reach on one
core with nothing else to do. Needs valgrind (Debian: `apt-get install valgrind`).

`python -m bench instructions` (`make bench-instructions`): about 3-4 minutes.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import uuid

import msgspec

from worker.broker import EmbeddedBroker
from worker.config import Config, load_config
from worker.kafka import create_topics
from worker.messages import Job
from worker.runs import produce, running_worker

SMALL, LARGE = 10_000, 30_000
CONSUMERS = ("worker_echo", "raw_floor")


def _config(bootstrap: str, run: str, consumer: str) -> Config:
    providers = load_config(env={}).providers
    topics = {f"LLM_ROUTER__KAFKA__TOPICS__{t.upper()}": f"instr-{run}-{consumer}.{t}" for t in ("results", "costs", "dlq", "state")}
    return load_config(env={
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LLM_ROUTER__KAFKA__GROUP_ID": f"instr-{run}-{consumer}",
        "LLM_ROUTER__KAFKA__SESSION_TIMEOUT_MS": "30000",  # valgrind slows the consumer's heartbeats too
        "LLM_ROUTER__KAFKA__TOPICS__JOBS": f"instr-{run}.jobs",
        **topics,
        **{f"LLM_ROUTER__PROVIDERS__{name.upper()}__KIND": "echo" for name in providers},
    })


async def _consume(consumer: str, config: Config, jobs: int) -> None:
    """The consumer's process: drain `jobs` jobs, then stop."""
    if consumer == "raw_floor":
        from bench.throughput import _raw_loop

        await _raw_loop(config.kafka, asyncio.Event(), stop_after=jobs)
        return
    async with running_worker(config) as worker:
        while worker.stats.results_ok < jobs or worker.outbox.unacknowledged:
            await asyncio.sleep(0.01)


def _counted(consumer: str, bootstrap: str, run: str, jobs: int) -> int:
    """The instructions the consumer's process executed (valgrind's `I refs`)."""
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null", sys.executable, "-m", "bench.instructions", "consume", consumer, bootstrap, run, str(jobs)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"{consumer} under valgrind failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


async def _backlog(bootstrap: str, run: str, jobs: int) -> None:
    for consumer in CONSUMERS:
        await create_topics(_config(bootstrap, run, consumer).kafka, 4)
    encoder = msgspec.json.Encoder()
    batch = [(f"e{i}".encode(), encoder.encode(Job(id=f"e{i}", prompt=f"What is the capital of France? ({i})"))) for i in range(jobs)]
    await produce(_config(bootstrap, run, CONSUMERS[0]).kafka, batch)


def run() -> list[dict]:
    if shutil.which("valgrind") is None:
        raise SystemExit("bench instructions needs valgrind on the PATH (Debian: apt-get install valgrind)")
    broker = None if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else EmbeddedBroker()
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or broker.start()  # type: ignore[union-attr]
        counts: dict[str, dict[int, int]] = {consumer: {} for consumer in CONSUMERS}
        for jobs in (SMALL, LARGE):
            run_id = uuid.uuid4().hex[:8]
            asyncio.run(_backlog(bootstrap, run_id, jobs))
            for consumer in CONSUMERS:
                counts[consumer][jobs] = _counted(consumer, bootstrap, run_id, jobs)
    finally:
        if broker:
            broker.stop()
    per_job = {consumer: (c[LARGE] - c[SMALL]) / (LARGE - SMALL) for consumer, c in counts.items()}
    figures = [{"bench": f"instructions_{consumer}", "jobs": LARGE - SMALL, "instructions_per_job": round(per_job[consumer])} for consumer in CONSUMERS]
    figures[0]["ratio_to_raw_floor"] = round(per_job["raw_floor"] / per_job["worker_echo"], 3)
    return figures


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "consume":
        _, _, consumer, bootstrap, run_id, jobs = sys.argv
        from worker import event_loop

        config = _config(bootstrap, run_id, consumer)
        event_loop.run(_consume(consumer, config, int(jobs)), config.worker.event_loop)
    else:
        raise SystemExit("usage: python -m bench instructions")
