"""A circuit breaker per provider: open after consecutive failures, one probe after a cooldown.

closed --(failures in a row >= threshold)--> open --(cooldown over)--> half-open: one probe
half-open --(probe succeeds)--> closed;  half-open --(probe fails)--> open again. Pure: the clock
is passed in.
"""

from __future__ import annotations

from enum import Enum


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    def __init__(
        self, threshold: int, cooldown_s: float, name: str = "", not_closed: set[Breaker] | None = None
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.name = name
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False
        self._not_closed = not_closed if not_closed is not None else set()  # shared by the breakers of a Breakers

    def state(self, now: float) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if now - self.opened_at < self.cooldown_s:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def allows(self, now: float) -> bool:
        """Whether a call may go out now (in half-open, only the one probe)."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and not self.probing

    def start_call(self, now: float) -> None:
        """A call goes out; in half-open it is the probe."""
        if self.opened_at is not None and self.state(now) is BreakerState.HALF_OPEN:
            self.probing = True

    def succeeded(self) -> None:
        self.failures = 0
        if self.opened_at is not None:
            self.opened_at = None
            self._not_closed.discard(self)
        self.probing = False

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self.opened_at = now
            self._not_closed.add(self)
        self.probing = False


class Breakers:
    """One breaker per provider."""

    def __init__(self, threshold: int, cooldown_s: float) -> None:
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._breakers: dict[str, Breaker] = {}
        self._not_closed: set[Breaker] = set()  # open or half-open

    def of(self, provider: str) -> Breaker:
        breaker = self._breakers.get(provider)
        if breaker is None:
            breaker = self._breakers[provider] = Breaker(self._threshold, self._cooldown_s, provider, self._not_closed)
        return breaker

    def blocked(self, now: float) -> frozenset[str]:
        """Providers that may not be called now (asked for every job: nothing to look at while all are closed)."""
        if not self._not_closed:
            return _NONE
        return self._blocked(now)

    def _blocked(self, now: float) -> frozenset[str]:
        blocked = [breaker.name for breaker in self._not_closed if not breaker.allows(now)]
        return frozenset(blocked) if blocked else _NONE


_NONE: frozenset[str] = frozenset()
