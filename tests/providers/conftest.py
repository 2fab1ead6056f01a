"""A real simulator process on a free loopback port (`llm-router simulate`), answering at once."""

import subprocess
import sys

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


@pytest.fixture(scope="session")
def simulator(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("sim") / "simulator.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker", "simulate", "--port", str(port), "--latency-scale", "0"],
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


@pytest.fixture
def sim(simulator):
    """The simulator with its counts zeroed and every model's behaviour restored after the test."""
    simulator.reset()
    before = httpx.get(f"{simulator.url}/_sim/models").json()
    yield simulator
    for model, behaviour in before.items():
        httpx.put(f"{simulator.url}/_sim/models/{model}", json=behaviour).raise_for_status()


@pytest.fixture
def capture():
    """A capturing server on loopback (tests/providers/capture.py)."""
    server = Capture()
    yield server
    server.close()
