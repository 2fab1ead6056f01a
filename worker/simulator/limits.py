"""Per-minute limits as the providers enforce them, per API key and model."""

from __future__ import annotations

import math

from msgspec import Struct

from worker.ratelimit.buckets import Bucket


class LimitState(Struct, frozen=True, kw_only=True):
    name: str  # requests, tokens, input_tokens, output_tokens
    limit: int
    remaining: int
    reset_s: float


class Limits:
    """The buckets of one API key and model."""

    def __init__(self, limits: dict[str, int], now: float) -> None:
        self.buckets = {name: Bucket(per_minute, now) for name, per_minute in limits.items() if per_minute > 0}

    def reconfigure(self, limits: dict[str, int], now: float) -> None:
        """New per-minute limits (the simulator's settings changed)."""
        for name, per_minute in limits.items():
            bucket = self.buckets.get(name)
            if per_minute <= 0:
                self.buckets.pop(name, None)
            elif bucket is None or bucket.per_minute != per_minute:
                self.buckets[name] = Bucket(per_minute, now)

    def admit(self, amounts: dict[str, int], now: float) -> tuple[bool, float, str]:
        """Take `amounts` if all fit: (admitted, seconds to wait otherwise, the binding limit's name)."""
        worst, binding = 0.0, ""
        for name, bucket in self.buckets.items():
            bucket.refill(now)
            wait = bucket.wait_s(amounts.get(name, 0))
            if wait > worst:
                worst, binding = wait, name
        if worst > 0:
            return False, worst, binding
        for name, bucket in self.buckets.items():
            bucket.level -= amounts.get(name, 0)
        return True, 0.0, ""

    def state(self) -> list[LimitState]:
        return [
            LimitState(name=name, limit=int(b.per_minute), remaining=max(0, math.floor(b.level)), reset_s=b.reset_s())
            for name, b in self.buckets.items()
        ]
