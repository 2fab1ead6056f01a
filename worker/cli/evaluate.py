"""`llm-router eval WORKLOAD.jsonl`: a workload through the real path under several policies.

Each policy gets its own topics and worker on one broker, and a fresh simulator with the same
seed (so a model that gets a question wrong gets it wrong under every policy). Each job's prompt
is sent with the simulator's directives (`[[expect: ...]] [[task: ...]]`) so that the simulated
models answer with their configured accuracy; the worker verifies the answers against the job's
`checks.expected` like any other job.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import msgspec
import orjson

from worker import runtime
from worker.broker import EmbeddedBroker
from worker.cli.runs import produce, run_kafka, running_worker
from worker.config import Config
from worker.messages import Job, Result
from worker.pipeline.kafka import create_topics, make_consumer
from worker.providers import build_providers
from worker.routing.classify import Classifier
from worker.simulator.endpoints import SIMULATOR_KEY, on_simulator
from worker.simulator.server import SimulatorServer
from worker.simulator.settings import SimulatorConfig

POLICIES = {
    "always-gpt-4o": {"policy": "single", "single_model": "gpt-4o"},
    "reference": {"policy": "fixed"},
    "router": {"policy": "cheapest_correct"},
}


class PolicyFigures(msgspec.Struct, kw_only=True):
    policy: str
    jobs: int
    correct: int
    accuracy: float
    cost_usd: float
    cost_per_1k_jobs_usd: float
    cost_per_correct_usd: float
    p50_ms: float
    p99_ms: float
    attempts_per_job: float
    failed: int
    # What the simulator billed for the policy's calls, and how far the cost (the sum of its cost events) is from it.
    billed_usd: float
    bill_gap_usd: float


def read_workload(path: str | Path) -> list[Job]:
    """Jobs, one JSON object a line, each with `checks.expected` (the right answer)."""
    jobs = []
    for number, line in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            job = msgspec.json.decode(line, type=Job)
        except msgspec.DecodeError as exc:
            raise ValueError(f"{path}:{number}: not a valid job: {exc}") from None
        if job.checks is None or job.checks.expected is None:
            raise ValueError(f"{path}:{number}: an evaluation job needs checks.expected")
        jobs.append(job)
    if not jobs:
        raise ValueError(f"{path}: no jobs")
    return jobs


def with_directives(job: Job, task: str) -> Job:
    """The job as sent: its prompt carries the simulator's directives."""
    assert job.checks is not None  # read_workload admits only jobs with checks.expected
    directive = f"\n[[expect: {job.checks.expected}]] [[task: {task}]]"
    if job.prompt is not None:
        return msgspec.structs.replace(job, prompt=job.prompt + directive)
    messages = list(job.messages or [])
    messages[-1] = msgspec.structs.replace(messages[-1], content=messages[-1].text() + directive)
    return msgspec.structs.replace(job, messages=messages)


def policy_config(
    config: Config, policy: str, bootstrap: str, run_id: str, simulator_url: str
) -> tuple[Config, dict[str, str]]:
    replace = msgspec.structs.replace
    kafka = run_kafka(config.kafka, bootstrap, f"eval-{run_id}-{policy}")
    providers, keys = {}, {}
    for name, provider in config.providers.items():
        providers[name], key_env = on_simulator(name, provider, simulator_url)
        keys[key_env] = SIMULATOR_KEY
    routing = replace(config.routing, **POLICIES[policy])
    return replace(config, kafka=kafka, providers=providers, routing=routing), keys


async def run_policy(
    config: Config,
    sim_config: SimulatorConfig,
    policy: str,
    jobs: list[Job],
    bootstrap: str,
    run_id: str,
    timeout_s: float,
) -> PolicyFigures:
    simulator = SimulatorServer(msgspec.convert(msgspec.to_builtins(sim_config), SimulatorConfig))
    url = await simulator.start()
    try:
        config, keys = policy_config(config, policy, bootstrap, run_id, url)
        classifier = Classifier(config.classifier)
        await create_topics(config.kafka, partitions=4)
        encoder = msgspec.json.Encoder()
        async with running_worker(config, build_providers(config, env=keys)):
            await produce(
                config.kafka,
                [(job.id.encode(), encoder.encode(with_directives(job, classifier.classify(job)))) for job in jobs],
            )
            results = await _collect(config, {job.id for job in jobs}, timeout_s)
        billed = simulator.simulator.stats.cost_usd  # every call is answered before its job's result
    finally:
        await simulator.stop()
    return figures(policy, jobs, results, billed)


async def _collect(config: Config, ids: set[str], timeout_s: float) -> dict[str, Result]:
    consumer = make_consumer(config.kafka, config.kafka.topics.results, group_id=None)
    await consumer.start()
    decoder = msgspec.json.Decoder(Result)
    results: dict[str, Result] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(results) < len(ids) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    result = decoder.decode(record.value)
                    results.setdefault(result.job_id, result)
    finally:
        await consumer.stop()
    missing = ids - set(results)
    if missing:
        raise RuntimeError(f"{len(missing)} job(s) got no result within {timeout_s:.0f} s")
    return results


def figures(policy: str, jobs: list[Job], results: dict[str, Result], billed_usd: float) -> PolicyFigures:
    """The policy's figures from its results (a result is correct when it passed verification) and what the
    simulator billed for them."""
    chosen = [results[job.id] for job in jobs]
    correct = sum(r.status == "ok" for r in chosen)
    cost = sum(r.cost_usd for r in chosen)
    latencies = sorted(r.latency_ms for r in chosen)
    return PolicyFigures(
        policy=policy,
        jobs=len(chosen),
        correct=correct,
        accuracy=round(correct / len(chosen), 4),
        cost_usd=round(cost, 6),
        cost_per_1k_jobs_usd=round(cost / len(chosen) * 1000, 4),
        cost_per_correct_usd=round(cost / correct, 8) if correct else float("inf"),
        p50_ms=round(statistics.median(latencies), 1),
        p99_ms=round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
        attempts_per_job=round(sum(len(r.attempts) for r in chosen) / len(chosen), 3),
        failed=len(chosen) - correct,
        billed_usd=round(billed_usd, 6),
        bill_gap_usd=round(abs(cost - billed_usd), 9),
    )


def run_eval(
    config: Config,
    sim_config: SimulatorConfig,
    workload: str,
    policies: list[str],
    as_json: bool,
    timeout_s: float = 600.0,
) -> int:
    jobs = read_workload(workload)
    run_id = uuid.uuid4().hex[:8]
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker: EmbeddedBroker | None = None
    if external:
        bootstrap = external
    else:
        broker = EmbeddedBroker()
        bootstrap = broker.start()
    try:
        results = [
            runtime.run(
                run_policy(config, sim_config, policy, jobs, bootstrap, run_id, timeout_s), config.worker.event_loop
            )
            for policy in policies
        ]
    finally:
        if broker:
            broker.stop()
    if as_json:
        for figure in results:
            print(orjson.dumps(msgspec.to_builtins(figure)).decode())
    else:
        print_table(results)
    return 0


def print_table(results: list[PolicyFigures]) -> None:
    by = {r.policy: r for r in results}

    def cheaper(r: PolicyFigures, base: str) -> str:
        other = by.get(base)
        if other is None or other is r or not other.correct or not r.correct:
            return "-"
        saving = (1 - r.cost_per_correct_usd / other.cost_per_correct_usd) * 100
        return f"{saving:.1f}%" if saving >= 0 else f"no ({-saving:.0f}% dearer)"

    headers = [
        "policy",
        "jobs",
        "accuracy",
        "cost / 1K jobs",
        "cost / correct",
        "cheaper than always-gpt-4o",
        "cheaper than reference",
        "p50",
        "p99",
        "attempts / job",
        "cost events vs bill",
    ]
    rows = [
        [
            r.policy,
            str(r.jobs),
            f"{r.accuracy * 100:.1f}%",
            f"${r.cost_per_1k_jobs_usd:.4f}",
            f"${r.cost_per_correct_usd:.8f}",
            cheaper(r, "always-gpt-4o"),
            cheaper(r, "reference"),
            f"{r.p50_ms:.0f} ms",
            f"{r.p99_ms:.0f} ms",
            f"{r.attempts_per_job:.2f}",
            f"${r.bill_gap_usd:.9f}",
        ]
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    sys.stdout.flush()
