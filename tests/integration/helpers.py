"""Helpers for integration tests: unique topics per test, producing, collecting, worker replicas in processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from worker.broker import BrokerError, EmbeddedBroker, free_port
from worker.cli import runs
from worker.config import Config, Topics, load_config
from worker.messages import CostEvent, DeadLetter, Job, Result
from worker.pipeline.kafka import create_topics, make_consumer

REPO = Path(__file__).resolve().parents[2]
PROVIDERS = ("OPENAI", "ANTHROPIC", "GEMINI", "LLAMA")
# The in-process echo provider behind every configured provider (tests of the HTTP adapters set their own).
ECHO_PROVIDERS = {f"LLM_ROUTER__PROVIDERS__{p}__KIND": "echo" for p in PROVIDERS}


class Setup:
    """Topics and a group of their own for one test, as env overrides and a loaded Config."""

    def __init__(self, bootstrap: str, **overrides: object) -> None:
        self.run_id = uuid.uuid4().hex[:10]
        base = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "LLM_ROUTER__KAFKA__GROUP_ID": f"test-{self.run_id}",
            "LLM_ROUTER__KAFKA__SESSION_TIMEOUT_MS": "6000",
            "LLM_ROUTER__KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
            **{f"LLM_ROUTER__KAFKA__TOPICS__{t.upper()}": f"t-{self.run_id}.llm.{t}" for t in Topics.__struct_fields__},
            **ECHO_PROVIDERS,
            # One model answers each unverifiable job (echo's answers never agree: an agreement plan would
            # escalate every job); agreement plans have tests of their own.
            "LLM_ROUTER__ROUTING__DEFAULT_ACCURACY_FLOOR": "0.85",
        }
        self.env = base | {k: str(v) for k, v in overrides.items()}
        self.config: Config = load_config(env=self.env)

    @property
    def topics(self):
        return self.config.kafka.topics

    def process_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_ROUTER__")}
        return env | self.env | {"PYTHONUNBUFFERED": "1"}


def simulator_providers(url: str) -> dict[str, str]:
    """Env overrides that put the four configured providers, each with its own wire API, on the simulator at `url`."""
    kinds = {"OPENAI": ("openai", "/v1"), "ANTHROPIC": ("anthropic", ""), "GEMINI": ("gemini", "/v1beta")}
    overrides = {}
    for provider in PROVIDERS:
        kind, path = kinds.get(provider, ("openai_compatible", "/v1"))
        overrides[f"LLM_ROUTER__PROVIDERS__{provider}__KIND"] = kind
        overrides[f"LLM_ROUTER__PROVIDERS__{provider}__BASE_URL"] = f"{url}{path}"
    return overrides


def provider_latency(ms: float) -> dict[str, str]:
    """Env overrides that make every echo provider call take `ms` milliseconds."""
    return {f"LLM_ROUTER__PROVIDERS__{p}__LATENCY_MS": str(ms) for p in PROVIDERS}


async def make_topics(setup: Setup, partitions: int = 4) -> None:
    await create_topics(setup.config.kafka, partitions)


_TRANSACTIONS: dict[str, bool] = {}  # by bootstrap: asked once a session (Tansu leaves the question unanswered)


async def broker_has_transactions(bootstrap: str) -> bool:
    """Whether the broker takes a transactional producer (Apache Kafka does; the embedded Tansu does not)."""
    if bootstrap not in _TRANSACTIONS:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, transactional_id="llm-router-probe", enable_idempotence=True
        )
        try:
            await asyncio.wait_for(producer.start(), 30)
            _TRANSACTIONS[bootstrap] = True
        except (TimeoutError, KafkaError):
            _TRANSACTIONS[bootstrap] = False
        finally:
            await producer.stop()
    return _TRANSACTIONS[bootstrap]


def job_bytes(job_id: str, prompt: str = "What is the capital of France?", **fields: object) -> bytes:
    return msgspec.json.encode(Job(id=job_id, prompt=prompt, **fields))


async def produce(setup: Setup, messages: list[tuple[bytes | None, bytes]]) -> dict[int, int]:
    """Produce (key, value) pairs to the test's jobs topic; returns partition -> end offset."""
    return await runs.produce(setup.config.kafka, messages)


class Outputs:
    """Everything the worker published, read from the beginning of the output topics."""

    def __init__(self) -> None:
        self.results: list[Result] = []
        self.costs: list[CostEvent] = []
        self.letters: list[tuple[DeadLetter, bytes | None, bytes | None]] = []
        self.result_headers: list = []
        self.cost_headers: list = []
        self.letter_headers: list = []

    @property
    def result_ids(self) -> set[str]:
        return {r.job_id for r in self.results}

    def duplicates(self) -> int:
        return len(self.results) - len(self.result_ids)


async def collect(
    setup: Setup,
    until: Callable[[Outputs], bool],
    timeout_s: float,
    settle_s: float = 0.0,
    outputs: Outputs | None = None,
    isolation_level: str = "read_uncommitted",
) -> Outputs:
    """Read the results, costs and dlq topics until `until(outputs)` holds (then `settle_s` more) or time runs out."""
    outputs = outputs if outputs is not None else Outputs()
    topics = setup.topics
    consumer = make_consumer(setup.config.kafka, group_id=None, isolation_level=isolation_level)
    consumer.subscribe([topics.results, topics.costs, topics.dlq])
    await consumer.start()
    result_decoder, cost_decoder = msgspec.json.Decoder(Result), msgspec.json.Decoder(CostEvent)
    deadline = time.monotonic() + timeout_s
    settle_until = None
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for record in records:
                    if tp.topic == topics.results:
                        outputs.results.append(result_decoder.decode(record.value))
                        outputs.result_headers.append(list(record.headers))
                    elif tp.topic == topics.costs:
                        outputs.costs.append(cost_decoder.decode(record.value))
                        outputs.cost_headers.append(list(record.headers))
                    else:
                        outputs.letters.append((DeadLetter.from_headers(record.headers), record.key, record.value))
                        outputs.letter_headers.append(list(record.headers))
            if settle_until is None and until(outputs):
                settle_until = time.monotonic() + settle_s
            if settle_until is not None and time.monotonic() >= settle_until:
                break
    finally:
        await consumer.stop()
    return outputs


async def committed(setup: Setup, partitions: list[int]) -> dict[int, int | None]:
    """The group's committed offset of each partition of the jobs topic."""
    from aiokafka import TopicPartition

    consumer = make_consumer(setup.config.kafka)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(setup.topics.jobs, p)) for p in partitions}
    finally:
        await consumer.stop()


class WorkerProcess:
    """`llm-router worker` in a process of its own, its JSON logs in a file."""

    def __init__(self, setup: Setup, log_dir: Path, name: str, **overrides: object) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        env = setup.process_env() | {k: str(v) for k, v in overrides.items()}
        with open(self.log_path, "wb") as log:  # the process writes through its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker", "worker"],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def events(self) -> list[dict]:
        """Every line of the log so far, a JSON log line as its dict, any other line as `(not json)`."""
        lines = self.log_path.read_bytes().splitlines()
        out = []
        for line in lines:
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                out.append({"event": "(not json)", "text": line.decode(errors="replace")})
        return out

    def assigned(self) -> list[int]:
        """The partitions of the latest assignment in the log."""
        latest: list[int] = []
        for event in self.events():
            if event.get("event") == "partitions assigned":
                latest = event["partitions"]
            elif event.get("event") == "partitions released" and event.get("reason") == "revoked":
                latest = []
        return latest

    async def wait_assigned(self, timeout_s: float = 60) -> list[int]:
        """Wait until the replica has partitions (failing if it exits first); returns them."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.process.returncode}: {self.log_path.read_text()[-3000:]}"
                )
            if partitions := self.assigned():
                return partitions
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} got no partitions in {timeout_s} s: {self.log_path.read_text()[-3000:]}")

    def signal(self, sig: int) -> None:
        """Send `sig` to the process."""
        self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: the replica dies at once, with whatever it had in flight."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to exit; its exit code."""
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        """SIGTERM if it still runs (the worker drains and commits), SIGKILL after 30 s; nothing if it has exited."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def settle_assignment(replicas: list[WorkerProcess], timeout_s: float = 60, partitions: int = 4) -> None:
    """Wait until the group's partitions are spread over every replica (no rebalance pending)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        owned = [r.assigned() for r in replicas]
        if all(owned) and sorted(p for ps in owned for p in ps) == list(range(partitions)):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the assignment did not settle: {[r.assigned() for r in replicas]}")


class Replicas:
    """The worker replicas (`llm-router worker` processes) of one test, their logs in one folder.

    The `replicas` fixture gives each test one, and stops every replica it started when the test ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[WorkerProcess] = []

    def __iter__(self) -> Iterator[WorkerProcess]:
        return iter(self.started)

    def start(self, setup: Setup, name: str | None = None, **overrides: object) -> WorkerProcess:
        """Start one replica (`replica-N` unless named) with the setup's env and `overrides`."""
        replica = WorkerProcess(setup, self.log_dir, name or f"replica-{len(self.started)}", **overrides)
        self.started.append(replica)
        return replica

    def alive(self) -> list[WorkerProcess]:
        """The replicas whose process is still running."""
        return [r for r in self.started if r.process.poll() is None]

    async def start_settled(
        self, setup: Setup, count: int, partitions: int = 4, **overrides: object
    ) -> list[WorkerProcess]:
        """Start `count` replicas and wait until each has partitions and the group's assignment has settled."""
        group = [self.start(setup, **overrides) for _ in range(count)]
        for replica in group:
            await replica.wait_assigned()
        await settle_assignment(group, partitions=partitions)
        return group

    async def kill_busiest_at(self, outputs: Outputs, results: int, setup: Setup, **overrides: object) -> dict:
        """Once `results` jobs have results, SIGKILL the live replica owning most partitions and start another;
        returns the victim's partitions and the results counted at the kill."""
        while len(outputs.result_ids) < results:
            await asyncio.sleep(0.02)
        victim = max(self.alive(), key=lambda r: len(r.assigned()))
        facts = {"victim_partitions": victim.assigned(), "results_at_kill": len(outputs.result_ids)}
        victim.kill()
        self.start(setup, **overrides)
        return facts

    def stop(self) -> None:
        """Stop every replica still running (SIGTERM, SIGKILL after 30 s); calling it again is harmless."""
        for replica in self.started:
            replica.stop()


class ReplaceableBroker:
    """A broker of the test's own (the embedded Tansu, in memory), started; `replace` starts an empty one on its
    port, as a broker that lost everything would come back."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.first = EmbeddedBroker(port=self.port, log_path=tmp_path / "tansu-first.log")
        self.second = EmbeddedBroker(port=self.port, log_path=tmp_path / "tansu-second.log")
        try:
            self.first.start()
        except BrokerError as exc:
            pytest.fail(f"the test's own embedded broker (Tansu) did not start: {exc}", pytrace=False)
        self.bootstrap_servers = self.first.bootstrap_servers

    def stop(self) -> None:
        """The first broker gone, and everything it held."""
        self.first.stop()

    def replace(self) -> None:
        """An empty broker on the same port."""
        try:
            self.second.start()
        except BrokerError as exc:
            raise AssertionError(f"a new embedded broker did not start on the same port {self.port}: {exc}") from None

    def close(self) -> None:
        self.first.stop()
        self.second.stop()
