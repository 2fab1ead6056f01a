"""Jobs that can wait, end to end on the broker and the simulator's batch APIs: parked, batched, answered at the
batch price (the cost events equal the simulator's batch bill); batches that expire or never end give their jobs
to synchronous calls before the deadlines; a replica that dies hands its open batches to another."""

import asyncio
import json
import random
import time
import urllib.request

import msgspec
import pytest

from tests.integration.helpers import Setup, collect, make_topics, produce, simulator_providers
from tests.integration.test_http_providers import KEYS
from worker.cli.runs import running_worker
from worker.messages import Checks, Job
from worker.providers import build_providers
from worker.simulator.server import SimulatorServer
from worker.simulator.settings import load_simulator_config

DAY = 86_400
# Small windows so that a test's batches go and come back in seconds: a batch goes after a second, is polled
# every half second; a job goes by batch while its deadline is 30 s away, and a late batch is given up ten
# seconds before the deadline.
BATCHING = {
    "LLM_ROUTER__BATCH__MAX_WAIT_S": 1,
    "LLM_ROUTER__BATCH__POLL_INTERVAL_S": 0.5,
    "LLM_ROUTER__BATCH__MIN_WINDOW_S": 30,
    "LLM_ROUTER__ROUTING__JOB_DEADLINE_S": 10,
}
DEADLINE_S = 35
# Every latency of the simulator is scaled by this: calls answer in about a millisecond, and a batch of
# batch_latency_s 1000 ends after a second.
SCALE = 0.001


def questions(prefix: str, count: int, complete_within_s: float, seed: int = 5) -> list[Job]:
    rng = random.Random(seed)
    jobs = []
    for i in range(count):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        prompt = f"What is {a} plus {b}? Number only. [[expect: {a + b}]] [[task: simple_qa]]"
        jobs.append(
            Job(
                id=f"{prefix}-{i}",
                prompt=prompt,
                task="simple_qa",
                max_output_tokens=32,
                complete_within_s=complete_within_s,
                checks=Checks(expected=str(a + b)),
            )
        )
    return jobs


def sim_get(url: str, path: str):
    with urllib.request.urlopen(f"{url}{path}") as answer:
        return json.loads(answer.read())


async def serve(**batch: float) -> tuple[SimulatorServer, str]:
    """The simulator, its latencies scaled by SCALE, every model's batches behaving as `batch` says."""
    simulator = load_simulator_config()
    models = {name: msgspec.structs.replace(m, **batch) for name, m in simulator.models.items()}
    server = SimulatorServer(msgspec.structs.replace(simulator, latency_scale=SCALE, models=models))
    return server, await server.start()


def test_jobs_that_can_wait_are_answered_by_batch_at_the_batch_price(bootstrap, report):
    jobs = questions("wait", 60, DAY)

    async def scenario():
        server, url = await serve(batch_latency_s=1000.0)
        setup = Setup(bootstrap, **BATCHING, **simulator_providers(url))
        try:
            await make_topics(setup)
            async with running_worker(setup.config, build_providers(setup.config, env=KEYS)) as worker:
                await produce(setup, [(j.id.encode(), msgspec.json.encode(j)) for j in jobs])
                ids = {j.id for j in jobs}
                outputs = await collect(setup, until=lambda o: o.result_ids >= ids, timeout_s=90)
                return (
                    outputs,
                    worker.batches.stats,
                    await asyncio.to_thread(sim_get, url, "/_sim/stats"),
                    await asyncio.to_thread(sim_get, url, "/_sim/requests?limit=1000"),
                )
        finally:
            await server.stop()

    outputs, desk, bill, requests = asyncio.run(scenario())
    results = {r.job_id: r for r in outputs.results}
    assert set(results) == {j.id for j in jobs}
    ok = [r for r in results.values() if r.status == "ok"]
    batch_attempts = [a for r in results.values() for a in r.attempts if a.via == "batch"]
    synchronous = [r for r in requests if r["via"] == "sync"]
    report(
        f"batch jobs: {len(jobs)} ok={len(ok)} batch attempts={len(batch_attempts)} "
        f"synchronous calls={len(synchronous)} batches={desk.submitted} lines={desk.lines}"
    )
    assert len(ok) >= 0.9 * len(jobs)
    assert all(r.attempts[0].via == "batch" and r.attempts[0].batch_id for r in results.values())
    answered_by_batch = [r for r in ok if r.via == "batch"]
    assert answered_by_batch and all(r.batch_id for r in answered_by_batch)
    # Every synchronous call was an escalation after a batch answer failed its checks.
    escalated = [r for r in results.values() if any(a.via == "sync" for a in r.attempts)]
    assert all(r.attempts[0].error is not None for r in escalated)
    assert len(synchronous) == sum(1 for r in escalated for a in r.attempts if a.via == "sync")
    # The batch attempts' cost events are the simulator's batch bill.
    batch_events = [e for e in outputs.costs if e.via == "batch"]
    assert len(batch_events) == len(batch_attempts) == bill["batch_requests"]
    assert sum(e.cost_usd for e in batch_events) == pytest.approx(bill["batch_cost_usd"], rel=1e-6)
    assert desk.lines == len(batch_attempts) and desk.submitted < len(jobs)


def test_batches_that_expire_or_never_end_give_their_jobs_to_synchronous_calls_before_their_deadlines(
    bootstrap, report
):
    expiring, hanging = questions("expire", 20, DEADLINE_S, seed=6), questions("hang", 20, DEADLINE_S, seed=7)

    async def scenario(batch: dict, jobs: list[Job], cancels: bool):
        server, url = await serve(**batch)
        setup = Setup(bootstrap, **BATCHING, **simulator_providers(url))
        try:
            await make_topics(setup)
            async with running_worker(setup.config, build_providers(setup.config, env=KEYS)) as worker:
                produced_at = time.time()
                await produce(setup, [(j.id.encode(), msgspec.json.encode(j)) for j in jobs])
                ids = {j.id for j in jobs}
                outputs = await collect(setup, until=lambda o: o.result_ids >= ids, timeout_s=120)
                # A batch none of whose jobs waits any more is cancelled at its next poll.
                for _ in range(50 if cancels else 0):
                    if worker.batches.stats.cancelled:
                        break
                    await asyncio.sleep(0.1)
                return outputs, produced_at, worker.batches.stats
        finally:
            await server.stop()

    for name, batch, jobs, kind in (
        ("expired", {"batch_latency_s": 1000.0, "batch_expiry_share": 1.0}, expiring, "batch_expired"),
        ("never ended", {"batch_latency_s": 1e9}, hanging, "batch_late"),
    ):
        outputs, produced_at, desk = asyncio.run(scenario(batch, jobs, cancels=name == "never ended"))
        results = {r.job_id: r for r in outputs.results}
        assert set(results) == {j.id for j in jobs}
        late = [r for r in results.values() if r.finished_at.timestamp() > produced_at + DEADLINE_S]
        report(
            f"batches {name}: jobs={len(jobs)} results={len(results)} deadlines missed={len(late)} "
            f"given up={desk.given_up} cancelled batches={desk.cancelled}"
        )
        assert not late
        assert desk.cancelled if name == "never ended" else not desk.given_up
        for r in results.values():
            first = r.attempts[0]
            assert (first.via, first.error.kind if first.error else None) == ("batch", kind)
            assert r.attempts[1].via == "sync" and r.attempts[1].model == first.model


def test_a_replica_killed_with_open_batches_hands_them_to_another_which_finishes_them(bootstrap, replicas, report):
    jobs = questions("kill", 40, DAY, seed=8)

    async def scenario():
        server, url = await serve(batch_latency_s=10_000.0)  # ten seconds: open across the kill
        setup = Setup(bootstrap, **BATCHING, **simulator_providers(url))
        try:
            await make_topics(setup)
            group = await replicas.start_settled(setup, 2, **KEYS)
            ids = {j.id for j in jobs}
            collecting = asyncio.create_task(collect(setup, until=lambda o: o.result_ids >= ids, timeout_s=90))
            await produce(setup, [(j.id.encode(), msgspec.json.encode(j)) for j in jobs])
            # Kill once every job's batch is recorded: a replica killed between a batch's submission and its
            # record submits those jobs again (docs/architecture.md, "Batch APIs"), which is not this test.
            while sum(batched(r) for r in group) < len(jobs):
                assert not collecting.done(), "the run ended before the batches were submitted"
                await asyncio.sleep(0.1)
            # The replica holding the most open batches (the group may have given one replica every partition).
            victim, survivor = sorted(group, key=batched, reverse=True)
            victim.kill()
            outputs = await collecting
            return outputs, submitted(victim), submitted(survivor), await batch_lines(url)
        finally:
            await server.stop()

    async def batch_lines(url: str) -> list[dict]:
        requests = await asyncio.to_thread(sim_get, url, "/_sim/requests?limit=1000")
        return [r for r in requests if r["via"] == "batch"]

    def submitted(replica) -> list[str]:
        return [e["batch_id"] for e in replica.events() if e.get("event") == "batch submitted"]

    def batched(replica) -> int:
        return sum(e["jobs"] for e in replica.events() if e.get("event") == "batch submitted")

    outputs, by_victim, by_survivor, lines = asyncio.run(scenario())
    results = {r.job_id: r for r in outputs.results}
    report(
        f"batches across a SIGKILL: jobs={len(jobs)} results={len(results)} batches submitted by the victim "
        f"{len(by_victim)}, by the survivor {len(by_survivor)}; batch lines at the simulator {len(lines)}"
    )
    assert set(results) == {j.id for j in jobs}, "every job has its result: none lost"
    assert by_victim, "the killed replica had open batches"
    # The victim's batches were finished by the survivor, not submitted again.
    first_batches = {r.attempts[0].batch_id for r in results.values()}
    assert set(by_victim) <= first_batches and len(lines) - len(jobs) == sum(
        1 for r in results.values() for a in r.attempts[1:] if a.via == "batch"
    )
