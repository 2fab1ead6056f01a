"""The providers' states that change while the worker runs, each change one log line.

Three states, each logged where it changes and never per failed call:
- out of rotation: a quota or auth error takes the provider out for every job; after
  `routing.rotation_retry_s` one job may probe it; an answer brings it back, another quota or auth
  error keeps it out for another period.
- unreachable: no connection could be made; one line when the first call fails, one when a call gets
  an answer again, with the count of calls that failed meanwhile and the outage's length.
- the circuit breaker (worker/execution/breakers.py) opening and closing: `breaker_changed` is its
  `on_change`.
The clock is passed in; the runner decides when each happens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from msgspec import Struct

from worker.execution.breakers import BreakerState
from worker.observability.logs import get_logger

log = get_logger("providers")

# The value of the breaker state gauge.
BREAKER_GAUGE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class _OutOfRotation(Struct, kw_only=True):
    kind: str  # quota or auth
    since: float
    retry_at: float
    probing: bool = False


class _Outage(Struct, kw_only=True):
    since: float
    failed_calls: int


class ProviderHealth:
    """Which providers are out of rotation or unreachable, and since when."""

    def __init__(self, rotation_retry_s: float, clock: Callable[[], float]) -> None:
        self.rotation_retry_s = rotation_retry_s
        self._clock = clock
        self._out: dict[str, _OutOfRotation] = {}
        self._outages: dict[str, _Outage] = {}
        self._breaker_opened: dict[str, float] = {}

    def out_of_rotation(self) -> frozenset[str]:
        return frozenset(self._out)

    def take_out(self, provider: str, kind: str, message: str) -> None:
        """A quota or auth error: out of rotation until a probe `rotation_retry_s` from now."""
        now = self._clock()
        out = self._out.get(provider)
        if out is not None:  # its probe failed: out for another period, already said
            out.retry_at, out.probing = now + self.rotation_retry_s, False
            return
        self._out[provider] = _OutOfRotation(kind=kind, since=now, retry_at=now + self.rotation_retry_s)
        log.warning(
            "provider out of rotation",
            extra={"provider": provider, "reason": kind, "error": message[:300], "retry_in_s": self.rotation_retry_s},
        )

    def retry_due(self) -> bool:
        """Whether a provider out of rotation may be probed now."""
        now = self._clock()
        return any(not out.probing and out.retry_at <= now for out in self._out.values())

    def take_probe(self) -> str | None:
        """A provider out of rotation whose retry is due, now probed by the asking job (no other job's)."""
        now = self._clock()
        for provider, out in self._out.items():
            if not out.probing and out.retry_at <= now:
                out.probing = True
                return provider
        return None

    def probe_ended(self, provider: str, answered: bool) -> None:
        """The probing job is done with `provider`: back in rotation when it answered; otherwise due again
        (another quota or auth error went through `take_out` already)."""
        out = self._out.get(provider)
        if out is None or not out.probing:
            return
        out.probing = False
        if answered:
            del self._out[provider]
            log.info(
                "provider back in rotation",
                extra={"provider": provider, "out_s": round(self._clock() - out.since, 1)},
            )

    def call_failed_to_connect(self, provider: str, message: str) -> None:
        """A call to `provider` could not connect: the first one of an outage is logged."""
        outage = self._outages.get(provider)
        if outage is not None:
            outage.failed_calls += 1
            return
        self._outages[provider] = _Outage(since=self._clock(), failed_calls=1)
        log.warning("provider unreachable", extra={"provider": provider, "error": message[:300]})

    def answered(self, provider: str) -> None:
        """`provider` answered a call (whatever it said): an outage, if any, is over."""
        outage = self._outages.pop(provider, None)
        if outage is not None:
            log.info(
                "provider reachable again",
                extra={
                    "provider": provider,
                    "failed_calls": outage.failed_calls,
                    "outage_s": round(self._clock() - outage.since, 1),
                },
            )

    def unreachable(self) -> frozenset[str]:
        return frozenset(self._outages)

    def breaker_changed(self, provider: str, state: BreakerState, failures: int) -> None:
        """A breaker opened (after `failures` in a row) or closed (its probe succeeded)."""
        now = self._clock()
        if state is BreakerState.OPEN:
            self._breaker_opened[provider] = now
            log.warning("circuit breaker opened", extra={"provider": provider, "failures": failures})
        else:
            opened = self._breaker_opened.pop(provider, now)
            log.info("circuit breaker closed", extra={"provider": provider, "open_s": round(now - opened, 1)})

    def availability(self, providers: Iterable[str]) -> list[tuple[float, dict[str, str | int]]]:
        """The gauge of each provider: 1 in rotation, 0 out."""
        return [(0 if p in self._out else 1, {"llm_router.provider": p}) for p in providers]
