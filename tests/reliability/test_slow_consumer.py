"""A results consumer that reads one record a second, and one that never reads: the worker still
processes and commits every job at its own pace. Kafka keeps the results for them; nothing waits."""

import asyncio
import time

from aiokafka import TopicPartition

from tests.integration.helpers import Setup, collect, job_bytes, make_topics, produce
from tests.reliability.helpers import crashes, wait_committed
from worker.pipeline.kafka import make_consumer

JOBS = 3000
WARM_UP = 300
PARTITIONS = 4


def test_a_slow_or_absent_results_consumer_never_slows_the_worker(bootstrap, replicas, report, summary):
    setup = Setup(bootstrap)
    worker = replicas.start(setup, "worker")
    slow = {"read": 0}

    async def run_batch(prefix: str, count: int) -> tuple[float, dict[int, int]]:
        """Produce `count` jobs and wait until the worker committed them all; the jobs a second it took."""
        ids = [f"{prefix}-{i:05d}" for i in range(count)]
        started = time.monotonic()
        ends = await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
        positions, reached = await wait_committed(setup, ends, timeout_s=120, interval_s=0.05)
        assert reached is not None, f"the worker did not commit the {prefix} batch to its end: {positions} vs {ends}"
        return count / (time.monotonic() - started), ends

    async def slow_reader(stop: asyncio.Event, reading: asyncio.Event) -> None:
        """A group consumer of the results topic: one record, commit, then a second's sleep."""
        consumer = make_consumer(setup.config.kafka, group_id=f"slow-{setup.run_id}", max_poll_records=1)
        consumer.subscribe([setup.topics.results])
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=1)
                for records in batch.values():
                    slow["read"] += len(records)
                if batch:
                    await consumer.commit()
                    reading.set()
                    await asyncio.sleep(1)
        finally:
            await consumer.stop()

    async def scenario():
        await make_topics(setup, partitions=PARTITIONS)
        await worker.wait_assigned()
        await run_batch("warm", WARM_UP)
        alone, _ = await run_batch("alone", JOBS)
        idle = make_consumer(setup.config.kafka, group_id=f"idle-{setup.run_id}")  # joins, never reads
        idle.subscribe([setup.topics.results])
        await idle.start()
        stop, reading = asyncio.Event(), asyncio.Event()
        reader = asyncio.create_task(slow_reader(stop, reading))
        try:
            await asyncio.wait_for(reading.wait(), 60)
            read_before = slow["read"]
            beside, _ = await run_batch("beside", JOBS)
            read_during = slow["read"] - read_before
        finally:
            stop.set()
            await reader
            await idle.stop()
        outputs = await collect(setup, until=lambda o: len(o.result_ids) >= WARM_UP + 2 * JOBS, timeout_s=60)
        lag_consumer = make_consumer(setup.config.kafka, group_id=f"slow-{setup.run_id}")
        await lag_consumer.start()
        try:
            tps = [TopicPartition(setup.topics.results, p) for p in range(PARTITIONS)]
            slow_committed = sum([(await lag_consumer.committed(tp)) or 0 for tp in tps])
        finally:
            await lag_consumer.stop()
        return alone, beside, read_during, outputs, slow_committed

    alone, beside, read_during, outputs, slow_committed = asyncio.run(scenario())
    alive = worker.process.poll() is None
    worker.stop()
    results = len(outputs.results)
    summary(
        f"slow consumer: jobs={JOBS} worker alone {alone:.0f} jobs/s, "
        f"beside a 1 record/s reader and an idle one {beside:.0f} jobs/s; "
        f"the slow reader read {read_during} meanwhile, committed {slow_committed} of {results} results"
    )
    report(
        f"slow consumer: worker throughput alone {alone:.0f} jobs/s, "
        f"with a slow and an idle results consumer {beside:.0f} jobs/s"
    )
    assert alive and not crashes(worker)
    assert outputs.result_ids >= {f"beside-{i:05d}" for i in range(JOBS)}, (
        "every job of the batch has its result on the topic"
    )
    assert read_during < JOBS // 10, (
        f"the slow reader read {read_during} results while the worker finished {JOBS}: it was not slow"
    )
    assert slow_committed < results // 10, "the slow reader is far behind the results topic, and that held nothing up"
