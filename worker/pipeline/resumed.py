"""Resumed: the rest of a coroutine whose first step was driven by hand, awaited in the same task.

The worker runs a fetch's records one after another in one task while they finish without waiting
(consume.py, `Worker._run_records`), driving each job's coroutine with `send(None)` to see at once
whether it finished or waits. One that waits has already run its first step and handed over what it
waits for; awaiting `Resumed(coroutine, that)` carries it on to its end, as if the task had awaited
it from the start: what the loop sends in (a result, or the CancelledError of a cancelled task) goes
to the coroutine, and its return value or exception comes out.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Resumed(Generic[T]):
    __slots__ = ("_coroutine", "_waiting_on")

    def __init__(self, coroutine: Coroutine[Any, Any, T], waiting_on: Any) -> None:
        self._coroutine = coroutine
        self._waiting_on = waiting_on  # what its first `send(None)` yielded

    def __await__(self) -> Generator[Any, Any, T]:
        coroutine, yielded = self._coroutine, self._waiting_on
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # thrown in by the task: a cancellation, above all
                try:
                    yielded = coroutine.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coroutine.send(sent)
                except StopIteration as stop:
                    return stop.value
