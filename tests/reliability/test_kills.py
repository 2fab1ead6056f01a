"""Replicas SIGKILLed at random points of a 10,000-job run, a replacement started each time: no job
lost, and the duplicates stay within what the killed replicas had in flight or finished uncommitted."""

import asyncio
import math
import random

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
from tests.reliability.helpers import crashes, wait_committed

JOBS = 10_000
PARTITIONS = 12
REPLICAS = 3
KILLS = 3
SEED = 20_240_917
MAX_IN_FLIGHT = 200
LATENCY_MS = 500


def per_kill_bound(max_in_flight: int, commit_interval_ms: int, latency_ms: float) -> int:
    """What one SIGKILL can make the group redo: the victim's jobs in flight (at most max_in_flight),
    plus the jobs it finished after the snapshot of its last commit. Each job takes at least the
    provider's latency and at most max_in_flight run at once, so within one commit interval a replica
    finishes at most max_in_flight * ceil(commit_interval / latency) more."""
    return max_in_flight * (1 + math.ceil(commit_interval_ms / latency_ms))


def kill_points(rng: random.Random, jobs: int, kills: int, start: float = 0.05, end: float = 0.80) -> list[int]:
    """A random count of results for each kill, the k-th in the k-th of `kills` equal slices of [start, end]."""
    width = (end - start) / kills
    return [int(jobs * (start + width * k + rng.uniform(0, width * 0.7))) for k in range(kills)]


@pytest.mark.xdist_group("heavy")  # several worker processes, kills or outages: one heavy test at a time
def test_replicas_killed_at_random_points_lose_no_job_and_duplicate_at_most_their_uncommitted_work(
    bootstrap, replicas, report, summary
):
    setup = Setup(
        bootstrap,
        LLM_ROUTER__WORKER__MAX_IN_FLIGHT=MAX_IN_FLIGHT,
        **provider_latency(LATENCY_MS),
    )
    worker_config = setup.config.worker
    bound_each = per_kill_bound(worker_config.max_in_flight, worker_config.commit_interval_ms, LATENCY_MS)
    rng = random.Random(SEED)
    points = kill_points(rng, JOBS, KILLS)
    ids = [f"kill-{i:05d}" for i in range(JOBS)]
    kills: list[dict] = []

    async def wait_for_results(outputs: Outputs, count: int, collecting: asyncio.Task) -> None:
        while len(outputs.result_ids) < count:
            if collecting.done():
                raise AssertionError(
                    f"the run ended at {len(outputs.result_ids)} results before the kill point {count}"
                )
            await asyncio.sleep(0.02)

    async def scenario() -> tuple[Outputs, dict[int, int], dict[int, int | None]]:
        await make_topics(setup, partitions=PARTITIONS)
        alive = await replicas.start_settled(setup, REPLICAS, partitions=PARTITIONS)
        outputs = Outputs()
        collecting = asyncio.create_task(
            collect(setup, until=lambda o: o.result_ids >= set(ids), timeout_s=220, settle_s=3, outputs=outputs)
        )
        ends = await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
        for n, point in enumerate(points):
            await wait_for_results(outputs, point, collecting)
            await settle_assignment(
                alive, partitions=PARTITIONS
            )  # kill a member of a stable group, never mid-rebalance
            victim = rng.choice(alive)
            kills.append(
                {
                    "victim": victim.name,
                    "partitions": victim.assigned(),
                    "results_at_kill": len(outputs.result_ids),
                    "point": point,
                }
            )
            victim.kill()
            alive.remove(victim)
            alive.append(replicas.start(setup, f"replica-{REPLICAS + n}"))
        await collecting
        # Every output is acknowledged; the survivors commit within a commit interval.
        positions, _ = await wait_committed(setup, ends, timeout_s=30)
        return outputs, ends, positions

    outputs, ends, positions = asyncio.run(scenario())
    replicas.stop()
    missing = set(ids) - outputs.result_ids
    duplicates = outputs.duplicates()
    bound = len(kills) * bound_each
    summary(f"kills: jobs={JOBS} kills={len(kills)} duplicates={duplicates} (bound {bound}) lost={len(missing)}")
    report(
        f"kills: seed={SEED} partitions={PARTITIONS} max_in_flight={MAX_IN_FLIGHT} "
        f"commit_interval_ms={worker_config.commit_interval_ms} latency_ms={LATENCY_MS} "
        f"bound per kill {bound_each}; kill points {points}, kills at results {[k['results_at_kill'] for k in kills]} "
        f"(victims {[(k['victim'], k['partitions']) for k in kills]})"
    )
    assert len(kills) == KILLS, f"only {len(kills)} of {KILLS} kills happened"
    assert all(k["partitions"] for k in kills), f"every killed replica owned partitions: {kills}"
    assert all(k["results_at_kill"] < JOBS for k in kills), f"every kill happened mid-run: {kills}"
    for replica in replicas:
        assert not crashes(replica), f"{replica.name} logged crashes: {crashes(replica)[:3]}"
    assert not missing, f"{len(missing)} jobs have no result (lost), e.g. {sorted(missing)[:5]}"
    assert duplicates <= bound, (
        f"{duplicates} duplicates over {len(kills)} kills, over the bound {bound} ({bound_each} a kill)"
    )
    assert all(r.status == "ok" for r in outputs.results)
    assert positions == ends, f"the group committed every partition to its end: {positions} vs {ends}"
