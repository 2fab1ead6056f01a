"""A real simulator process on a free loopback port (`llm-router simulate`), answering at once."""

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.integration.helpers import REPO
from tests.providers.capture import Capture
from worker.broker import free_port, wait_for_port


class SimulatorProcess:
    def __init__(self, url: str) -> None:
        self.url = url

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/_sim/stats").json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_sim/reset").raise_for_status()

    def patch(self, model: str, **fields) -> dict:
        response = httpx.patch(f"{self.url}/_sim/models/{model}", json=fields)
        response.raise_for_status()
        return response.json()


@contextmanager
def simulator_process(log: Path, latency_scale: float) -> Iterator[SimulatorProcess]:
    """`llm-router simulate` on a free port with every latency times `latency_scale`, until the block ends."""
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "simulate", "--port", str(port), "--latency-scale", str(latency_scale)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port("127.0.0.1", port, 30, process)
    except Exception as exc:
        process.kill()
        pytest.fail(f"the simulator did not start: {exc}: {log.read_text()[-2000:]}", pytrace=False)
    yield SimulatorProcess(f"http://127.0.0.1:{port}")
    process.terminate()
    process.wait(timeout=10)


def restoring(simulator: SimulatorProcess) -> Iterator[SimulatorProcess]:
    """The simulator with its counts zeroed, every model's behaviour restored after the test."""
    simulator.reset()
    before = httpx.get(f"{simulator.url}/_sim/models").json()
    yield simulator
    for model, behaviour in before.items():
        httpx.put(f"{simulator.url}/_sim/models/{model}", json=behaviour).raise_for_status()


@pytest.fixture(scope="session")
def simulator(tmp_path_factory):
    with simulator_process(tmp_path_factory.mktemp("sim") / "simulator.log", latency_scale=0) as process:
        yield process


@pytest.fixture
def sim(simulator):
    """The simulator answering at once, with its counts zeroed and every model's behaviour restored after the
    test."""
    yield from restoring(simulator)


@pytest.fixture(scope="session")
def timed_simulator(tmp_path_factory):
    with simulator_process(tmp_path_factory.mktemp("sim") / "timed-simulator.log", latency_scale=1) as process:
        yield process


@pytest.fixture
def timed_sim(timed_simulator):
    """The simulator at latency scale 1 (a batch runs for its model's batch_latency_s), counts zeroed and every
    model's behaviour restored after the test."""
    yield from restoring(timed_simulator)


@pytest.fixture
def capture():
    """A capturing server on loopback (tests/providers/capture.py)."""
    server = Capture()
    yield server
    server.close()
