"""Three replicas in separate processes; one is SIGKILLed mid-run and another started: nothing lost."""

import asyncio

from tests.integration.helpers import Outputs, Setup, WorkerProcess, collect, job_bytes, make_topics, produce

JOBS = 2000
MAX_IN_FLIGHT = 40
COMMIT_INTERVAL_MS = 100
LATENCY_MS = 200


def test_sigkill_of_a_replica_loses_no_job_and_duplicates_stay_bounded(bootstrap, tmp_path):
    setup = Setup(
        bootstrap,
        LLM_ROUTER__WORKER__MAX_IN_FLIGHT=MAX_IN_FLIGHT,
        LLM_ROUTER__WORKER__COMMIT_INTERVAL_MS=COMMIT_INTERVAL_MS,
        **{f"LLM_ROUTER__PROVIDERS__{p}__LATENCY_MS": LATENCY_MS for p in ("OPENAI", "ANTHROPIC", "GEMINI", "LLAMA")},
    )
    ids = [f"k{i:05d}" for i in range(JOBS)]
    replicas: list[WorkerProcess] = []
    report = {}

    async def scenario() -> Outputs:
        await make_topics(setup, partitions=4)
        replicas.extend(WorkerProcess(setup, tmp_path, f"replica-{n}") for n in range(3))
        for replica in replicas:
            await replica.wait_assigned()
        await settle_assignment(replicas)
        outputs = Outputs()
        collecting = asyncio.create_task(collect(setup, until=lambda o: o.result_ids >= set(ids), timeout_s=240, settle_s=3, outputs=outputs))
        await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
        while len(outputs.result_ids) < JOBS // 4:
            await asyncio.sleep(0.02)
        victim = max(replicas, key=lambda r: len(r.assigned()))
        report["victim_partitions"] = victim.assigned()
        report["results_at_kill"] = len(outputs.result_ids)
        victim.kill()
        replicas.append(WorkerProcess(setup, tmp_path, "replica-3"))
        await collecting
        return outputs

    try:
        outputs = asyncio.run(scenario())
    finally:
        for replica in replicas:
            replica.stop()
    missing = set(ids) - outputs.result_ids
    duplicates = outputs.duplicates()
    bound = MAX_IN_FLIGHT * (1 + (COMMIT_INTERVAL_MS + LATENCY_MS - 1) // LATENCY_MS)
    print(f"\nSIGKILL run: jobs={JOBS} results={len(outputs.results)} missing={len(missing)} duplicates={duplicates} bound={bound} {report}")
    assert report["victim_partitions"], "the killed replica owned partitions"
    assert report["results_at_kill"] < JOBS, "the kill happened mid-run"
    assert not missing, f"{len(missing)} jobs have no result"
    assert duplicates <= bound, f"{duplicates} duplicates, over the in-flight bound {bound}"
    assert all(r.status == "ok" for r in outputs.results)


async def settle_assignment(replicas: list[WorkerProcess], timeout_s: float = 60) -> None:
    """Wait until the group's partitions are spread over every replica (no rebalance pending)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        owned = [r.assigned() for r in replicas]
        if all(owned) and sorted(p for ps in owned for p in ps) == [0, 1, 2, 3]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the assignment did not settle: {[r.assigned() for r in replicas]}")
