"""Evidence shared between replicas: what each one learned, sent at every state publish, added by the others.

Feedback on a job is taken by the one replica that owns its feedback partition, and a verified outcome
by the one that ran the job; every replica plans with the learned rates, so each sends what it learned
(`QualityModel.take_evidence`) as one `EvidenceBatch` to the evidence topic, which every replica tails
(outside any group, from the topic's end when it starts: the state topic's snapshots, restored before,
hold what came earlier) and adds the other replicas' batches to its own rates.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

import msgspec
from aiokafka import AIOKafkaProducer, TopicPartition

from worker.config import KafkaConfig
from worker.observability.logs import get_logger
from worker.pipeline.kafka import make_consumer, topic_partitions
from worker.routing.learning import EvidenceBatch, QualityModel

log = get_logger("evidence")
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(EvidenceBatch)


def replica_id() -> str:
    """A name for this replica that no other has: host, process and a random part (replicas in one process)."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


async def publish(producer: AIOKafkaProducer, topic: str, replica: str, quality: QualityModel) -> int:
    """Send what `quality` learned since the last call as one batch keyed by `replica`; how many rates it moves."""
    evidence = quality.take_evidence()
    if evidence:
        batch = EvidenceBatch(replica=replica, evidence=evidence, sent_at=time.time())
        await (await producer.send(topic, _encoder.encode(batch), key=replica.encode()))
    return len(evidence)


class EvidenceTail:
    """The evidence topic, read from its end at `start`: the other replicas' batches added to `quality`."""

    def __init__(self, kafka: KafkaConfig, replica: str, quality: QualityModel) -> None:
        self._kafka = kafka
        self._topic = kafka.topics.evidence
        self._replica = replica
        self._quality = quality
        self._consumer = make_consumer(kafka, group_id=None)
        self.applied = 0  # batches of other replicas added

    async def start(self) -> bool:
        """Connect at the topic's end; False when the topic is missing (the worker warns of missing topics)."""
        found = await topic_partitions(self._kafka, [self._topic])
        if self._topic not in found:
            return False
        partitions = [TopicPartition(self._topic, p) for p in found[self._topic]]
        await self._consumer.start()
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        return True

    async def run(self) -> None:
        """Add the batches of other replicas as they come, until cancelled."""
        while True:
            batch = await self._consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    self._apply(record.value, record.offset)

    def _apply(self, value: bytes | None, offset: int) -> None:
        try:
            batch = _decoder.decode(value or b"")
        except msgspec.DecodeError as exc:
            log.warning("unreadable evidence skipped", extra={"offset": offset, "error": str(exc)})
            return
        if batch.replica != self._replica:
            self._quality.apply_evidence(batch.evidence)
            self.applied += 1

    async def close(self) -> None:
        """Disconnect."""
        await self._consumer.stop()
