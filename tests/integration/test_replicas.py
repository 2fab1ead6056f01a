"""Three replicas in separate processes; one is SIGKILLed mid-run and another started: nothing lost."""

import asyncio

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

JOBS = 2000
MAX_IN_FLIGHT = 40
COMMIT_INTERVAL_MS = 100
LATENCY_MS = 200


@pytest.mark.xdist_group("heavy")  # several worker processes, kills or outages: one heavy test at a time
def test_sigkill_of_a_replica_loses_no_job_and_duplicates_stay_bounded(bootstrap, replicas, report):
    setup = Setup(
        bootstrap,
        LLM_ROUTER__WORKER__MAX_IN_FLIGHT=MAX_IN_FLIGHT,
        LLM_ROUTER__WORKER__COMMIT_INTERVAL_MS=COMMIT_INTERVAL_MS,
        **provider_latency(LATENCY_MS),
    )
    ids = [f"k{i:05d}" for i in range(JOBS)]
    facts = {}

    async def scenario() -> Outputs:
        await make_topics(setup, partitions=4)
        await replicas.start_settled(setup, 3, partitions=4)
        outputs = Outputs()
        collecting = asyncio.create_task(
            collect(setup, until=lambda o: o.result_ids >= set(ids), timeout_s=240, settle_s=3, outputs=outputs)
        )
        await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
        facts.update(await replicas.kill_busiest_at(outputs, JOBS // 4, setup))
        await collecting
        return outputs

    outputs = asyncio.run(scenario())
    replicas.stop()
    missing = set(ids) - outputs.result_ids
    duplicates = outputs.duplicates()
    bound = MAX_IN_FLIGHT * (1 + (COMMIT_INTERVAL_MS + LATENCY_MS - 1) // LATENCY_MS)
    report(
        f"SIGKILL of 1 of 3 replicas mid-run: jobs={JOBS} results={len(outputs.results)} missing={len(missing)} "
        f"duplicates={duplicates} "
        f"(bound {bound}: max_in_flight {MAX_IN_FLIGHT} + what finishes in one commit interval) "
        f"results_at_kill={facts['results_at_kill']} victim_partitions={facts['victim_partitions']}"
    )
    assert facts["victim_partitions"], "the killed replica owned partitions"
    assert facts["results_at_kill"] < JOBS, "the kill happened mid-run"
    assert not missing, f"{len(missing)} jobs have no result"
    assert duplicates <= bound, f"{duplicates} duplicates, over the in-flight bound {bound}"
    assert all(r.status == "ok" for r in outputs.results)


@pytest.mark.xdist_group("heavy")  # several worker processes, kills or outages: one heavy test at a time
def test_a_replica_joining_takes_partitions_after_the_owner_drains_and_commits(bootstrap, replicas, report):
    setup = Setup(bootstrap, LLM_ROUTER__WORKER__SHUTDOWN_GRACE_S=30, **provider_latency(6000))
    ids = [f"r{i}" for i in range(400)]
    first = replicas.start(setup, "first")

    async def scenario():
        await make_topics(setup, partitions=4)
        assert sorted(await first.wait_assigned()) == [0, 1, 2, 3]
        await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
        # All 400 are in flight on the first replica: each call takes 6 s, longer than the second one takes to
        # start and join.
        await asyncio.sleep(0.5)
        await settle_assignment([first, replicas.start(setup, "second")])
        return await collect(setup, until=lambda o: o.result_ids >= set(ids), timeout_s=90, settle_s=2)

    outputs = asyncio.run(scenario())
    replicas.stop()
    revoked = [e for e in first.events() if e.get("event") == "partitions released" and e.get("reason") == "revoked"]
    drained = [
        e for e in first.events() if e.get("event") == "draining in-flight jobs" and e.get("reason") == "revoked"
    ]
    report(
        f"revoke hand-over: jobs={len(ids)} drained_on_revoke={drained[0]['jobs'] if drained else 0} "
        f"duplicates={outputs.duplicates()}"
    )
    assert revoked and drained and drained[0]["jobs"] > 0, "the revoke found jobs in flight and let them finish"
    assert outputs.result_ids == set(ids)
    assert outputs.duplicates() == 0, "a revoke commits what it drained, so the new owner redoes nothing"
