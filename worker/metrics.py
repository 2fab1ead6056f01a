"""The worker's metrics: the GenAI conventions' client metrics and the router's own.

Instruments are recorded where things happen (an attempt, a job's end); gauges (jobs in flight,
consumer lag, rate-limit gates, learned success rates) are observed when the reader collects.
With telemetry off the meter is a no-op and recording costs a method call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from worker.messages import Attempt, Result

# The GenAI conventions' advised bucket boundaries.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
ATTEMPT_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

Observer = Callable[[], Iterable[tuple[float, dict[str, str | int]]]]


class Sums:
    """A cumulative counter summed in a dict by attribute values, observed by the metric reader."""

    __slots__ = ("_keys", "_sums")

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = keys
        self._sums: dict[tuple[str, ...], float] = {}

    def add(self, amount: float, values: tuple[str, ...]) -> None:
        self._sums[values] = self._sums.get(values, 0) + amount

    def observe(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(total, {k: v for k, v in zip(self._keys, values) if v}) for values, total in list(self._sums.items())]


class Metrics:
    """The instruments of one worker."""

    def __init__(self, meter: Meter) -> None:
        self._meter = meter
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens used by each call, by gen_ai.token.type", explicit_bucket_boundaries_advisory=TOKEN_BUCKETS
        )
        self.operation_duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="Duration of each call to a model", explicit_bucket_boundaries_advisory=DURATION_BUCKETS
        )
        # Counters are summed here, per attribute set, and read by the reader when it collects: a
        # dict update per job instead of the SDK's per-measurement work (measured: about 100 us a job).
        self.jobs = self._counter("llm_router.jobs", "{job}", "Jobs finished, by outcome (ok, failed, dead_lettered)", ("llm_router.outcome", "llm_router.task", "llm_router.reason"))
        self.cost = self._counter("llm_router.cost", "USD", "Cost of the attempts, by provider, model, tenant and task", ("llm_router.provider", "llm_router.model", "llm_router.tenant", "llm_router.task"))
        self.escalations = self._counter("llm_router.escalations", "{escalation}", "Moves to the next model of a chain, by the failure that caused them", ("llm_router.reason", "llm_router.model"))
        self.reroutes = self._counter("llm_router.reroutes", "{job}", "Jobs sent to another model of their chain for want of capacity", ("llm_router.model",))
        self.attempts = meter.create_histogram("llm_router.job.attempts", unit="{attempt}", description="Attempts a job took", explicit_bucket_boundaries_advisory=ATTEMPT_BUCKETS)
        self.rate_limit_wait = meter.create_histogram(
            "llm_router.rate_limit.wait", unit="s", description="Time an attempt waited for the rate limits", explicit_bucket_boundaries_advisory=WAIT_BUCKETS
        )

    def attempt(self, attempt: Attempt, api_model: str, provider_name: str, server: str | None, task: str, tenant: str | None) -> None:
        """One attempt's tokens, duration, cost and rate-limit wait."""
        attributes: dict[str, str] = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider_name, "gen_ai.request.model": api_model}
        if server:
            attributes["server.address"] = server
        if attempt.error is not None and attempt.input_tokens == 0 and attempt.output_tokens == 0:
            self.operation_duration.record(attempt.latency_ms / 1000, {**attributes, "error.type": attempt.error.kind})
        else:
            self.token_usage.record(attempt.input_tokens, {**attributes, "gen_ai.token.type": "input"})
            self.token_usage.record(attempt.output_tokens, {**attributes, "gen_ai.token.type": "output"})
            self.operation_duration.record(attempt.latency_ms / 1000, attributes)
        self.cost.add(attempt.cost_usd, (attempt.provider, attempt.model, tenant or "", task))
        if attempt.rate_limit_wait_ms:  # the attempts that waited for the allowance
            self.rate_limit_wait.record(attempt.rate_limit_wait_ms / 1000, {"llm_router.provider": attempt.provider, "llm_router.model": attempt.model})

    def job(self, result: Result) -> None:
        self.jobs.add(1, (result.status, result.task or "", ""))
        self.attempts.record(len(result.attempts), {"llm_router.task": result.task or ""})
        for attempt in result.attempts[:-1]:
            if attempt.error is not None and attempt.model != result.attempts[attempt.number].model:
                self.escalations.add(1, (attempt.error.kind, attempt.model))
        if result.attempts and result.attempts[0].rerouted_from:
            self.reroutes.add(1, (result.attempts[0].rerouted_from,))

    def dead_letter(self, kind: str) -> None:
        self.jobs.add(1, ("dead_lettered", "", kind))

    def _counter(self, name: str, unit: str, description: str, keys: tuple[str, ...]) -> Sums:
        sums = Sums(keys)
        self._meter.create_observable_counter(name, callbacks=[sums.observe], unit=unit, description=description)
        return sums

    def gauge(self, name: str, unit: str, description: str, observe: Observer) -> None:
        """A gauge read from `observe` (value, attributes) pairs whenever the reader collects."""

        def callback(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, attributes) for value, attributes in observe()]

        self._meter.create_observable_gauge(name, callbacks=[callback], unit=unit, description=description)
