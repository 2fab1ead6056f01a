"""The outbox's acknowledgements, batch by batch: a job is finished once each of its outputs is
acknowledged, in the turn of the event loop after its last batch's; a failed batch sends its jobs again,
and what their earlier sending gets afterwards no longer counts. The delivery futures are asyncio
futures, as aiokafka's `send_batch` returns them; the broker's side is in tests/integration/test_outbox.py."""

import asyncio

import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import RecordMetadata, TopicPartition

from worker.pipeline.outbox import Outbox, _Entry, _Listed


def _landed(partition: int, offset: int) -> RecordMetadata:
    return RecordMetadata("llm.results", partition, TopicPartition("llm.results", partition), offset, 0, 0, 0)


def _two_batches(outbox: Outbox, done: list[str]) -> tuple[dict[str, _Entry], list[asyncio.Future]]:
    """Three jobs of two outputs each over two batches, as `_send` places them: a's and b's results in
    the first, b's and c's cost events in the second, and (the second batch still open) c's result too.
    Jobs from different flushes share a batch: the second holds c's result appended after b's output."""
    entries = {
        name: _Entry(
            outputs=[("llm.results", name.encode(), b"r", []), ("llm.costs", name.encode(), b"c", [])],
            done=lambda name=name: done.append(name),
            spans=None,
        )
        for name in "abc"
    }
    for entry in entries.values():
        outbox._unacknowledged += 1
        entry.unacknowledged = 2  # as `_send` sets it
    loop = asyncio.get_running_loop()
    futures = [loop.create_future(), loop.create_future()]
    first = [(entries["a"], 0, 0), (entries["b"], 0, 0)]
    second = [(entries["b"], 1, 0), (entries["c"], 1, 0), (entries["c"], 0, 0), (entries["a"], 1, 0)]
    futures[0].add_done_callback(lambda f: outbox._landed(("llm.results", 0), first, f))
    futures[1].add_done_callback(lambda f: outbox._landed(("llm.costs", 1), second, f))
    return entries, futures


def test_a_job_finishes_one_turn_after_its_last_outputs_acknowledgement_and_once():
    async def scenario() -> None:
        outbox, done = Outbox(None), []  # type: ignore[arg-type]  # nothing is sent here
        _, futures = _two_batches(outbox, done)
        futures[1].set_result(_landed(1, 10))
        await asyncio.sleep(0)
        assert done == ["c"], "c had both its outputs in the second batch; a and b each had one in the first"
        futures[0].set_result(_landed(0, 20))
        await asyncio.sleep(0)  # one turn: the future's callbacks run in it
        assert done == ["c", "a", "b"]
        for _ in range(3):
            await asyncio.sleep(0)
        assert done == ["c", "a", "b"] and outbox.unacknowledged == 0, "each job is finished once"

    asyncio.run(scenario())


def test_a_failed_batch_sends_its_jobs_again_and_their_earlier_acknowledgements_no_longer_count():
    async def scenario() -> None:
        outbox, done = Outbox(None), []  # type: ignore[arg-type]  # no producer: nothing is sent here
        entries, futures = _two_batches(outbox, done)
        futures[0].set_exception(KafkaConnectionError("the broker went away"))
        await asyncio.sleep(0)
        assert done == [] and [e.failures for e in entries.values()] == [1, 1, 0], "a and b go again"
        assert outbox.unacknowledged == 3 and len(outbox._retries) == 1
        futures[1].set_result(_landed(1, 10))
        await asyncio.sleep(0)
        # c is finished; a's and b's outputs in the second batch belong to their failed sending: they must
        # not count as acknowledgements (b would finish before its outputs are sent again), and the
        # sending again counts from its own start.
        assert done == ["c"] and entries["a"].unacknowledged == entries["b"].unacknowledged == 2
        assert outbox.unacknowledged == 2
        await outbox.close()

    asyncio.run(scenario())


def test_a_cancelled_delivery_counts_as_failed():
    async def scenario() -> None:
        outbox, done = Outbox(None), []  # type: ignore[arg-type]  # no producer: nothing is sent here
        entries, futures = _two_batches(outbox, done)
        futures[1].cancel()
        futures[0].set_result(_landed(0, 20))
        await asyncio.sleep(0)
        assert done == [] and [e.failures for e in entries.values()] == [1, 1, 1]
        assert outbox.unacknowledged == 3 and len(outbox._retries) == 1
        await outbox.close()

    asyncio.run(scenario())


def test_a_job_without_outputs_is_done_at_once():
    async def scenario() -> None:
        outbox, done = Outbox(None), []  # type: ignore[arg-type]  # no producer: nothing is sent here
        outbox.put([], lambda: done.append("x"))
        await asyncio.sleep(0)
        assert done == ["x"] and outbox.unacknowledged == 0

    asyncio.run(scenario())


def test_a_finished_record_counts_for_every_job_it_lists_and_its_failure_sends_them_again_whole():
    async def scenario() -> None:
        outbox, done = Outbox(None), []  # type: ignore[arg-type]  # no producer: nothing is sent here
        entries, futures = _two_batches(outbox, done)
        for entry in entries.values():
            entry.unacknowledged += 1  # each is listed in a finished record too, as `_send` counts it
        loop = asyncio.get_running_loop()
        listing = [loop.create_future(), loop.create_future()]
        # a and b listed in one finished record (of their jobs partition), c in another batch's.
        first = [(_Listed(jobs=[(entries["a"], 0), (entries["b"], 0)]), -1, 0)]
        second = [(_Listed(jobs=[(entries["c"], 0)]), -1, 0)]
        listing[0].add_done_callback(lambda f: outbox._landed(("llm.finished", 0), first, f))
        listing[1].add_done_callback(lambda f: outbox._landed(("llm.finished", 1), second, f))
        futures[0].set_result(_landed(0, 20))
        futures[1].set_result(_landed(1, 10))
        await asyncio.sleep(0)
        assert done == [], "every output is acknowledged, the finished records not yet"
        listing[0].set_result(_landed(0, 5))
        await asyncio.sleep(0)
        assert done == ["a", "b"], "one finished record's acknowledgement finishes each job it lists"
        listing[1].set_exception(KafkaConnectionError("the broker went away"))
        await asyncio.sleep(0)
        assert done == ["a", "b"] and entries["c"].failures == 1, "c goes again, whole"
        assert outbox.unacknowledged == 1 and len(outbox._retries) == 1
        await outbox.close()

    asyncio.run(scenario())


def test_listing_a_job_in_a_finished_record_needs_the_records_maker():
    async def scenario() -> None:
        outbox = Outbox(None)  # type: ignore[arg-type]  # no producer: nothing is sent here
        with pytest.raises(ValueError, match="FinishedRecords"):
            outbox.put([], lambda: None, finished=(0, "job-1"))

    asyncio.run(scenario())
