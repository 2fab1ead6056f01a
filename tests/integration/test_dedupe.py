"""Idempotence by job id (worker/pipeline/finished.py) against the embedded broker: a job produced twice
runs once, with one set of cost events and its first result published again, within one worker, across a
restart, and across three replicas and a restart."""

import asyncio
import time
from collections import Counter, defaultdict

import msgspec
import pytest

from tests.integration.helpers import (
    Outputs,
    Setup,
    collect,
    job_bytes,
    make_topics,
    produce,
    provider_latency,
    settle_assignment,
)
from worker.cli.runs import running_worker
from worker.pipeline.dedupe import FinishedBatch
from worker.pipeline.finished import READ_BACK_S
from worker.pipeline.kafka import make_consumer


async def finished_keys(setup: Setup) -> Counter:
    """How many times the finished records list each job id (each record lists ids of one jobs partition, on the
    finished partition of that number, and no result: the result itself is on the results topic)."""
    consumer = make_consumer(setup.config.kafka, setup.topics.finished, group_id=None)
    await consumer.start()
    keys: Counter = Counter()
    record_keys: Counter = Counter()
    try:
        while batch := await consumer.getmany(timeout_ms=1000):
            for tp, records in batch.items():
                for record in records:
                    listed = msgspec.json.decode(record.value, type=FinishedBatch)
                    assert listed.jobs_partition == tp.partition, "on the finished partition of its jobs partition"
                    keys.update(listed.ids)
                    record_keys[record.key] += 1
    finally:
        await consumer.stop()
    assert all(n == 1 for n in record_keys.values()), "every finished record's key is its own (no compaction)"
    return keys


def assert_run_once(outputs: Outputs, ids: list[str], copies: int) -> None:
    """Each id has at least `copies` results, all equal to its first; its cost events are one run's."""
    results = defaultdict(list)
    for result in outputs.results:
        results[result.job_id].append(result)
    assert set(results) == set(ids)
    assert all(len(r) >= copies for r in results.values()), Counter(len(r) for r in results.values())
    differing = [rs for rs in results.values() if any(r != rs[0] for r in rs)]
    assert not differing, f"a duplicate's result is its first result: {len(differing)} differ, e.g. {differing[:1]}"
    events = Counter((e.job_id, e.attempt) for e in outputs.costs)
    assert all(n == 1 for n in events.values()), "no attempt billed twice"
    assert Counter(job_id for job_id, _ in events) == Counter(
        {job_id: len(rs[0].attempts) for job_id, rs in results.items()}
    ), "cost events are those of the first run's attempts only"


def test_a_job_produced_twice_runs_once_whether_its_copy_is_in_flight_or_finished(bootstrap):
    setup = Setup(bootstrap, LLM_ROUTER__WORKER__COMMIT_INTERVAL_MS=100, **provider_latency(300))
    ids = [f"d{i}" for i in range(60)]
    together, later = ids[:30], ids[30:]

    async def scenario():
        await make_topics(setup)
        async with running_worker(setup.config) as worker:
            # Both copies of the first 30 at once: the second waits for the first, still running.
            await produce(setup, [(i.encode(), job_bytes(i)) for i in together for _ in range(2)])
            await produce(setup, [(i.encode(), job_bytes(i)) for i in later])
            await collect(setup, until=lambda o: o.result_ids >= set(ids), timeout_s=60)
            # The copies of the other 30 after their results: found in the record of finished ids.
            await produce(setup, [(i.encode(), job_bytes(i)) for i in later])
            # (collect reads the topics from their beginning: everything, the first results too)
            outputs = await collect(setup, until=lambda o: len(o.results) >= 2 * len(ids), timeout_s=60, settle_s=1)
        return outputs, worker, await finished_keys(setup)

    outputs, worker, finished = asyncio.run(scenario())
    assert_run_once(outputs, ids, copies=2)
    assert len(outputs.results) == 2 * len(ids)
    assert worker.stats.duplicates == len(ids)
    assert worker.stats.results_ok == len(ids), "each job ran once"
    assert finished == Counter(dict.fromkeys(ids, 1)), "each job listed in one finished record"


def test_a_restarted_worker_still_knows_the_finished_ids(bootstrap):
    setup = Setup(bootstrap, LLM_ROUTER__WORKER__COMMIT_INTERVAL_MS=100)
    ids = [f"r{i}" for i in range(50)]

    async def scenario():
        await make_topics(setup)
        async with running_worker(setup.config):
            await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
            await collect(setup, until=lambda o: o.result_ids >= set(ids), timeout_s=60)
        async with running_worker(setup.config) as restarted:
            await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
            outputs = await collect(setup, until=lambda o: len(o.results) >= 2 * len(ids), timeout_s=60, settle_s=1)
        return outputs, restarted

    outputs, restarted = asyncio.run(scenario())
    assert_run_once(outputs, ids, copies=2)
    assert restarted.stats.duplicates == len(ids) and restarted.stats.results_ok == 0
    assert restarted.stats.cost_events == 0


def test_a_duplicate_whose_first_result_is_gone_runs_again_without_holding_the_worker_up(bootstrap):
    """The results topic made anew (or past its retention) while the finished ids remain: each duplicate looks for
    its first result once, does not find it, and runs again at once, not after the read-back time each."""
    first = Setup(bootstrap, LLM_ROUTER__WORKER__COMMIT_INTERVAL_MS=100)
    ids = [f"g{i}" for i in range(20)]
    # The same jobs and finished topics, new results and costs topics.
    later = Setup(
        bootstrap,
        LLM_ROUTER__WORKER__COMMIT_INTERVAL_MS=100,
        LLM_ROUTER__KAFKA__GROUP_ID=first.config.kafka.group_id,
        LLM_ROUTER__KAFKA__TOPICS__JOBS=first.topics.jobs,
        LLM_ROUTER__KAFKA__TOPICS__FINISHED=first.topics.finished,
    )
    read_back_s = READ_BACK_S + 0.1

    async def scenario():
        await make_topics(first)
        await make_topics(later)
        async with running_worker(first.config):
            await produce(first, [(i.encode(), job_bytes(i)) for i in ids])
            await collect(first, until=lambda o: o.result_ids >= set(ids), timeout_s=60)
        await asyncio.sleep(read_back_s)  # older than a result still on its way could be
        async with running_worker(later.config) as worker:
            started = time.monotonic()
            await produce(later, [(i.encode(), job_bytes(i)) for i in ids])
            outputs = await collect(later, until=lambda o: o.result_ids >= set(ids), timeout_s=60)
            took = time.monotonic() - started
        return outputs, worker, took

    outputs, worker, took = asyncio.run(scenario())
    assert outputs.result_ids == set(ids) and all(r.status == "ok" for r in outputs.results)
    assert worker.stats.results_ok == len(ids) and worker.stats.duplicates == 0, "each ran again"
    assert took < read_back_s, f"{len(ids)} such duplicates took {took:.1f} s: they waited for the read-back time"


def test_a_window_of_zero_turns_deduplication_off(bootstrap):
    setup = Setup(bootstrap, LLM_ROUTER__WORKER__DEDUPE_WINDOW_S=0)
    ids = [f"z{i}" for i in range(10)]

    async def scenario():
        await make_topics(setup)
        async with running_worker(setup.config) as worker:
            await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
            await collect(setup, until=lambda o: o.result_ids >= set(ids), timeout_s=60)
            await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
            outputs = await collect(setup, until=lambda o: len(o.results) >= 2 * len(ids), timeout_s=60, settle_s=1)
        return outputs, worker, await finished_keys(setup)

    outputs, worker, finished = asyncio.run(scenario())
    assert len(outputs.results) == 2 * len(ids)
    assert worker.dedupe is None and worker.stats.duplicates == 0
    assert worker.stats.results_ok == 2 * len(ids), "every copy ran"
    assert not finished


JOBS = 1000


@pytest.mark.xdist_group("heavy")  # several worker processes, kills or outages: one heavy test at a time
def test_1000_jobs_produced_twice_across_3_replicas_and_a_restart_run_once(bootstrap, replicas, report):
    setup = Setup(bootstrap, LLM_ROUTER__WORKER__COMMIT_INTERVAL_MS=200, **provider_latency(100))
    ids = [f"a{i:04d}" for i in range(JOBS)]
    first_half, second_half = ids[: JOBS // 2], ids[JOBS // 2 :]
    figures = {}

    async def scenario() -> Outputs:
        await make_topics(setup, partitions=4)
        group = await replicas.start_settled(setup, 3, partitions=4)
        started = time.monotonic()
        outputs = Outputs()
        collecting = asyncio.create_task(
            collect(setup, until=lambda o: len(o.results) >= 2 * JOBS, timeout_s=120, settle_s=2, outputs=outputs)
        )
        # Every job once, and the first half's copies right behind them (in flight or just finished).
        await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
        await produce(setup, [(i.encode(), job_bytes(i)) for i in first_half])
        while len(outputs.result_ids) < JOBS:
            await asyncio.sleep(0.05)
        # A restart: one replica stops (drains, commits) and a new one joins; the others take and give back
        # partitions, and each loads the finished ids of what it is given.
        group[0].stop()
        restarted = replicas.start(setup, "restarted")
        await settle_assignment([group[1], group[2], restarted])
        # The second half's copies, after the restart.
        await produce(setup, [(i.encode(), job_bytes(i)) for i in second_half])
        await collecting
        figures["seconds"] = time.monotonic() - started
        return outputs

    outputs = asyncio.run(scenario())
    replicas.stop()
    finished = asyncio.run(finished_keys(setup))
    stopped = [e for r in replicas for e in r.events() if e.get("event") == "worker stopped"]
    duplicates = sum(e["stats"]["duplicates"] for e in stopped)
    runs = sum(e["stats"]["results_ok"] + e["stats"]["results_failed"] for e in stopped)
    loads = [e for r in replicas for e in r.events() if e.get("event") == "finished ids loaded"]
    largest = max(loads, key=lambda e: e["ids"], default={"ids": 0, "load_s": 0})
    report(
        f"dedupe, {JOBS} jobs produced twice across 3 replicas and a restart: results={len(outputs.results)} "
        f"distinct={len(outputs.result_ids)} cost events={len(outputs.costs)} "
        f"jobs billed={len({e.job_id for e in outputs.costs})} runs={runs} duplicates={duplicates} "
        f"ids listed as finished={sum(finished.values())} loads={len(loads)} "
        f"(the largest {largest['ids']} ids in {largest['load_s']} s) "
        f"in {figures['seconds']:.1f} s"
    )
    assert len(outputs.result_ids) == JOBS
    assert_run_once(outputs, ids, copies=2)
    assert {e.job_id for e in outputs.costs} == set(ids), "cost events for the 1,000 jobs only"
    assert runs == JOBS and duplicates >= JOBS, "each job ran once; every copy was answered from the first run"
    assert finished == Counter(dict.fromkeys(ids, 1))
    assert any(e["ids"] > 0 for e in loads), "a replica given partitions after the restart loaded their finished ids"
