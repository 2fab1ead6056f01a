"""Running a worker in-process and feeding it: what the demo, the eval and the benchmarks share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import msgspec

from worker.config import Config, KafkaConfig, Topics
from worker.observability.telemetry import OFF, Telemetry
from worker.pipeline.consume import Worker
from worker.pipeline.kafka import make_producer
from worker.providers import Providers


@asynccontextmanager
async def running_worker(
    config: Config, providers: Providers | None = None, telemetry: Telemetry = OFF
) -> AsyncIterator[Worker]:
    """A worker consuming in the background; on exit it is stopped (drained, committed) and awaited."""
    stop = asyncio.Event()
    worker = Worker(config, providers, telemetry)
    running = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await running


async def produce(kafka: KafkaConfig, messages: Iterable[tuple[bytes | None, bytes]]) -> dict[int, int]:
    """Produce (key, value) pairs to the jobs topic, wait for every acknowledgement; partition -> end offset."""
    producer = make_producer(kafka)
    await producer.start()
    try:
        futures = [await producer.send(kafka.topics.jobs, value, key=key) for key, value in messages]
        ends: dict[int, int] = {}
        for metadata in await asyncio.gather(*futures):
            ends[metadata.partition] = max(ends.get(metadata.partition, 0), metadata.offset + 1)
        return ends
    finally:
        await producer.stop()


def run_kafka(kafka: KafkaConfig, bootstrap: str, name: str, own_topics: bool = True) -> KafkaConfig:
    """Kafka settings for one in-process run (the demo's, an eval policy's): the group `llm-router-NAME`,
    with `own_topics` topics suffixed `.NAME` (a shared broker keeps runs apart), and a short session
    timeout, as the embedded broker holds a join for about half of it."""
    topics = kafka.topics
    if own_topics:
        topics = Topics(**{k: f"{v}.{name}" for k, v in msgspec.structs.asdict(topics).items()})
    return msgspec.structs.replace(
        kafka,
        bootstrap_servers=bootstrap,
        group_id=f"llm-router-{name}",
        topics=topics,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
