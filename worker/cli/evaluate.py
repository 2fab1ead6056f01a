"""`llm-router eval WORKLOAD.jsonl`: a workload through the real path under several policies.

Each policy gets its own topics and worker on one broker, and a fresh simulator with the same
seed (so a model that gets a question wrong gets it wrong under every policy). Each job's prompt
is sent with the simulator's directives (`[[expect: ...]] [[task: ...]]`) so that the simulated
models answer with their configured accuracy. Verified (the default), the worker verifies the answers
against the job's `checks.expected` like any other job; blind, the jobs go without their checks, as
real jobs come, and the eval scores the answers itself (worker/cli/eval_figures.py). For a share of
the jobs (the same under every policy) the eval sends its verdict to the feedback topic as each
result arrives, as a user grading a sample would.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from pathlib import Path

import msgspec
import orjson

from worker import runtime
from worker.broker import EmbeddedBroker
from worker.cli.eval_figures import figures, is_correct, print_table, unroutable
from worker.cli.runs import produce, run_kafka, running_worker
from worker.config import Config
from worker.messages import Feedback, Job, Result
from worker.pipeline.kafka import create_topics, make_consumer, make_producer
from worker.providers import build_providers
from worker.routing.classify import Classifier
from worker.simulator.endpoints import SIMULATOR_KEY, on_simulator
from worker.simulator.server import SimulatorServer
from worker.simulator.settings import SimulatorConfig

POLICIES = {
    "always-gpt-4o": {"policy": "single", "single_model": "gpt-4o"},
    "reference": {"policy": "fixed"},
    "router": {"policy": "cheapest_correct"},
    "router-batch": {"policy": "cheapest_correct"},
}
# The batch settings of the router-batch policy: batches go and are polled within a second or two, so that an
# eval's batches end at the simulator's batch latency (`batch_latency_s` times its latency scale).
EVAL_BATCHES = {"max_wait_s": 1.0, "poll_interval_s": 1.0}


class Grading(msgspec.Struct, frozen=True, kw_only=True):
    """How the eval scores a run's results, and the jobs whose verdict it sends as feedback."""

    blind: bool = False
    feedback_ids: frozenset[str] = frozenset()
    complete_within_s: float | None = None  # sent with every job


class PolicyRun(msgspec.Struct, kw_only=True):
    """What one policy's run gave: its results by job id, what the simulator billed, the feedback sent."""

    results: dict[str, Result]
    billed_usd: float
    feedback_sent: int


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


def with_directives(job: Job, task: str, blind: bool = False, complete_within_s: float | None = None) -> Job:
    """The job as sent: its prompt carries the simulator's directives; blind, it goes without its checks;
    with `complete_within_s` when given."""
    assert job.checks is not None  # read_workload admits only jobs with checks.expected
    directive = f"\n[[expect: {job.checks.expected}]] [[task: {task}]]"
    checks = None if blind else job.checks
    job = msgspec.structs.replace(job, complete_within_s=complete_within_s or job.complete_within_s)
    if job.prompt is not None:
        return msgspec.structs.replace(job, prompt=job.prompt + directive, checks=checks)
    messages = list(job.messages or [])
    messages[-1] = msgspec.structs.replace(messages[-1], content=messages[-1].text() + directive)
    return msgspec.structs.replace(job, messages=messages, checks=checks)


def feedback_sample(jobs: list[Job], share: float, seed: int) -> frozenset[str]:
    """The ids of a seeded random `share` of the jobs: the same jobs under every policy."""
    ids = sorted(job.id for job in jobs)
    return frozenset(random.Random(seed).sample(ids, round(share * len(ids))))


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
    batching = policy == "router-batch"
    batch = replace(config.batch, enabled=batching, **(EVAL_BATCHES if batching else {}))
    return replace(config, kafka=kafka, providers=providers, routing=routing, batch=batch), keys


async def run_policy(
    config: Config,
    sim_config: SimulatorConfig,
    policy: str,
    jobs: list[Job],
    bootstrap: str,
    run_id: str,
    timeout_s: float,
    grading: Grading,
) -> PolicyRun:
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
                [
                    (
                        job.id.encode(),
                        encoder.encode(
                            with_directives(job, classifier.classify(job), grading.blind, grading.complete_within_s)
                        ),
                    )
                    for job in jobs
                ],
            )
            results, sent = await _collect(config, {job.id: job for job in jobs}, timeout_s, grading)
        billed = simulator.simulator.stats.cost_usd  # every call is answered before its job's result
    finally:
        await simulator.stop()
    return PolicyRun(results=results, billed_usd=billed, feedback_sent=sent)


async def _collect(
    config: Config, jobs: dict[str, Job], timeout_s: float, grading: Grading
) -> tuple[dict[str, Result], int]:
    """Every job's first result, and how many feedbacks were sent: the eval's verdict on each answered job of
    the feedback sample, as its result arrives."""
    consumer = make_consumer(config.kafka, config.kafka.topics.results, group_id=None)
    producer = make_producer(config.kafka)
    await consumer.start()
    await producer.start()
    decoder, encoder = msgspec.json.Decoder(Result), msgspec.json.Encoder()
    results: dict[str, Result] = {}
    acknowledgements = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(results) < len(jobs) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    result = decoder.decode(record.value)
                    job = jobs.get(result.job_id)
                    if job is None or result.job_id in results:
                        continue
                    results[result.job_id] = result
                    if result.job_id in grading.feedback_ids and result.status == "ok":
                        verdict = Feedback(job_id=job.id, correct=is_correct(job, result, grading.blind), source="eval")
                        acknowledgements.append(
                            await producer.send(
                                config.kafka.topics.feedback, encoder.encode(verdict), key=job.id.encode()
                            )
                        )
        await asyncio.gather(*acknowledgements)
    finally:
        await producer.stop()
        await consumer.stop()
    missing = set(jobs) - set(results)
    if missing:
        raise RuntimeError(f"{len(missing)} job(s) got no result within {timeout_s:.0f} s")
    return results, len(acknowledgements)


def run_eval(
    config: Config,
    sim_config: SimulatorConfig,
    workload: str,
    policies: list[str],
    as_json: bool,
    timeout_s: float = 600.0,
    *,
    blind: bool = False,
    feedback_share: float = 0.0,
    complete_within_s: float | None = None,
    simulator_name: str = "the shipped simulator.toml",
) -> int:
    """Run the workload under each policy and print their figures (a table, or with `as_json` a JSON object a
    line); blind and with feedback on a share of the jobs as `blind` and `feedback_share` say."""
    jobs = read_workload(workload)
    grading = Grading(
        blind=blind,
        feedback_ids=feedback_sample(jobs, feedback_share, sim_config.seed),
        complete_within_s=complete_within_s,
    )
    run_id = uuid.uuid4().hex[:8]
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker: EmbeddedBroker | None = None
    if external:
        bootstrap = external
    else:
        broker = EmbeddedBroker()
        bootstrap = broker.start()
    try:
        runs = {
            policy: runtime.run(
                run_policy(config, sim_config, policy, jobs, bootstrap, run_id, timeout_s, grading),
                config.worker.event_loop,
            )
            for policy in policies
        }
    finally:
        if broker:
            broker.stop()
    left_out = unroutable([run.results for run in runs.values()])
    results = [
        figures(
            policy,
            jobs,
            run.results,
            run.billed_usd,
            blind=blind,
            feedback_share=feedback_share,
            left_out=left_out,
            feedback_sent=run.feedback_sent,
        )
        for policy, run in runs.items()
    ]
    if as_json:
        for figure in results:
            print(orjson.dumps(msgspec.to_builtins(figure)).decode())
    else:
        print_table(results, simulator_name)
    return 0
