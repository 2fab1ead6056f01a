"""Job deadlines: one timer for all, cancelling like asyncio.timeout, never early."""

import asyncio
import time

import pytest

from worker.timers import TICK_S, Deadlines


async def _job(deadlines: Deadlines, seconds: float) -> str:
    deadline = deadlines.start()
    try:
        await asyncio.sleep(seconds)
        return "done"
    except asyncio.CancelledError:
        if deadline.timed_out():
            return "deadline"
        raise
    finally:
        deadlines.end(deadline)


def test_a_deadline_cancels_its_job_on_time_and_not_before():
    async def scenario():
        deadlines = Deadlines(0.2)
        started = time.monotonic()
        slow = asyncio.create_task(_job(deadlines, 5))
        quick = asyncio.create_task(_job(deadlines, 0.05))
        results = await asyncio.gather(slow, quick)
        return results, time.monotonic() - started, deadlines.watched

    (slow, quick), took, watched = asyncio.run(scenario())
    assert (slow, quick) == ("deadline", "done")
    assert 0.2 <= took < 0.2 + TICK_S + 0.15, took
    assert watched == 0, "ended deadlines are forgotten"


def test_many_deadlines_share_one_timer_and_fire_in_order():
    async def scenario():
        deadlines = Deadlines(0.1)
        tasks = []
        for _ in range(5):
            tasks.append(asyncio.create_task(_job(deadlines, 5)))
            await asyncio.sleep(0.03)
        ended = []
        for task in asyncio.as_completed(tasks):
            ended.append((await task, time.monotonic()))
        return ended

    ended = asyncio.run(scenario())
    assert [r for r, _ in ended] == ["deadline"] * 5
    times = [t for _, t in ended]
    assert times == sorted(times)


def test_another_cancellation_is_not_taken_for_the_deadline():
    async def scenario():
        deadlines = Deadlines(0.1)
        task = asyncio.create_task(_job(deadlines, 5))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return deadlines.watched

    assert asyncio.run(scenario()) == 0


def test_a_cancellation_during_an_expired_deadline_still_propagates():
    async def scenario():
        task = None

        class AlsoCancelled(Deadlines):
            def _expire(self) -> None:
                super()._expire()
                task.cancel()  # its owner cancels it too, before it runs again

        deadlines = AlsoCancelled(0.05)
        task = asyncio.create_task(_job(deadlines, 5))
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_a_deadline_needs_a_task():
    with pytest.raises(RuntimeError):
        Deadlines(1).start()


def test_deadlines_outlive_an_event_loop_and_fire_on_the_next_one():
    deadlines = Deadlines(0.2)
    assert asyncio.run(_job(deadlines, 0.01)) == "done"  # its timer was armed on a loop now closed
    assert asyncio.run(_job(deadlines, 5)) == "deadline"
