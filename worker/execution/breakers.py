"""A circuit breaker per provider: open after consecutive failures, one probe after a cooldown.

closed --(failures in a row >= threshold)--> open --(cooldown over)--> half-open: one probe
half-open --(probe succeeds)--> closed;  half-open --(probe fails)--> open again. Pure: the clock
is passed in. A breaker that opens (from closed) or closes tells its `on_change` (provider name, new
state, failures in a row): those are the transitions worth a log line; a failed probe is not one.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


OnChange = Callable[[str, "BreakerState", int], None]


def _ignore(name: str, state: BreakerState, failures: int) -> None:
    """The default `on_change`: nobody listens."""


class Breaker:
    def __init__(
        self,
        threshold: int,
        cooldown_s: float,
        name: str = "",
        not_closed: set[Breaker] | None = None,
        on_change: OnChange = _ignore,
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.name = name
        self.failures = 0
        self.opened_at: float | None = None
        self.probing = False
        self._not_closed = not_closed if not_closed is not None else set()  # shared by the breakers of a Breakers
        self._on_change = on_change

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
        failures, self.failures = self.failures, 0
        if self.opened_at is not None:
            self.opened_at = None
            self._not_closed.discard(self)
            self._on_change(self.name, BreakerState.CLOSED, failures)
        self.probing = False

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            opening = self.opened_at is None
            self.opened_at = now
            self._not_closed.add(self)
            if opening:
                self._on_change(self.name, BreakerState.OPEN, self.failures)
        self.probing = False


class Breakers:
    """One breaker per provider."""

    def __init__(self, threshold: int, cooldown_s: float, on_change: OnChange = _ignore) -> None:
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._on_change = on_change
        self._breakers: dict[str, Breaker] = {}
        self._not_closed: set[Breaker] = set()  # open or half-open

    def of(self, provider: str) -> Breaker:
        breaker = self._breakers.get(provider)
        if breaker is None:
            breaker = self._breakers[provider] = Breaker(
                self._threshold, self._cooldown_s, provider, self._not_closed, self._on_change
            )
        return breaker

    def blocked(self, now: float) -> frozenset[str]:
        """Providers that may not be called now (asked for every job: nothing to look at while all are closed)."""
        if not self._not_closed:
            return _NONE
        return self._blocked(now)

    def states(self, now: float) -> dict[str, BreakerState]:
        """Each provider's breaker state (those never called are closed, and not listed)."""
        return {name: breaker.state(now) for name, breaker in self._breakers.items()}

    def _blocked(self, now: float) -> frozenset[str]:
        blocked = [breaker.name for breaker in self._not_closed if not breaker.allows(now)]
        return frozenset(blocked) if blocked else _NONE


_NONE: frozenset[str] = frozenset()
