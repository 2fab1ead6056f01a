"""The process runtime: the event loop (uvloop where it is installed, else asyncio's own) and the
garbage collector's settings.

The event loop:

On uvloop the worker spends about a tenth less CPU a job with the in-process echo provider and a
third less over HTTP, and the simulator answers more calls a core (`make bench`, section throughput:
every consumer there, the raw floor included, runs on the loop named here). `worker.event_loop`
chooses: "auto" (the default) takes uvloop when it can be imported (a dependency on Linux and
macOS), "uvloop" insists on it, "asyncio" keeps the standard loop.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from worker.config import ConfigError, EventLoopChoice

T = TypeVar("T")


def loop_factory(choice: EventLoopChoice = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A factory of new loops for `choice` (None: asyncio's default). ConfigError when "uvloop" is missing."""
    if choice == "asyncio":
        return None
    if choice not in ("auto", "uvloop"):
        raise ValueError(f'unknown event loop {choice!r}: choose "auto", "uvloop" or "asyncio"')
    try:
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            raise ConfigError(
                f'worker.event_loop: "uvloop" but uvloop cannot be imported ({exc}); '
                'install it, or choose "auto" or "asyncio"'
            ) from None
        return None
    return uvloop.new_event_loop


def loop_name(choice: EventLoopChoice = "auto") -> str:
    """What `choice` runs on here: "uvloop" or "asyncio"."""
    return "asyncio" if loop_factory(choice) is None else "uvloop"


def run(main: Coroutine[Any, Any, T], choice: EventLoopChoice = "auto") -> T:
    """`asyncio.run(main)` on the loop `choice` names."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


# The garbage collector's settings for a long-running process with thousands of requests in flight.
#
# Thousands of jobs (or, in the simulator, calls) in flight outlive the young generations, so with the
# default thresholds (700, 10, 10) full collections of the whole heap ran every second or so: they
# took a third of the worker's time at 6,000 jobs in flight (`make bench`, section throughput), and
# in the simulator they held every answer due meanwhile, which came back late.
def tune_gc() -> None:
    """Collect less often, and never scan again what start-up built (it lives as long as the process)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
