"""Resumed: a coroutine whose first step was driven by hand, carried on in the awaiting task."""

import asyncio

import pytest

from worker.pipeline.resumed import Resumed


def first_step(coroutine):
    """Drive a coroutine's first step by hand, as the worker does: what it waits for."""
    return coroutine.send(None)


def test_the_coroutine_goes_on_to_its_return_value_in_the_awaiting_task():
    async def job(seen: list) -> int:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0.01)
        seen.append(asyncio.current_task())
        return 42

    async def scenario():
        seen: list = []
        coroutine = job(seen)
        waiting_on = first_step(coroutine)
        value = await Resumed(coroutine, waiting_on)
        return value, seen, asyncio.current_task()

    value, seen, task = asyncio.run(scenario())
    assert value == 42 and seen == [task, task]


def test_a_cancellation_of_the_task_reaches_the_coroutine_which_may_answer_it():
    async def job(log: list) -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            log.append("cancelled")
            asyncio.current_task().uncancel()  # as the job deadline does: the job ends with a result
            return "deadline"
        return "slept"

    async def carried(log: list) -> str:
        coroutine = job(log)
        return await Resumed(coroutine, first_step(coroutine))

    async def scenario():
        log: list = []
        task = asyncio.create_task(carried(log))
        await asyncio.sleep(0.01)
        task.cancel()
        return await task, log

    assert asyncio.run(scenario()) == ("deadline", ["cancelled"])


def test_an_unanswered_cancellation_and_an_error_come_out_of_it():
    async def sleeps():
        await asyncio.sleep(30)

    async def fails():
        await asyncio.sleep(0)
        raise ValueError("bad")

    async def carried(make):
        coroutine = make()
        return await Resumed(coroutine, first_step(coroutine))

    async def scenario():
        sleeping = asyncio.create_task(carried(sleeps))
        await asyncio.sleep(0.01)
        sleeping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeping
        with pytest.raises(ValueError, match="bad"):
            await carried(fails)

    asyncio.run(scenario())
