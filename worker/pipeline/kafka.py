"""Kafka clients built from the configuration, and topic administration."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnsupportedSaslMechanismError,
)

from worker.config import ConfigError, KafkaConfig
from worker.observability.logs import muted

_CLIENT_LOGGER = "aiokafka"


class DeliveryError(Exception):
    """The broker cannot give the delivery the configuration asks for (exactly-once without transactions)."""


class BrokerUnavailable(Exception):
    """No broker answered within the connect timeout; the message names the bootstrap servers."""


class BrokerRefused(Exception):
    """The broker turned the credentials down, or its certificate failed verification: trying again cannot
    help, the configuration must change. The message names the broker and the reason."""


async def wait_for_broker(config: KafkaConfig, timeout_s: float | None = None) -> None:
    """Return once a broker of `config.bootstrap_servers` answers a metadata request, trying again every
    half second; BrokerUnavailable after `timeout_s` (default `kafka.connect_timeout_s`), BrokerRefused at
    once when a broker refuses the credentials or its certificate fails verification."""
    timeout_s = config.connect_timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    security = _security(config)  # one TLS context for every attempt: loading the CAs takes tens of ms
    last: Exception | None = None
    while True:
        left = deadline - time.monotonic()
        client = AIOKafkaClient(**_common(config, security), request_timeout_ms=max(1000, int(min(left, 10) * 1000)))
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
        if config.security_protocol != "PLAINTEXT":
            await _raise_refusal(config, security, client.hosts, deadline)
        if time.monotonic() + 0.5 >= deadline:
            # A refused connection says nothing the first part does not; anything else (TLS, auth) is the clue.
            detail = "" if isinstance(last, KafkaConnectionError) or not str(last) else f": {last}"
            raise BrokerUnavailable(
                f"no Kafka broker answered at {config.bootstrap_servers} within {timeout_s:g} s{detail}"
            )
        await asyncio.sleep(0.5)


async def _raise_refusal(
    config: KafkaConfig, security: dict[str, Any], hosts: list[tuple[str, int, Any]], deadline: float
) -> None:
    """BrokerRefused when a bootstrap host turns this client away for good. The client's bootstrap keeps
    only "unable to bootstrap", so one connection to each host (TLS handshake, SASL authentication) tells why."""
    for host, port, _ in hosts:
        try:
            with muted(_CLIENT_LOGGER):
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    connection = await create_conn(host, port, client_id=config.client_id, **security)
            connection.close()
        except (KafkaError, OSError, TimeoutError) as exc:
            reason = refusal(exc, config)
            if reason:
                raise BrokerRefused(f"the Kafka broker at {host}:{port}: {reason}") from None


def refusal(exc: BaseException, config: KafkaConfig) -> str | None:
    """Why `exc`, raised while connecting, means the broker will never take this client as configured (the
    reason, naming the settings to check); None for a failure that may pass (a broker not up yet)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        trusted = f"kafka.ssl_cafile {config.ssl_cafile}" if config.ssl_cafile else "no kafka.ssl_cafile"
        return f"certificate verify failed: {exc.verify_message} (trusted: the system's CAs and {trusted})"
    if isinstance(exc, (SaslAuthenticationFailed, AuthenticationFailedError)):
        user = os.environ.get(config.sasl_username_env, "")
        return (
            f"authentication failed for user {user!r} with {config.sasl_mechanism or 'PLAIN'} (user and password "
            f"from ${config.sasl_username_env} and ${config.sasl_password_env}): {exc}"
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return f"SASL mechanism not enabled on this listener (kafka.sasl_mechanism): {exc}"
    return None


def _common(config: KafkaConfig, security: dict[str, Any] | None = None) -> dict[str, Any]:
    """The options every client takes: where the brokers are, who this client is, and `security` (default: the
    configuration's, see `_security`)."""
    return {
        "bootstrap_servers": config.bootstrap_servers,
        "client_id": config.client_id,
    } | (_security(config) if security is None else security)


def _security(config: KafkaConfig) -> dict[str, Any]:
    """The security protocol and what it needs: the SASL mechanism and credentials, the TLS context."""
    options: dict[str, Any] = {"security_protocol": config.security_protocol}
    if config.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = config.sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = os.environ.get(config.sasl_username_env, "")
        options["sasl_plain_password"] = os.environ.get(config.sasl_password_env, "")
    if config.security_protocol.endswith("SSL"):
        options["ssl_context"] = tls_context(config)
    return options


def tls_context(config: KafkaConfig) -> ssl.SSLContext:
    """The TLS client context of the Kafka clients: the broker's certificate verified against the system's CAs
    and `kafka.ssl_cafile`'s, its host name checked unless `kafka.ssl_check_hostname` is false, and the client
    certificate of `kafka.ssl_certfile` when set. ConfigError naming the key whose file cannot be loaded."""
    context = ssl.create_default_context()
    context.check_hostname = config.ssl_check_hostname
    if config.ssl_cafile:
        where = {"capath": config.ssl_cafile} if os.path.isdir(config.ssl_cafile) else {"cafile": config.ssl_cafile}
        try:
            context.load_verify_locations(**where)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"kafka.ssl_cafile {config.ssl_cafile!r} cannot be loaded: {exc}") from None
    if config.ssl_keyfile and not config.ssl_certfile:
        raise ConfigError("kafka.ssl_keyfile is set but kafka.ssl_certfile is not: the key needs its certificate")
    if config.ssl_certfile:
        # A password, even empty, keeps OpenSSL from prompting on the terminal for an encrypted key.
        password = os.environ.get(config.ssl_key_password_env, "")
        try:
            context.load_cert_chain(config.ssl_certfile, config.ssl_keyfile or None, password=password)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"kafka.ssl_certfile {config.ssl_certfile!r}"
                f"{f' with kafka.ssl_keyfile {config.ssl_keyfile!r}' if config.ssl_keyfile else ''} cannot be "
                f"loaded (an encrypted key takes its password from ${config.ssl_key_password_env}): {exc}"
            ) from None
    return context


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
