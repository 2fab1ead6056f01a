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

from bench.throughput import _env, _jobs, _raw_loop, echo_providers
from worker.broker import EmbeddedBroker
from worker.cli.runs import produce, running_worker
from worker.config import load_config
from worker.pipeline.kafka import create_topics

SMALL, LARGE = 10_000, 30_000
CONSUMERS = ("worker_echo", "raw_floor")


def _consumer_env(bootstrap: str, jobs_topic: str, consumer: str) -> dict[str, str]:
    """The consumer's configuration (as `throughput` sets it), reading the shared jobs topic."""
    # A longer session: valgrind slows the consumer's heartbeats too.
    overrides = echo_providers() | {
        "LLM_ROUTER__KAFKA__TOPICS__JOBS": jobs_topic,
        "LLM_ROUTER__KAFKA__SESSION_TIMEOUT_MS": "30000",
    }
    return _env(bootstrap, f"instructions-{consumer}", overrides)


async def _consume(consumer: str, jobs: int) -> None:
    """The consumer's process (its configuration in the environment): drain `jobs` jobs, then stop."""
    config = load_config()
    if consumer == "raw_floor":
        await _raw_loop(config.kafka, asyncio.Event(), stop_after=jobs)
        return
    async with running_worker(config) as worker:
        while worker.stats.results_ok < jobs or worker.sink.unacknowledged:
            await asyncio.sleep(0.01)


def _counted(consumer: str, env: dict[str, str], jobs: int) -> int:
    """The instructions the consumer's process executed (valgrind's `I refs`)."""
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "bench.instructions",
        "consume",
        consumer,
        str(jobs),
    ]
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_ROUTER__")} | env
    done = subprocess.run(command, env=child_env, capture_output=True, text=True, timeout=1800, check=False)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"{consumer} under valgrind failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


async def _backlog(envs: dict[str, dict[str, str]], jobs: int) -> None:
    """The consumers' topics, and `jobs` jobs on the jobs topic they share."""
    for env in envs.values():
        await create_topics(load_config(env=env).kafka, 4)
    encoder = msgspec.json.Encoder()
    await produce(
        load_config(env=envs[CONSUMERS[0]]).kafka, [(job.id.encode(), encoder.encode(job)) for job in _jobs("e", jobs)]
    )


def run() -> list[dict]:
    if shutil.which("valgrind") is None:
        raise SystemExit("bench instructions needs valgrind on the PATH (Debian: apt-get install valgrind)")
    broker = None if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else EmbeddedBroker()
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or broker.start()  # type: ignore[union-attr]  # broker is set when the variable is not
        counts: dict[str, dict[int, int]] = {consumer: {} for consumer in CONSUMERS}
        for jobs in (SMALL, LARGE):
            jobs_topic = f"bench-instructions-{uuid.uuid4().hex[:8]}.jobs"
            envs = {consumer: _consumer_env(bootstrap, jobs_topic, consumer) for consumer in CONSUMERS}
            asyncio.run(_backlog(envs, jobs))
            for consumer in CONSUMERS:
                counts[consumer][jobs] = _counted(consumer, envs[consumer], jobs)
    finally:
        if broker:
            broker.stop()
    per_job = {consumer: (c[LARGE] - c[SMALL]) / (LARGE - SMALL) for consumer, c in counts.items()}
    figures = [
        {"bench": f"instructions_{consumer}", "jobs": LARGE - SMALL, "instructions_per_job": round(per_job[consumer])}
        for consumer in CONSUMERS
    ]
    figures[0]["ratio_to_raw_floor"] = round(per_job["raw_floor"] / per_job["worker_echo"], 3)
    return figures


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "consume":
        from worker import runtime

        runtime.run(_consume(sys.argv[2], int(sys.argv[3])), load_config().worker.event_loop)
    else:
        raise SystemExit("usage: python -m bench instructions")
