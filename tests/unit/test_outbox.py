"""The outbox's watch over a flush's batches: each job is finished once every batch holding one of its
outputs is acknowledged, one turn of the event loop after the last acknowledgement, and a failed batch
sends its jobs again instead. The delivery futures are asyncio futures, as aiokafka's `send_batch`
returns them; the broker's side is tested in tests/integration/test_outbox.py."""

import asyncio

from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import RecordMetadata, TopicPartition

from worker.outbox import Outbox, _Entry


def _landed(partition: int, offset: int) -> RecordMetadata:
    return RecordMetadata("llm.results", partition, TopicPartition("llm.results", partition), offset, 0, 0, 0)


def _flush(outbox: Outbox, done: list[str]) -> tuple[list[_Entry], list[asyncio.Future]]:
    """Three jobs over two batches: a's and b's results in the first, b's and c's cost events in the second."""
    entries = {name: _Entry([("llm.results", name.encode(), b"r", []), ("llm.costs", name.encode(), b"c", [])], lambda name=name: done.append(name), None) for name in "abc"}
    outbox._unacknowledged += len(entries)  # noqa: SLF001 - as `put` counts them
    loop = asyncio.get_running_loop()
    futures = [loop.create_future(), loop.create_future()]
    sends = [
        (("llm.results", 0), None, [(entries["a"], 0), (entries["b"], 0)]),
        (("llm.costs", 1), None, [(entries["b"], 1), (entries["c"], 1)]),
    ]
    outbox._watch(list(entries.values()), sends, futures)  # noqa: SLF001
    return list(entries.values()), futures


def test_jobs_finish_one_turn_after_the_last_acknowledgement_of_their_flush():
    async def scenario() -> None:
        outbox, done = Outbox(None), []  # type: ignore[arg-type]  # `_watch` sends nothing
        _, futures = _flush(outbox, done)
        futures[1].set_result(_landed(1, 10))
        for _ in range(3):
            await asyncio.sleep(0)
        assert done == [], "no job is finished before every batch of its flush is acknowledged"
        futures[0].set_result(_landed(0, 20))
        await asyncio.sleep(0)  # one turn: the futures' callbacks run in it
        assert done == ["a", "b", "c"]
        for _ in range(3):
            await asyncio.sleep(0)
        assert done == ["a", "b", "c"] and outbox.unacknowledged == 0, "each job is finished once"

    asyncio.run(scenario())


def test_a_failed_batch_sends_its_jobs_again_and_the_others_finish():
    async def scenario() -> None:
        outbox, done = Outbox(None), []  # type: ignore[arg-type]
        entries, futures = _flush(outbox, done)
        futures[0].set_result(_landed(0, 20))
        futures[1].set_exception(KafkaConnectionError("the broker went away"))
        await asyncio.sleep(0)
        assert done == ["a"], "b and c had an output in the failed batch"
        assert outbox.unacknowledged == 2 and len(outbox._retries) == 1  # noqa: SLF001
        assert [e.failures for e in entries] == [0, 1, 1]
        await outbox.close()

    asyncio.run(scenario())


def test_a_cancelled_delivery_counts_as_failed():
    async def scenario() -> None:
        outbox, done = Outbox(None), []  # type: ignore[arg-type]
        _, futures = _flush(outbox, done)
        futures[1].set_result(_landed(1, 10))
        futures[0].cancel()
        await asyncio.sleep(0)
        assert done == ["c"] and outbox.unacknowledged == 2 and len(outbox._retries) == 1  # noqa: SLF001
        await outbox.close()

    asyncio.run(scenario())
