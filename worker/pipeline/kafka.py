"""Kafka clients built from the configuration, and topic administration."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from worker.config import KafkaConfig
from worker.observability.logs import muted

_CLIENT_LOGGER = "aiokafka"


class DeliveryError(Exception):
    """The broker cannot give the delivery the configuration asks for (exactly-once without transactions)."""


class BrokerUnavailable(Exception):
    """No broker answered within the connect timeout; the message names the bootstrap servers."""


async def wait_for_broker(config: KafkaConfig, timeout_s: float | None = None) -> None:
    """Return once a broker of `config.bootstrap_servers` answers a metadata request, trying again every
    half second; BrokerUnavailable after `timeout_s` (default `kafka.connect_timeout_s`)."""
    timeout_s = config.connect_timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        left = deadline - time.monotonic()
        client = AIOKafkaClient(**_common(config), request_timeout_ms=max(1000, int(min(left, 10) * 1000)))
        try:
            # The client's own errors while it tries are expected: BrokerUnavailable says it all, once.
            with muted(_CLIENT_LOGGER):
                async with asyncio.timeout(max(0.1, left)):
                    await client.bootstrap()
            return
        except (KafkaConnectionError, KafkaError, OSError, TimeoutError) as exc:
            last = exc
        finally:
            await client.close()
        if time.monotonic() + 0.5 >= deadline:
            # A refused connection says nothing the first part does not; anything else (TLS, auth) is the clue.
            detail = "" if isinstance(last, KafkaConnectionError) or not str(last) else f": {last}"
            raise BrokerUnavailable(
                f"no Kafka broker answered at {config.bootstrap_servers} within {timeout_s:g} s{detail}"
            )
        await asyncio.sleep(0.5)


def _common(config: KafkaConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap_servers,
        "client_id": config.client_id,
        "security_protocol": config.security_protocol,
    }
    if config.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = config.sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = os.environ.get(config.sasl_username_env, "")
        options["sasl_plain_password"] = os.environ.get(config.sasl_password_env, "")
    if config.security_protocol.endswith("SSL"):
        from aiokafka.helpers import create_ssl_context

        options["ssl_context"] = create_ssl_context()
    return options


async def topic_partitions(config: KafkaConfig, topics: Iterable[str]) -> dict[str, list[int]]:
    """The partition ids of each of `topics` that exists, from one metadata request for all topics. (A
    consumer's `partitions_for_topic` knows only the topics it subscribed to or was assigned on Apache Kafka.)"""
    client = AIOKafkaClient(**_common(config))
    try:
        await client.bootstrap()
        cluster = await client.fetch_all_metadata()
    finally:
        await client.close()
    found = {topic: cluster.partitions_for_topic(topic) for topic in topics}
    return {topic: sorted(ids) for topic, ids in found.items() if ids}


def make_producer(config: KafkaConfig, **overrides: Any) -> AIOKafkaProducer:
    """A producer whose sends are acknowledged by every in-sync replica (acks=all).

    Idempotence stays off: the embedded broker has no idempotent producer, and the worker's
    delivery is at-least-once anyway (a result carries its job id).
    """
    options = _common(config) | {
        "acks": "all",
        "enable_idempotence": False,
        "linger_ms": config.linger_ms,
        "max_request_size": config.max_request_bytes,
        # Larger batches fill less often (a full batch blocks every sender to its partition); under
        # Apache Kafka's default message.max.bytes (1,048,588).
        "max_batch_size": 1_000_000,
    }
    return AIOKafkaProducer(**(options | overrides))


def transactional_id(config: KafkaConfig) -> str:
    """This process's transactional id: the configured one, else unique to the group, host and process."""
    return config.transactional_id or f"{config.group_id}-{socket.gethostname()}-{os.getpid()}"


def make_consumer(config: KafkaConfig, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    """A group consumer that never commits by itself."""
    options = _common(config) | {
        "group_id": config.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": config.session_timeout_ms,
        "heartbeat_interval_ms": config.heartbeat_interval_ms,
        "max_poll_interval_ms": config.max_poll_interval_ms,
        "fetch_max_bytes": max(52428800, config.max_request_bytes),
        "max_partition_fetch_bytes": max(1048576, config.max_request_bytes),
    }
    return AIOKafkaConsumer(*topics, **(options | overrides))


# What the evidence topic keeps: replicas tail it from its end, and a batch is old news a publish interval later.
EVIDENCE_RETENTION_MS = 3_600_000


async def create_topics(
    config: KafkaConfig, partitions: int, replication_factor: int = 1, dedupe_window_s: int = 86400
) -> dict[str, str]:
    """Create the jobs, results, costs, dead-letter, learned-state, finished, feedback, routes and evidence
    topics; each one's state: "created" or "exists". The finished topic keeps its records `dedupe_window_s`
    (worker.dedupe_window_s), the routes topic `kafka.routes_retention_s`."""
    admin = AIOKafkaAdminClient(**_common(config))
    await admin.start()
    try:
        topics = config.topics
        names = [
            topics.jobs,
            topics.results,
            topics.costs,
            topics.dlq,
            topics.state,
            topics.finished,
            topics.feedback,
            topics.routes,
            topics.evidence,
            topics.batches,
        ]
        # The learned-rates topic keeps the latest value per key: compacted. The finished topic (the ids
        # finished in each jobs partition, every record keyed anew) drops what is older than the dedupe
        # window; it has as many partitions as the jobs topic, one for each jobs partition's records. The
        # routes topic keeps a job's latest route (compacted: its feedback mark replaces it) for the
        # routes retention; with the feedback topic, it has the jobs topic's partitions (co-partitioned:
        # both keyed by job id). Every replica reads all of the evidence topic: one partition. The batches topic
        # keeps each parked job's and open batch's latest record until its tombstone: compacted.
        configs = {
            topics.state: {"cleanup.policy": "compact"},
            topics.finished: {"cleanup.policy": "delete"}
            | ({"retention.ms": str(dedupe_window_s * 1000)} if dedupe_window_s > 0 else {}),
            topics.routes: {"cleanup.policy": "compact,delete", "retention.ms": str(config.routes_retention_s * 1000)},
            topics.evidence: {"cleanup.policy": "delete", "retention.ms": str(EVIDENCE_RETENTION_MS)},
            topics.batches: {"cleanup.policy": "compact"},
        }
        counts = {topics.evidence: 1}
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            try:
                response = await admin.create_topics(
                    [
                        NewTopic(
                            name,
                            counts.get(name, partitions),
                            replication_factor,
                            topic_configs=configs.get(name, {}),
                        )
                        for name in missing
                    ]
                )
                _raise_topic_errors(response)
            except TopicAlreadyExistsError:
                pass
        return {name: ("created" if name in missing else "exists") for name in names}
    finally:
        await admin.close()


def _raise_topic_errors(response: Any) -> None:
    for topic_error in getattr(response, "topic_errors", ()) or ():
        name, code = topic_error[0], topic_error[1]
        message = topic_error[2] if len(topic_error) > 2 else ""
        if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS
            raise RuntimeError(f"creating topic {name} failed: error code {code} {message or ''}".rstrip())
