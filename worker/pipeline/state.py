"""The learned success rates on Kafka: published to a compacted topic, read back at start."""

from __future__ import annotations

import asyncio
import time

import msgspec
from aiokafka import AIOKafkaProducer

from worker.config import KafkaConfig
from worker.observability.logs import get_logger
from worker.pipeline.kafka import make_consumer
from worker.routing.learning import RateState

log = get_logger("state")
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RateState)


async def publish(producer: AIOKafkaProducer, topic: str, states: list[RateState]) -> None:
    """One message per changed (task, model), keyed `task|model`, so compaction keeps the latest."""
    futures = [await producer.send(topic, _encoder.encode(s), key=f"{s.task}|{s.model}".encode()) for s in states]
    await asyncio.gather(*futures)


async def load(config: KafkaConfig, idle_s: float = 0.5, limit_s: float = 10.0) -> list[RateState]:
    """Every state on the topic, read from its beginning until it has been quiet for `idle_s`."""
    consumer = make_consumer(config, config.topics.state, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    states: list[RateState] = []
    deadline = time.monotonic() + limit_s
    try:
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < idle_s:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000 / 2))
            for records in batch.values():
                for record in records:
                    try:
                        states.append(_decoder.decode(record.value))
                    except msgspec.DecodeError as exc:
                        log.warning(
                            "unreadable learned state skipped", extra={"offset": record.offset, "error": str(exc)}
                        )
                quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return states
