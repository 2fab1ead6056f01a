"""Helpers of the reliability suite (the integration helpers cover topics, producing and collecting)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable

import pytest
from aiokafka import TopicPartition

from tests.integration.helpers import REPO, Setup, WorkerProcess
from worker.pipeline.kafka import make_consumer

CRASH_EVENTS = {"job task crashed; its offset stays uncommitted", "job failed inside the worker"}
CRASH_TEXT = ("Traceback (most recent call last)", "Task exception was never retrieved", "Fatal error")


def kafka_sh(*args: str, timeout_s: float = 180) -> str:
    """Run scripts/kafka.sh (start or stop the Apache Kafka broker of `make test-kafka`); its stdout."""
    done = subprocess.run(
        [str(REPO / "scripts" / "kafka.sh"), *args], capture_output=True, text=True, timeout=timeout_s
    )
    if done.returncode != 0:
        raise AssertionError(f"scripts/kafka.sh {' '.join(args)} failed ({done.returncode}): {done.stderr[-3000:]}")
    return done.stdout


def apache_kafka_dir() -> str:
    """The data directory of the Apache Kafka broker under test, which a test may stop and start again."""
    kafka_dir = os.environ.get("LLM_ROUTER_TEST_KAFKA_DIR")
    if not kafka_dir:
        pytest.fail(
            "KAFKA_BOOTSTRAP_SERVERS is set but LLM_ROUTER_TEST_KAFKA_DIR is not: this test restarts the broker, "
            "so it needs the broker's directory. Run it on a broker it may restart: "
            "scripts/test-on-kafka.sh .venv/bin/python -m pytest -m reliability "
            "(or unset KAFKA_BOOTSTRAP_SERVERS for Tansu)",
            pytrace=False,
        )
    return kafka_dir


def crashes(worker: WorkerProcess) -> list[dict]:
    """What in a worker's log says something crashed: a job task, a job inside the runner, an uncaught traceback."""
    found = []
    for event in worker.events():
        if event.get("event") in CRASH_EVENTS or (
            event.get("event") == "(not json)" and any(t in event.get("text", "") for t in CRASH_TEXT)
        ):
            found.append(event)
    return found


def starts(worker: WorkerProcess) -> int:
    """How many times the worker in this log started (a restart inside the process would show twice)."""
    return sum(1 for e in worker.events() if e.get("event") == "worker starting")


async def poll_committed(
    setup: Setup,
    partitions: list[int],
    done: Callable[[dict[int, int | None]], bool],
    timeout_s: float,
    interval_s: float = 0.1,
) -> tuple[dict[int, int | None], float | None]:
    """Poll the group's committed offsets of `partitions` of the jobs topic until `done(positions)`.

    Returns the last positions seen and the loop time `done` first held (None if it did not in time).
    One consumer that joins no group (it only reads the group's offsets) serves every poll."""
    consumer = make_consumer(setup.config.kafka)
    await consumer.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    tps = [TopicPartition(setup.topics.jobs, p) for p in partitions]
    try:
        while True:
            positions = {tp.partition: await consumer.committed(tp) for tp in tps}
            if done(positions):
                return positions, loop.time()
            if loop.time() >= deadline:
                return positions, None
            await asyncio.sleep(interval_s)
    finally:
        await consumer.stop()


async def wait_committed(
    setup: Setup, ends: dict[int, int], timeout_s: float, interval_s: float = 0.1
) -> tuple[dict[int, int | None], float | None]:
    """Until the committed offsets reach `ends` (partition -> end offset): the positions, and when they did."""
    return await poll_committed(
        setup,
        list(ends),
        lambda positions: all((positions[p] or 0) >= end for p, end in ends.items()),
        timeout_s,
        interval_s,
    )


async def wait_progress(
    setup: Setup, partitions: list[int], at_least: int, timeout_s: float, interval_s: float = 0.1
) -> int:
    """Wait until the group has committed at least `at_least` jobs over `partitions` of the jobs topic
    (the worker's progress, behind it by at most a commit interval); returns the count committed."""
    positions, reached = await poll_committed(
        setup, partitions, lambda positions: sum(v or 0 for v in positions.values()) >= at_least, timeout_s, interval_s
    )
    done = sum(v or 0 for v in positions.values())
    if reached is None:
        raise AssertionError(f"the worker committed {done} jobs in {timeout_s} s, not the {at_least} awaited")
    return done


def all_or_stalled(ids: set[str], stall_s: float):
    """An `until` for collect: every id has a result, or results stopped coming for `stall_s` seconds
    (a worker stuck for good: the test fails on what is missing without waiting out its timeout)."""
    seen = {"count": -1, "since": time.monotonic()}

    def until(outputs) -> bool:
        have = outputs.result_ids
        if have >= ids:
            return True
        if len(outputs.results) != seen["count"]:
            seen["count"], seen["since"] = len(outputs.results), time.monotonic()
        return time.monotonic() - seen["since"] > stall_s

    return until
