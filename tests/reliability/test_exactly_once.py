"""Exactly-once delivery: consume, call, produce and commit offsets in one Kafka transaction.

On Apache Kafka, read_committed readers see each job's result once even when a replica is killed
mid-run. The embedded Tansu broker has no transactional producer: there the worker must refuse
to start in this mode, saying why, rather than quietly deliver at-least-once.
"""

import asyncio
import os
import subprocess
import sys

from tests.integration.helpers import (
    REPO,
    Outputs,
    Setup,
    broker_has_transactions,
    collect,
    job_bytes,
    make_topics,
    produce,
    provider_latency,
)

JOBS = 3000
PARTITIONS = 6
EXACTLY_ONCE = {
    "LLM_ROUTER__WORKER__DELIVERY": "exactly_once",
    "LLM_ROUTER__WORKER__COMMIT_INTERVAL_MS": 200,
    "LLM_ROUTER__WORKER__MAX_IN_FLIGHT": 200,
    # A killed replica's open transaction holds back read_committed readers until it times out.
    "LLM_ROUTER__KAFKA__TRANSACTION_TIMEOUT_MS": 6000,
}


def test_exactly_once_results_are_seen_once_despite_a_kill_or_the_mode_is_refused_without_transactions(
    bootstrap, replicas, summary
):
    setup = Setup(bootstrap, **EXACTLY_ONCE, **provider_latency(20))
    if not asyncio.run(broker_has_transactions(bootstrap)):
        # Tansu: the worker refuses the mode with the reason, and exits non-zero.
        asyncio.run(make_topics(setup))
        env = setup.process_env()
        done = subprocess.run(
            [sys.executable, "-m", "worker", "worker"], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1, done.stderr[-2000:]
        assert "exactly_once needs a broker with transactions" in done.stderr, done.stderr[-2000:]
        summary(
            "exactly-once: the broker has no transactions (embedded Tansu): "
            "the worker refused the mode with the reason (run on Apache Kafka: make test-kafka)"
        )
        return

    ids = [f"x{i:05d}" for i in range(JOBS)]
    facts = {}

    async def scenario() -> Outputs:
        await make_topics(setup, partitions=PARTITIONS)
        await replicas.start_settled(setup, 3, partitions=PARTITIONS)
        outputs = Outputs()
        collecting = asyncio.create_task(
            collect(
                setup,
                until=lambda o: o.result_ids >= set(ids),
                timeout_s=240,
                settle_s=8,
                outputs=outputs,
                isolation_level="read_committed",
            )
        )
        await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
        facts.update(
            await replicas.kill_busiest_at(outputs, JOBS // 3, setup, LLM_ROUTER__KAFKA__TRANSACTIONAL_ID="replacement")
        )
        await collecting
        return outputs

    outputs = asyncio.run(scenario())
    replicas.stop()
    missing = set(ids) - outputs.result_ids
    attempts = [(c.job_id, c.attempt) for c in outputs.costs]
    cost_duplicates = len(attempts) - len(set(attempts))
    summary(
        f"exactly-once (Apache Kafka): jobs={JOBS} kills=1 results={len(outputs.results)} "
        f"duplicates={outputs.duplicates()} cost-event duplicates={cost_duplicates} lost={len(missing)} "
        f"(results at the kill: {facts['results_at_kill']})"
    )
    assert facts["victim_partitions"] and facts["results_at_kill"] < JOBS, (
        "the kill happened mid-run on a replica that owned partitions"
    )
    assert not missing, f"{len(missing)} jobs have no result"
    assert outputs.duplicates() == 0, "a read_committed reader sees each result once"
    assert cost_duplicates == 0
    assert os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), "transactions only exist on the external Apache Kafka here"
