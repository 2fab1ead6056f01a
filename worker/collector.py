"""The garbage collector's settings for a long-running process with thousands of requests in flight.

Thousands of jobs (or, in the simulator, calls) in flight outlive the young generations, so with the
default thresholds (700, 10, 10) full collections of the whole heap ran every second or so: they
took a third of the worker's time at 6,000 jobs in flight (`make bench`, section throughput), and
in the simulator they held every answer due meanwhile, which came back late.
"""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Collect less often, and never scan again what start-up built (it lives as long as the process)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
