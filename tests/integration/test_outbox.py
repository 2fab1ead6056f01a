"""The outbox against a real broker: batches per topic partition, acknowledged before `done`."""

import asyncio

import msgspec
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from tests.integration.helpers import Setup, make_topics
from worker.pipeline.dedupe import IDS_PER_RECORD, FinishedBatch, FinishedRecords
from worker.pipeline.kafka import make_producer
from worker.pipeline.outbox import Outbox


async def read(bootstrap: str, topics: list[str], count: int | None, seconds: int = 30) -> list:
    """The records of `topics` from their beginning: until `count` are read (None: all that come), at most
    `seconds` (a lost output shows as a short list, not a hang)."""
    reader = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await reader.start()
    records: list = []
    try:
        for _ in range(seconds):
            for batch in (await reader.getmany(timeout_ms=1000)).values():
                records.extend(batch)
            if count is not None and len(records) >= count:
                break
    finally:
        await reader.stop()
    return records


def test_outputs_land_where_the_default_partitioner_puts_them_and_done_follows_the_acknowledgement(bootstrap):
    setup = Setup(bootstrap)
    topics = setup.config.kafka.topics

    async def scenario():
        await make_topics(setup)
        producer = make_producer(setup.config.kafka)
        await producer.start()
        outbox = Outbox(producer)
        done: list[int] = []
        try:
            for n in range(600):
                key = f"job-{n}".encode()
                outputs = [
                    (topics.costs, key, b'{"cost": %d}' % n, []),
                    (topics.results, key, b'{"result": %d}' % n, [("traceparent", b"tp-%d" % n)]),
                ]
                if n % 100 == 0:
                    outputs.append((topics.dlq, None, b"letter %d" % n, [("error_kind", b"not_json")]))
                outbox.put(outputs, lambda n=n: done.append(n))
            assert outbox.unacknowledged == 600 and not done, "nothing is done before the broker acknowledged it"
            assert await outbox.settled(30)
            assert outbox.unacknowledged == 0
        finally:
            await outbox.close()
            await producer.stop()
        return done, await read(bootstrap, [topics.costs, topics.results, topics.dlq], 1206)

    done, records = asyncio.run(scenario())
    assert sorted(done) == list(range(600))
    partitioner = DefaultPartitioner()
    keyed = [r for r in records if r.key is not None]
    assert len(keyed) == 1200 and len(records) == 1206
    assert all(r.partition == partitioner(r.key, [0, 1, 2, 3], [0, 1, 2, 3]) for r in keyed)
    results = {r.key: r for r in records if r.topic == topics.results}
    assert results[b"job-7"].value == b'{"result": 7}' and dict(results[b"job-7"].headers) == {"traceparent": b"tp-7"}
    letters = [r for r in records if r.topic == topics.dlq]
    assert sorted(r.value for r in letters) == sorted(b"letter %d" % n for n in range(0, 600, 100))
    assert all(dict(r.headers) == {"error_kind": b"not_json"} for r in letters)


def test_outputs_beyond_a_full_batch_go_in_the_next_one_in_their_order(bootstrap):
    setup = Setup(bootstrap)
    topics = setup.config.kafka.topics

    async def scenario():
        await make_topics(setup)
        producer = make_producer(setup.config.kafka, max_batch_size=16_384)
        await producer.start()
        outbox = Outbox(producer)
        done: list[int] = []
        try:
            # 200 jobs of 3 KB on one key: each batch of the partition holds five, so one flush makes 40.
            for n in range(200):
                outbox.put([(topics.results, b"one-key", b"%05d" % n + b"x" * 3000, [])], lambda n=n: done.append(n))
            assert await outbox.settled(30)
        finally:
            await outbox.close()
            await producer.stop()
        return done, await read(bootstrap, [topics.results], 200)

    done, records = asyncio.run(scenario())
    assert sorted(done) == list(range(200))
    assert len({r.partition for r in records}) == 1 and [int(r.value[:5]) for r in records] == list(range(200))
    assert [r.offset for r in records] == list(range(records[0].offset, records[0].offset + 200))


def test_jobs_listed_in_finished_records_land_on_their_jobs_partitions_number_and_done_follows(bootstrap):
    setup = Setup(bootstrap)
    topics = setup.config.kafka.topics

    async def scenario():
        await make_topics(setup)
        producer = make_producer(setup.config.kafka)
        await producer.start()
        outbox = Outbox(producer, FinishedRecords(topics.finished))
        done: list[int] = []
        try:
            # One flush: 600 jobs of each of 4 jobs partitions, each with its result and listed as finished.
            for n in range(2400):
                key = f"job-{n}".encode()
                outbox.put([(topics.results, key, b"r", [])], lambda n=n: done.append(n), finished=(n % 4, f"job-{n}"))
            assert await outbox.settled(30)
        finally:
            await outbox.close()
            await producer.stop()
        return done, await read(bootstrap, [topics.finished], None, seconds=10)

    done, records = asyncio.run(scenario())
    assert sorted(done) == list(range(2400))
    listed = [(r.partition, msgspec.json.decode(r.value, type=FinishedBatch)) for r in records]
    assert all(partition == batch.jobs_partition for partition, batch in listed), "on the jobs partition's number"
    ids = sorted(job_id for _, batch in listed for job_id in batch.ids)
    assert ids == sorted(f"job-{n}" for n in range(2400)), "each job listed once"
    assert all(int(job_id[4:]) % 4 == batch.jobs_partition for _, batch in listed for job_id in batch.ids)
    # At most IDS_PER_RECORD ids a record: 500 and 100 for each jobs partition.
    assert sorted(len(batch.ids) for _, batch in listed) == [100] * 4 + [IDS_PER_RECORD] * 4
    assert len({r.key for r in records}) == len(records), "each record keyed anew: compaction keeps them all"
