"""Parked jobs on Apache Kafka in exactly-once mode: the replica holding open batches is killed and then the
broker restarts, and every job still gets its result once, from the batches submitted before.

Apache Kafka only (marker apache_kafka, run by `make test-kafka`): the embedded Tansu keeps its topics in
memory, so a restart loses the parked jobs by design, and it has no transactions.
"""

import asyncio
import os
import time

import msgspec
import pytest

from tests.integration.helpers import Outputs, Setup, broker_has_transactions, collect, make_topics, produce
from tests.integration.helpers import simulator_providers as on_simulator
from tests.integration.test_batches import BATCHING, DAY, questions, serve, sim_get
from tests.integration.test_http_providers import KEYS
from tests.reliability.helpers import apache_kafka_dir, kafka_sh

pytestmark = pytest.mark.apache_kafka

OUTAGE_S = 4
EXACTLY_ONCE = {
    "LLM_ROUTER__WORKER__DELIVERY": "exactly_once",
    "LLM_ROUTER__WORKER__COMMIT_INTERVAL_MS": 200,
    # A killed replica's open transaction holds back read_committed readers until it times out.
    "LLM_ROUTER__KAFKA__TRANSACTION_TIMEOUT_MS": 6000,
}


def test_parked_jobs_survive_a_kill_and_a_broker_restart_and_each_gets_its_result_once(
    bootstrap, replicas, report, summary
):
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or not asyncio.run(broker_has_transactions(bootstrap)):
        pytest.fail(
            "this test needs Apache Kafka, which it restarts: run it with make test-kafka "
            "(the embedded Tansu keeps no topic across a restart and has no transactions)",
            pytrace=False,
        )
    kafka_dir = apache_kafka_dir()
    port = bootstrap.split(",")[0].rpartition(":")[2]
    jobs = questions("parked", 40, DAY, seed=9)
    ids = {j.id for j in jobs}
    stopped = False

    async def scenario():
        nonlocal stopped
        server, url = await serve(batch_latency_s=20_000.0)  # twenty seconds: open across the kill and the restart
        setup = Setup(bootstrap, **BATCHING, **EXACTLY_ONCE, **on_simulator(url))
        try:
            await make_topics(setup)
            group = await replicas.start_settled(setup, 2, **KEYS)
            outputs = Outputs()  # read all along, across the outage
            collecting = asyncio.create_task(
                collect(
                    setup,
                    until=lambda o: o.result_ids >= ids,
                    timeout_s=180,
                    settle_s=3,
                    outputs=outputs,
                    isolation_level="read_committed",
                )
            )
            await produce(setup, [(j.id.encode(), msgspec.json.encode(j)) for j in jobs])
            while sum(batched(r) for r in group) < len(jobs):
                assert not collecting.done(), "the run ended before the batches were submitted"
                await asyncio.sleep(0.1)
            victim = max(group, key=batched)
            victim.kill()
            await asyncio.to_thread(kafka_sh, "stop", "--dir", kafka_dir)
            stopped = True
            await asyncio.sleep(OUTAGE_S)
            started = time.monotonic()
            await asyncio.to_thread(kafka_sh, "start", "--dir", kafka_dir, "--port", port)
            stopped = False
            restart_s = time.monotonic() - started
            await collecting
            requests = await asyncio.to_thread(sim_get, url, "/_sim/requests?limit=1000")
            lines = [r for r in requests if r["via"] == "batch"]
            return outputs, batched(victim), lines, restart_s
        finally:
            await server.stop()

    def batched(replica) -> int:
        return sum(e["jobs"] for e in replica.events() if e.get("event") == "batch submitted")

    try:
        outputs, by_victim, lines, restart_s = asyncio.run(scenario())
    finally:
        replicas.stop()
        if stopped:  # the other tests of the session need their broker back
            kafka_sh("start", "--dir", kafka_dir, "--port", port)
    results = {r.job_id: r for r in outputs.results}
    batch_events = [e for e in outputs.costs if e.via == "batch"]
    summary(
        f"parked jobs across a SIGKILL and a broker restart (Apache Kafka, exactly-once): jobs={len(jobs)} "
        f"results={len(outputs.results)} duplicates={outputs.duplicates()} lost={len(ids - set(results))}"
    )
    report(
        f"parked jobs, exactly-once: the victim had batched {by_victim} jobs; the broker took {restart_s:.1f} s to "
        f"start again; batch lines at the simulator {len(lines)}, batch cost events {len(batch_events)}"
    )
    assert by_victim, "the killed replica held open batches"
    assert set(results) == ids and outputs.duplicates() == 0, "each job's result once: none lost, none twice"
    # The batches submitted before the kill and the restart answered every job: none was submitted again.
    assert len(lines) == len(jobs) + sum(1 for r in results.values() for a in r.attempts[1:] if a.via == "batch")
    assert len(batch_events) == len(lines), "one cost event per batch line, once"
