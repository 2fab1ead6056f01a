"""Outages of the broker and of providers: each change of the worker's state is one log line of its own,
nothing in flight is lost, and a worker with no usable provider neither starts nor drains its backlog
into failures.

The worker runs as `python -m worker worker` in a process of its own, so its exit code and its stderr
are what a user sees.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time

import msgspec
import pytest

from tests.integration.helpers import (
    REPO,
    ReplaceableBroker,
    Setup,
    WorkerProcess,
    collect,
    job_bytes,
    make_topics,
    produce,
    provider_latency,
)
from tests.reliability.helpers import all_or_stalled, apache_kafka_dir, crashes, kafka_sh
from worker.broker import free_port
from worker.simulator.server import SimulatorServer
from worker.simulator.settings import ErrorMix, load_simulator_config

OUTAGE_S = 30
IN_FLIGHT = 500


def own_lines(worker: WorkerProcess, start: int = 0, end: int | None = None) -> list[dict]:
    """The worker's own JSON lines (its `llm_router` loggers) among lines `start` to `end` of its log."""
    return [e for e in worker.events()[start:end] if str(e.get("logger", "")).startswith("llm_router")]


class TansuOutage(ReplaceableBroker):
    """A broker of the test's own (the embedded Tansu, in memory): killed, then an empty one on the same port,
    its topics made again."""

    async def kill(self) -> None:
        self.stop()  # everything it held is gone; the worker holds its jobs

    async def revive(self, setup: Setup, worker: WorkerProcess) -> None:
        # Held while the new, empty broker starts and the topics are made again: Tansu would take the held
        # outputs for topics it does not have yet, and lose them when they are created (test_broker_restart.py).
        worker.signal(signal.SIGSTOP)
        try:
            self.replace()
            await make_topics(setup, partitions=4)
        finally:
            worker.signal(signal.SIGCONT)


class ApacheKafkaOutage:
    """The Apache Kafka broker of `make test-kafka`: stopped, then started again on its data directory."""

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.port = bootstrap_servers.split(",")[0].rpartition(":")[2]
        self.dir = apache_kafka_dir()
        self.down = False

    async def kill(self) -> None:
        await asyncio.to_thread(kafka_sh, "stop", "--dir", self.dir)
        self.down = True

    async def revive(self, setup: Setup, worker: WorkerProcess) -> None:
        await asyncio.to_thread(kafka_sh, "start", "--dir", self.dir, "--port", self.port)
        self.down = False

    def close(self) -> None:
        if self.down:  # the other tests of the session need their broker back
            kafka_sh("start", "--dir", self.dir, "--port", self.port)


@pytest.mark.xdist_group("heavy")  # several worker processes, kills or outages: one heavy test at a time
def test_a_broker_killed_for_30_s_with_500_jobs_in_flight_costs_a_few_lines_no_job_and_sigterm_exits_0(
    bootstrap, tmp_path, replicas, report, summary
):
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = ApacheKafkaOutage(bootstrap) if external else TansuOutage(tmp_path)
    # Every job's call takes longer than the time to take them all: the 500 are in flight when the broker dies,
    # and they finish during the outage, their outputs held until a broker takes them.
    setup = Setup(broker.bootstrap_servers, LLM_ROUTER__WORKER__MAX_IN_FLIGHT=1000, **provider_latency(10_000))
    ids = [f"outage-{i:04d}" for i in range(IN_FLIGHT)]
    worker = replicas.start(setup, "worker")
    facts: dict = {}

    async def scenario():
        await make_topics(setup, partitions=4)
        await worker.wait_assigned()
        await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
        before = await collect(setup, until=lambda o: False, timeout_s=3)
        facts["results_before_kill"] = len(before.results)
        facts["kill_at_line"] = len(worker.events())
        await broker.kill()
        await asyncio.sleep(OUTAGE_S)
        assert worker.process.poll() is None, f"the worker exited in the outage: {worker.log_path.read_text()[-3000:]}"
        await broker.revive(setup, worker)
        outputs = await collect(setup, until=all_or_stalled(set(ids), stall_s=30), timeout_s=120, settle_s=2)
        # The watch notices the broker back within a probe interval of the client's next warning.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            e.get("event") == "broker regained" for e in worker.events()[facts["kill_at_line"] :]
        ):
            await asyncio.sleep(0.5)
        facts["stop_at_line"] = len(worker.events())
        return outputs

    try:
        outputs = asyncio.run(scenario())
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        code = worker.wait(timeout_s=60)
        facts["exit_s"] = round(time.monotonic() - started, 1)
    finally:
        worker.stop()
        broker.close()
    about = own_lines(worker, facts["kill_at_line"], facts["stop_at_line"])
    client = [e for e in worker.events()[facts["kill_at_line"] :] if str(e.get("logger", "")).startswith("aiokafka")]
    not_json = [e for e in worker.events() if e.get("event") == "(not json)"]
    missing = set(ids) - outputs.result_ids
    report(
        f"broker killed {OUTAGE_S} s with {IN_FLIGHT} jobs in flight: the worker's own lines about it "
        f"{len(about)} ({[e['event'] for e in about]}), the Kafka client's lines {len(client)}, "
        f"results {len(outputs.results)} for {len(outputs.result_ids)} jobs, SIGTERM exit {code} in {facts['exit_s']} s"
    )
    summary(f"broker killed {OUTAGE_S} s: jobs={IN_FLIGHT} lost={len(missing)} duplicates={outputs.duplicates()}")
    assert facts["results_before_kill"] == 0, "the jobs were still in flight when the broker was killed"
    assert not missing, f"{len(missing)} jobs have no result, e.g. {sorted(missing)[:5]}"
    # Apache Kafka keeps the group across the restart, and a member whose session expired meanwhile loses its
    # partitions: their jobs are taken again, and their first results published again (not run, not billed).
    assert outputs.duplicates() == 0 or external, "every job has exactly one result"
    assert all(r.status == "ok" for r in outputs.results)
    assert any(e.get("event", "").startswith("broker lost") for e in about), [e["event"] for e in about]
    assert any(e.get("event") == "broker regained" for e in about), [e["event"] for e in about]
    assert len(about) <= 5, f"the worker wrote {len(about)} lines of its own about the outage: {about}"
    assert not not_json, f"every line on stderr is JSON: {not_json[:5]}"
    assert not crashes(worker), crashes(worker)[:3]
    assert code == 0, f"SIGTERM after the outage exits 0, not {code}: {worker.log_path.read_text()[-3000:]}"


def test_with_every_provider_key_unset_the_worker_exits_2_within_2_s_naming_the_four_variables(tmp_path):
    # The shipped configuration, a broker address nothing listens on: the worker must not get as far as Kafka.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_ROUTER") and not k.endswith("_API_KEY")}
    env |= {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "worker", "worker"], env=env, cwd=REPO, capture_output=True, text=True, timeout=30
    )
    took = time.monotonic() - started
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert len(lines) == 1, f"one line: {lines}"
    for variable in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "LLAMA_API_KEY"):
        assert variable in lines[0], lines[0]
    assert "Traceback" not in done.stderr
    assert took < 2, f"the worker took {took:.2f} s to exit"


def openai_only(bootstrap: str, base_url: str, **overrides: object) -> Setup:
    """A setup whose one usable provider is OpenAI's wire at `base_url` (the others' keys are unset)."""
    unset = {f"LLM_ROUTER__PROVIDERS__{p}__API_KEY_ENV": "LLM_ROUTER_TEST_UNSET_KEY" for p in ("ANTHROPIC", "GEMINI")}
    kinds = {"LLM_ROUTER__PROVIDERS__ANTHROPIC__KIND": "anthropic", "LLM_ROUTER__PROVIDERS__GEMINI__KIND": "gemini"}
    return Setup(
        bootstrap,
        LLM_ROUTER__PROVIDERS__OPENAI__KIND="openai",
        LLM_ROUTER__PROVIDERS__OPENAI__BASE_URL=f"{base_url}/v1",
        LLM_ROUTER__PROVIDERS__LLAMA__KIND="openai_compatible",
        LLM_ROUTER__PROVIDERS__LLAMA__API_KEY_ENV="LLM_ROUTER_TEST_UNSET_KEY",
        LLM_ROUTER__WORKER__RETRY_BASE_S=0.01,
        LLM_ROUTER__WORKER__RETRY_CAP_S=0.05,
        OPENAI_API_KEY="sk-sim",
        **unset,
        **kinds,
        **overrides,
    )


def simulator_with(errors: ErrorMix):
    config = load_simulator_config()
    models = {name: msgspec.structs.replace(m, errors=errors) for name, m in config.models.items()}
    return msgspec.structs.replace(config, models=models, latency_scale=0.01)


def test_a_provider_out_of_quota_is_one_line_and_pauses_the_partitions_instead_of_failing_the_backlog(
    bootstrap, replicas, report
):
    in_flight = 4
    ids = [f"quota-{i:03d}" for i in range(200)]

    async def scenario():
        server = SimulatorServer(simulator_with(ErrorMix(quota=1.0)))
        url = await server.start()
        try:
            setup = openai_only(bootstrap, url, LLM_ROUTER__WORKER__MAX_IN_FLIGHT=in_flight)
            worker = replicas.start(setup, "worker")
            await make_topics(setup, partitions=1)
            await worker.wait_assigned()
            await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(
                e.get("event", "").startswith("no provider can take jobs") for e in worker.events()
            ):
                await asyncio.sleep(0.2)
            # Long enough for a worker draining its backlog into failures to fail many of the 200.
            outputs = await collect(setup, until=lambda o: False, timeout_s=5)
            return worker, outputs
        finally:
            await server.stop()

    worker, outputs = asyncio.run(scenario())
    events = [e.get("event", "") for e in own_lines(worker)]
    failed = [r for r in outputs.results if r.status == "failed"]
    report(
        f"provider out of quota: {events.count('provider out of rotation')} out-of-rotation line, "
        f"{len(failed)} failed results (jobs in flight at most {in_flight}), {len(ids) - len(outputs.results)} "
        "jobs left waiting"
    )
    assert events.count("provider out of rotation") == 1, events
    assert sum(e.startswith("no provider can take jobs") for e in events) == 1, events
    assert worker.process.poll() is None
    assert 1 <= len(failed) <= in_flight, f"only the jobs in flight fail, not the backlog: {len(failed)} failed"
    assert all(r.error and r.error.kind == "quota" for r in failed)
    worker.stop()
    assert worker.process.returncode == 0


def test_a_provider_refusing_connections_is_one_line_when_it_starts_and_one_with_the_count_when_it_ends(
    bootstrap, replicas, report
):
    port = free_port()  # nothing listens there until the simulator starts on it
    ids = [f"refused-{i:03d}" for i in range(40)]

    async def scenario():
        setup = openai_only(
            bootstrap,
            f"http://127.0.0.1:{port}",
            LLM_ROUTER__ROUTING__BREAKER_COOLDOWN_S=0.5,
            LLM_ROUTER__WORKER__MAX_IN_FLIGHT=8,
        )
        worker = replicas.start(setup, "worker")
        await make_topics(setup, partitions=1)
        await worker.wait_assigned()
        await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
        await asyncio.sleep(4)  # the outage: calls refused, the breaker opening and probing
        server = SimulatorServer(simulator_with(ErrorMix()), port=port)
        await server.start()
        try:
            outputs = await collect(setup, until=all_or_stalled(set(ids), stall_s=20), timeout_s=60, settle_s=1)
        finally:
            await server.stop()
        return worker, outputs

    worker, outputs = asyncio.run(scenario())
    lines = own_lines(worker)
    events = [e.get("event", "") for e in lines]
    refused = [
        a for r in outputs.results for a in r.attempts if a.error and "ConnectionRefusedError" in a.error.message
    ]
    ended = [e for e in lines if e.get("event") == "provider reachable again"]
    report(
        f"provider refusing connections: lines {events.count('provider unreachable')} at the start, "
        f"{len(ended)} at the end with failed_calls={ended[0]['failed_calls'] if ended else None}; "
        f"refused attempts in the results {len(refused)}"
    )
    assert events.count("provider unreachable") == 1, events
    assert len(ended) == 1, events
    assert refused, "calls were refused during the outage"
    # Every refused call belongs to a job, and every job has its result: the count is theirs.
    assert outputs.result_ids == set(ids)
    assert ended[0]["failed_calls"] == len(refused)
    assert events.count("circuit breaker opened") == 1 and events.count("circuit breaker closed") == 1, events
    assert sum(e.startswith("no provider can take jobs") for e in events) == 1, events
    assert sum(e.startswith("a provider can take jobs again") for e in events) == 1, events
    worker.stop()
    assert worker.process.returncode == 0
