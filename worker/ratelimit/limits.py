"""The rate limits of every provider and model: a gate each, local or shared through Redis."""

from __future__ import annotations

import time
from collections.abc import Callable

from worker.config import Config
from worker.ratelimit.gates import Gate, GateStats, Usage
from worker.ratelimit.shared import SharedAllowance, SharedGate


def partition_share(owned: int, total: int) -> float:
    """This replica's share of a limit: its partitions of the jobs topic over all of them."""
    if total <= 0:
        return 1.0
    return owned / total


class RateLimits:
    """The gates of every provider and model in the configuration."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        settings = config.rate_limits
        margin = settings.margin
        self.backend = settings.backend
        self._shared = None
        if settings.backend == "local":

            def gate(name: str, limits: dict[str, int]) -> Gate:
                return Gate(name, limits, margin=margin, clock=clock)
        else:
            shared = self._shared = SharedAllowance(settings.backend, settings.redis_prefix)

            def gate(name: str, limits: dict[str, int]) -> Gate:
                return SharedGate(name, limits, shared, margin=margin, block_s=settings.block_s, clock=clock)

        self.providers = {name: gate(f"provider:{name}", _limits_of(p)) for name, p in config.providers.items()}
        self.models = {name: gate(f"model:{name}", _limits_of(m)) for name, m in config.models.items()}
        self._gates = {name: (self.models[name], self.providers[m.provider]) for name, m in config.models.items()}

    async def start(self) -> None:
        """With the Redis backend: fail at start, with its address, when Redis cannot be reached."""
        if self._shared is not None:
            await self._shared.check()

    async def unreachable(self) -> str | None:
        """With the Redis backend, why Redis does not answer now (None when it does, or there is none)."""
        if self._shared is None:
            return None
        try:
            await self._shared.check()
        except ConnectionError as exc:
            return str(exc)
        return None

    async def close(self) -> None:
        if self._shared is not None:
            await self._shared.close()

    def gates(self, model: str) -> tuple[Gate, Gate]:
        """The gates an attempt on `model` passes: the model's, then its provider's."""
        return self._gates[model]

    def waiting(self, model: str) -> int:
        """The most jobs waiting at any gate of `model`."""
        model_gate, provider_gate = self._gates[model]
        return max(model_gate.waiting, provider_gate.waiting)

    def has_capacity(self, model: str, usage: Usage) -> bool:
        return all(gate.has_capacity(usage) for gate in self.gates(model))

    def set_share(self, share: float) -> None:
        for gate in (*self.providers.values(), *self.models.values()):
            gate.set_share(share)

    def stats(self) -> dict[str, GateStats]:
        return {
            gate.name: gate.stats()
            for gate in (*self.providers.values(), *self.models.values())
            if gate.limited or gate.rate_limited
        }


def _limits_of(config) -> dict[str, int]:
    return {
        "requests": config.requests_per_minute,
        "tokens": config.tokens_per_minute,
        "input_tokens": config.input_tokens_per_minute,
        "output_tokens": config.output_tokens_per_minute,
    }
