"""The HTTP endpoint's server on loopback (worker/observability/endpoint.py), and the Prometheus exposition
of the telemetry it serves: what a client gets for each path and for requests it does not serve."""

import asyncio
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker.config import ConfigError
from worker.observability.endpoint import Endpoint, request_line
from worker.observability.metrics import Metrics
from worker.observability.telemetry import telemetry_from_env


async def exchange(port: int, request: bytes) -> bytes:
    """The whole answer to `request` sent as it is (the server closes the connection after it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


def serve(readiness, metrics=None):
    """Run `scenario(endpoint)` against an endpoint on a free loopback port."""

    def run(scenario):
        async def main():
            endpoint = Endpoint("127.0.0.1", 0, readiness, metrics)
            await endpoint.start()
            try:
                return await scenario(endpoint)
            finally:
                await endpoint.close()

        return asyncio.run(main())

    return run


async def ready():
    return None


def test_each_path_answers_and_others_are_refused():
    async def scenario(endpoint):
        port = endpoint.port
        return [
            await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            await exchange(port, b"GET /readyz?verbose=1 HTTP/1.1\r\n\r\n"),
            await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n"),
            await exchange(port, b"HEAD /healthz HTTP/1.1\r\n\r\n"),
            await exchange(port, b"GET /nowhere HTTP/1.1\r\n\r\n"),
            await exchange(port, b"POST /readyz HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            await exchange(port, b"hello\r\n\r\n"),
        ]

    healthz, readyz, metrics, head, missing, post, garbage = serve(ready, lambda: b"up 1\n")(scenario)
    assert healthz.startswith(b"HTTP/1.1 200 OK\r\n") and healthz.endswith(b"\r\n\r\nok\n")
    assert b"Connection: close\r\n" in healthz
    assert readyz.endswith(b"\r\n\r\nready\n")
    assert metrics.startswith(b"HTTP/1.1 200 ") and metrics.endswith(b"\r\n\r\nup 1\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"Content-Length: 3\r\nConnection: close\r\n\r\n")
    assert missing.startswith(b"HTTP/1.1 404 ")
    assert post.startswith(b"HTTP/1.1 405 ")
    assert garbage.startswith(b"HTTP/1.1 400 ")


def test_readyz_says_why_not_and_a_check_that_hangs_is_not_ready(monkeypatch):
    async def broker_gone():
        return "the broker (127.0.0.1:9092) does not answer"

    async def hangs():
        await asyncio.sleep(60)

    async def scenario(endpoint):
        return await exchange(endpoint.port, b"GET /readyz HTTP/1.1\r\n\r\n")

    answer = serve(broker_gone)(scenario)
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert answer.endswith(b"\r\n\r\nnot ready: the broker (127.0.0.1:9092) does not answer\n")
    monkeypatch.setattr("worker.observability.endpoint.READINESS_TIMEOUT_S", 0.2)
    assert serve(hangs)(scenario).startswith(b"HTTP/1.1 503 ")


def test_a_port_in_use_is_a_configuration_error():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        endpoint = Endpoint("127.0.0.1", taken.getsockname()[1], ready, None)
        with pytest.raises(ConfigError, match=r"worker\.http_port \d+: cannot listen"):
            asyncio.run(endpoint.start())
    finally:
        taken.close()


def test_request_line():
    assert request_line(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n") == ("GET", "/metrics")
    assert request_line(b"GET /metrics\r\n\r\n") is None
    assert request_line(b"\x16\x03\x01 TLS hello") is None


def test_the_prometheus_exposition_records_without_an_otlp_exporter_and_carries_the_histograms():
    telemetry = telemetry_from_env({}, prometheus=True)
    assert telemetry.metering and telemetry.exposition is not None
    assert telemetry_from_env({}).exposition is None
    metrics = Metrics(telemetry.meter, telemetry.distributions)
    metrics.jobs.add(2, ("ok", "simple_qa", ""))
    metrics.attempts.record(1, ("simple_qa",))
    scraped = {
        sample.name: sample
        for family in text_string_to_metric_families(telemetry.exposition().decode())
        for sample in family.samples
    }
    jobs = scraped["llm_router_jobs_total"]
    assert jobs.value == 2 and jobs.labels["llm_router_outcome"] == "ok"
    assert scraped["llm_router_job_attempts_count"].value == 1
    telemetry.shutdown(timeout_s=1)
