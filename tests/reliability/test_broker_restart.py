"""The broker goes away mid-run and comes back: the same worker process reconnects by itself.

On Apache Kafka (scripts/test-on-kafka.sh) the broker restarts on its data directory and port, so the
run goes on where it was: every job gets its result. On the embedded Tansu broker, which keeps
everything in memory, the test runs a broker of its own and starts an empty one on the same port:
the topics are created again and a fresh batch of jobs is produced, which the same worker process
must process, having survived the outage.
"""

import asyncio
import os
import signal
import time

import pytest

from tests.integration.helpers import (
    Outputs,
    ReplaceableBroker,
    Replicas,
    Setup,
    WorkerProcess,
    collect,
    job_bytes,
    make_topics,
    produce,
    provider_latency,
)
from tests.reliability.helpers import (
    all_or_stalled,
    apache_kafka_dir,
    crashes,
    kafka_sh,
    starts,
    wait_committed,
    wait_progress,
)

OUTAGE_S = 4
PROGRESS_AT_STOP = 300  # jobs committed when the broker stops
# Slow enough that the broker stops with most of the jobs still to do.
SLOW = {"LLM_ROUTER__WORKER__MAX_IN_FLIGHT": 50, **provider_latency(200)}


def publish_retries(worker: WorkerProcess) -> int:
    return sum(1 for e in worker.events() if e.get("event") == "publish failed, retrying")


def assert_survived(worker: WorkerProcess) -> None:
    assert worker.process.poll() is None, (
        f"the worker exited with {worker.process.returncode} during the outage: {worker.log_path.read_text()[-3000:]}"
    )
    assert starts(worker) == 1, "the worker process started once and was never restarted"
    assert not crashes(worker), f"the worker logged crashes: {crashes(worker)[:3]}"


@pytest.mark.xdist_group("heavy")  # several worker processes, kills or outages: one heavy test at a time
def test_after_a_broker_restart_the_same_worker_process_reconnects_by_itself_and_every_job_gets_its_result(
    bootstrap, tmp_path, replicas, report, summary
):
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        restart_apache_kafka(bootstrap, apache_kafka_dir(), replicas, report, summary)
    else:
        replace_tansu(tmp_path, replicas, report, summary)


def restart_apache_kafka(bootstrap: str, kafka_dir: str, replicas: Replicas, report, summary) -> None:
    port = bootstrap.split(",")[0].rpartition(":")[2]
    setup = Setup(bootstrap, **SLOW)
    ids = [f"restart-{i:05d}" for i in range(3000)]
    worker = replicas.start(setup, "worker")
    stopped = False
    facts: dict = {}

    async def scenario():
        nonlocal stopped
        await make_topics(setup, partitions=4)
        await worker.wait_assigned()
        outputs = Outputs()  # read all along, across the outage (the reader reconnects like the worker)
        collecting = asyncio.create_task(
            collect(setup, until=lambda o: o.result_ids >= set(ids), timeout_s=240, settle_s=1, outputs=outputs)
        )
        ends = await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
        facts["committed_at_stop"] = await wait_progress(setup, list(ends), PROGRESS_AT_STOP, timeout_s=60)
        await asyncio.to_thread(kafka_sh, "stop", "--dir", kafka_dir)
        stopped = True
        await asyncio.sleep(OUTAGE_S)
        assert worker.process.poll() is None, "the worker is still running while the broker is down"
        started = time.monotonic()
        await asyncio.to_thread(kafka_sh, "start", "--dir", kafka_dir, "--port", port)
        stopped = False
        facts["broker_start_s"] = round(time.monotonic() - started, 1)
        await collecting
        positions, _ = await wait_committed(setup, ends, timeout_s=30)
        return outputs, ends, positions

    try:
        outputs, ends, positions = asyncio.run(scenario())
        assert_survived(worker)
    finally:
        worker.stop()
        if stopped:  # the other tests of the session need their broker back
            kafka_sh("start", "--dir", kafka_dir, "--port", port)
    missing = set(ids) - outputs.result_ids
    summary(
        f"broker restart (Apache Kafka): jobs={len(ids)} committed_at_stop={facts['committed_at_stop']} "
        f"outage={OUTAGE_S}s+start duplicates={outputs.duplicates()} lost={len(missing)}"
    )
    report(
        f"broker restart (Apache Kafka): the broker took {facts['broker_start_s']} s to start again; "
        f"the worker logged {publish_retries(worker)} publish retries"
    )
    assert facts["committed_at_stop"] < len(ids), "the broker stopped mid-run"
    assert not missing, f"{len(missing)} jobs have no result after the restart, e.g. {sorted(missing)[:5]}"
    assert all(r.status == "ok" for r in outputs.results)
    assert positions == ends, (
        f"the worker committed every partition to its end after the restart: {positions} vs {ends}"
    )


def replace_tansu(tmp_path, replicas: Replicas, report, summary) -> None:
    broker = ReplaceableBroker(tmp_path)
    setup = Setup(broker.bootstrap_servers, **SLOW)
    before_ids = [f"before-{i:05d}" for i in range(3000)]
    after_ids = [f"after-{i:05d}" for i in range(500)]
    worker = replicas.start(setup, "worker")
    facts: dict = {}

    async def scenario() -> tuple[Outputs, dict[int, int], dict[int, int | None]]:
        await make_topics(setup, partitions=4)
        await worker.wait_assigned()
        ends_before = await produce(setup, [(i.encode(), job_bytes(i)) for i in before_ids])
        facts["committed_at_stop"] = await wait_progress(setup, list(ends_before), PROGRESS_AT_STOP, timeout_s=60)
        broker.stop()  # everything it held is gone: topics, jobs, the group and its offsets
        await asyncio.sleep(OUTAGE_S)
        assert worker.process.poll() is None, (
            f"the worker exited while the broker was down: {worker.log_path.read_text()[-3000:]}"
        )
        # The worker is held while the new broker starts and the topics are created again. Otherwise its
        # producer, whose metadata still has the old broker's topics, sends the outputs it holds the moment
        # the port answers: Tansu (0.6.0) accepts a produce to a topic that does not exist, and creating the
        # topic then resets the partition's offsets to 0 over the batches already stored, so later batches
        # are acknowledged at offsets inside earlier ones and no consumer ever reads them. Apache Kafka
        # refuses such a produce (UNKNOWN_TOPIC_OR_PARTITION) and the client retries.
        worker.signal(signal.SIGSTOP)
        try:
            broker.replace()
            await make_topics(setup, partitions=4)
        finally:
            worker.signal(signal.SIGCONT)
        ends = await produce(setup, [(i.encode(), job_bytes(i)) for i in after_ids])
        outputs = await collect(setup, until=all_or_stalled(set(after_ids), stall_s=20), timeout_s=90, settle_s=1)
        positions, _ = await wait_committed(setup, ends, timeout_s=10)
        return outputs, ends, positions

    try:
        outputs, ends, positions = asyncio.run(scenario())
        assert_survived(worker)
    finally:
        worker.stop()
        broker.close()
    missing = set(after_ids) - outputs.result_ids
    after = [r for r in outputs.results if r.job_id.startswith("after-")]
    summary(
        f"broker restart (Tansu, replaced empty): jobs_before={len(before_ids)} "
        f"committed_at_stop={facts['committed_at_stop']} outage={OUTAGE_S}s jobs_after={len(after_ids)} "
        f"duplicates_after={len(after) - len({r.job_id for r in after})} lost_after={len(missing)}"
    )
    report(f"broker restart (Tansu): the worker logged {publish_retries(worker)} publish retries during the outage")
    assert facts["committed_at_stop"] < len(before_ids), "the broker stopped mid-run"
    assert not missing, (
        f"{len(missing)} of the {len(after_ids)} jobs produced after the outage have no result, "
        f"e.g. {sorted(missing)[:5]}; "
        f"the group's committed offsets {positions}, the jobs topic's ends {ends}"
    )
    assert all(r.status == "ok" for r in after)
    assert positions == ends, f"the worker committed the new jobs topic to its end: {positions} vs {ends}"
