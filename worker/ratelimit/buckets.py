"""Per-minute allowances as the providers count them: buckets that refill continuously. Pure.

A bucket holds at most `per_minute` units and refills at `per_minute / 60` a second; a request
takes its units when it fits. The simulator enforces limits with these buckets and the worker
keeps its own view of each provider's allowance with the same arithmetic.
"""

from __future__ import annotations

import math


class Bucket:
    """`per_minute` units a minute, refilled continuously, never above `per_minute`."""

    __slots__ = ("level", "per_minute", "updated")

    def __init__(self, per_minute: float, now: float) -> None:
        self.per_minute = float(per_minute)
        self.level = float(per_minute)
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.per_minute, self.level + (now - self.updated) * self.per_minute / 60)
            self.updated = now

    def wait_s(self, amount: float) -> float:
        """Seconds until `amount` fits (after a refill); inf when it never can."""
        if amount > self.per_minute:
            return math.inf
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing * 60 / self.per_minute

    def take(self, amount: float) -> None:
        self.level -= amount

    def give_back(self, amount: float) -> None:
        """Return units reserved but not used (never above the capacity)."""
        self.level = min(self.per_minute, self.level + amount)

    def tighten(self, remaining: float) -> None:
        """The provider says only `remaining` is left: believe it when it is less than we think."""
        self.level = min(self.level, remaining)

    def resize(self, per_minute: float, now: float) -> None:
        """A new capacity (a new share of the limit), keeping the same fraction of it in use."""
        self.refill(now)
        free = self.level / self.per_minute if self.per_minute else 1.0
        self.per_minute = float(per_minute)
        self.level = per_minute * free

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return (self.per_minute - self.level) * 60 / self.per_minute if self.per_minute else 0.0
