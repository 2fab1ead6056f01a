"""The worker's metrics: the GenAI conventions' client metrics and the router's own.

Measurements are taken where things happen (an attempt, a job's end); gauges (jobs in flight,
consumer lag, rate-limit gates, learned success rates) are observed when the reader collects.
With telemetry off nothing is recorded.

Counters and histograms are summed here, per attribute set, not by the SDK: its `Histogram.record`
and `Counter.add` cost about 25 µs a measurement in Python (a Measurement dataclass, attribute
cleaning and hashing, exemplars), and a job takes four histogram measurements and three counter
additions. Counters reach the SDK as observable counters, read when it collects; histograms have no
observable form, so the metric exporters add them to what they export (`Distributions.add_to`,
called by `worker.observability.telemetry.ReportedMetricExporter`), cumulative, in the SDK's own data types, with
its bucket rule (a value on a bound counts in the bucket below it) and without exemplars.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from worker.messages import Attempt, Result

# The GenAI conventions' advised bucket boundaries.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
ATTEMPT_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10)
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

Observer = Callable[[], Iterable[tuple[float, dict[str, str | int]]]]

# Attribute sets an instrument keeps apart, as the SDK's default cardinality limit: a job's task type
# and tenant are the producer's to name, so there may be any number of them. Past the limit, new sets
# are summed together under the attribute otel.metric.overflow = true, as the SDK does.
CARDINALITY_LIMIT = 2000
OVERFLOW: tuple[str, ...] = ()  # the values of the overflow set (a real set has one a key)


def _attributes(keys: tuple[str, ...], values: tuple[str, ...]) -> dict[str, str | bool]:
    if values is OVERFLOW:
        return {"otel.metric.overflow": True}
    return {k: v for k, v in zip(keys, values, strict=True) if v}


class Sums:
    """A cumulative counter summed in a dict by attribute values, observed by the metric reader."""

    __slots__ = ("_keys", "_sums")

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = keys
        self._sums: dict[tuple[str, ...], float] = {}

    def add(self, amount: float, values: tuple[str, ...]) -> None:
        sums = self._sums
        total = sums.get(values)
        if total is None:
            if len(sums) >= CARDINALITY_LIMIT:
                values = OVERFLOW
            total = sums.get(values, 0)
        sums[values] = total + amount

    def observe(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(total, _attributes(self._keys, values)) for values, total in list(self._sums.items())]


class Distribution:
    """A histogram summed here, per attribute set (attribute values in the order of `keys`; an empty
    value leaves its attribute out). Recorded on the event loop, read by the exporter's thread."""

    __slots__ = ("_bounds", "_keys", "_lock", "_points", "description", "name", "unit")

    def __init__(
        self, name: str, unit: str, description: str, keys: tuple[str, ...], bounds: tuple[float, ...]
    ) -> None:
        self.name, self.unit, self.description = name, unit, description
        self._keys = keys
        self._bounds = bounds
        # values -> [count, sum, min, max, bucket counts]
        self._points: dict[tuple[str, ...], list] = {}
        self._lock = threading.Lock()

    def record(self, value: float, values: tuple[str, ...]) -> None:
        with self._lock:
            point = self._points.get(values)
            if point is None and len(self._points) >= CARDINALITY_LIMIT:
                values = OVERFLOW
                point = self._points.get(values)
            if point is None:
                point = self._points[values] = [0, 0, math.inf, -math.inf, [0] * (len(self._bounds) + 1)]
            point[0] += 1
            point[1] += value
            if value < point[2]:
                point[2] = value
            if value > point[3]:
                point[3] = value
            point[4][bisect_left(self._bounds, value)] += 1

    def metric(self, start_ns: int, now_ns: int) -> Metric | None:
        """The cumulative histogram as the SDK's exporters take it; None before any measurement."""
        with self._lock:
            points = [
                (values, count, total, low, high, tuple(buckets))
                for values, (count, total, low, high, buckets) in self._points.items()
            ]
        if not points:
            return None
        data = [
            HistogramDataPoint(
                attributes=_attributes(self._keys, values),
                start_time_unix_nano=start_ns,
                time_unix_nano=now_ns,
                count=count,
                sum=total,
                bucket_counts=buckets,
                explicit_bounds=self._bounds,
                min=low,
                max=high,
            )
            for values, count, total, low, high, buckets in points
        ]
        return Metric(
            name=self.name,
            description=self.description,
            unit=self.unit,
            data=Histogram(data_points=data, aggregation_temporality=AggregationTemporality.CUMULATIVE),
        )


class Distributions:
    """The histograms of one telemetry setup (one per name, whoever asks), added to each export."""

    def __init__(self, scope: str) -> None:
        self._scope = scope
        self._by_name: dict[str, Distribution] = {}
        self._start_ns = time.time_ns()

    def get(
        self, name: str, unit: str, description: str, keys: tuple[str, ...], bounds: tuple[float, ...]
    ) -> Distribution:
        distribution = self._by_name.get(name)
        if distribution is None:
            distribution = self._by_name[name] = Distribution(name, unit, description, keys, bounds)
        return distribution

    def add_to(self, data: MetricsData) -> MetricsData:
        """`data` with the histograms in this scope's metrics (the SDK's collection has them without)."""
        now = time.time_ns()
        metrics = [m for m in (d.metric(self._start_ns, now) for d in list(self._by_name.values())) if m is not None]
        if not metrics or not data.resource_metrics:
            return data  # nothing measured yet, or nothing of the SDK's to say which resource
        first, *others = data.resource_metrics
        scopes = list(first.scope_metrics)
        for index, scope in enumerate(scopes):
            if scope.scope.name == self._scope:
                scopes[index] = ScopeMetrics(
                    scope=scope.scope, metrics=[*scope.metrics, *metrics], schema_url=scope.schema_url
                )
                break
        else:
            scopes.append(ScopeMetrics(scope=InstrumentationScope(self._scope), metrics=metrics, schema_url=""))
        return MetricsData(
            resource_metrics=[
                ResourceMetrics(resource=first.resource, scope_metrics=scopes, schema_url=first.schema_url),
                *others,
            ]
        )


class Metrics:
    """The instruments of one worker."""

    def __init__(self, meter: Meter, distributions: Distributions) -> None:
        self._meter = meter
        gen_ai = ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "server.address")
        self.token_usage = distributions.get(
            "gen_ai.client.token.usage",
            "{token}",
            "Tokens used by each call, by gen_ai.token.type",
            (*gen_ai, "gen_ai.token.type"),
            TOKEN_BUCKETS,
        )
        self.operation_duration = distributions.get(
            "gen_ai.client.operation.duration",
            "s",
            "Duration of each call to a model",
            (*gen_ai, "error.type"),
            DURATION_BUCKETS,
        )
        self.jobs = self._counter(
            "llm_router.jobs",
            "{job}",
            "Jobs finished, by outcome (ok, failed, dead_lettered)",
            ("llm_router.outcome", "llm_router.task", "llm_router.reason"),
        )
        self.cost = self._counter(
            "llm_router.cost",
            "USD",
            "Cost of the attempts, by provider, model, tenant and task",
            ("llm_router.provider", "llm_router.model", "llm_router.tenant", "llm_router.task"),
        )
        self.escalations = self._counter(
            "llm_router.escalations",
            "{escalation}",
            "Moves to the next model of a chain, by the failure that caused them",
            ("llm_router.reason", "llm_router.model"),
        )
        self.reroutes = self._counter(
            "llm_router.reroutes",
            "{job}",
            "Jobs sent to another model of their chain for want of capacity",
            ("llm_router.model",),
        )
        self.duplicates = self._counter(
            "llm_router.jobs.duplicates",
            "{job}",
            "Jobs not run again: their id finished within the dedupe window (their first result published again)",
            (),
        )
        self.budget_refusals = self._counter(
            "llm_router.budget_exceeded",
            "{job}",
            "Jobs refused because their tenant's spend of the UTC day reached its budget, by tenant",
            ("llm_router.tenant",),
        )
        self.attempts = distributions.get(
            "llm_router.job.attempts", "{attempt}", "Attempts a job took", ("llm_router.task",), ATTEMPT_BUCKETS
        )
        self.rate_limit_wait = distributions.get(
            "llm_router.rate_limit.wait",
            "s",
            "Time an attempt waited for the rate limits",
            ("llm_router.provider", "llm_router.model"),
            WAIT_BUCKETS,
        )

    def attempt(
        self, attempt: Attempt, api_model: str, provider_name: str, server: str | None, task: str, tenant: str | None
    ) -> None:
        """One attempt's tokens, duration, cost and rate-limit wait."""
        server = server or ""
        if attempt.error is not None and attempt.input_tokens == 0 and attempt.output_tokens == 0:
            self.operation_duration.record(
                attempt.latency_ms / 1000, ("chat", provider_name, api_model, server, attempt.error.kind)
            )
        else:
            self.token_usage.record(attempt.input_tokens, ("chat", provider_name, api_model, server, "input"))
            self.token_usage.record(attempt.output_tokens, ("chat", provider_name, api_model, server, "output"))
            self.operation_duration.record(attempt.latency_ms / 1000, ("chat", provider_name, api_model, server, ""))
        self.cost.add(attempt.cost_usd, (attempt.provider, attempt.model, tenant or "", task))
        if attempt.rate_limit_wait_ms:  # the attempts that waited for the allowance
            self.rate_limit_wait.record(attempt.rate_limit_wait_ms / 1000, (attempt.provider, attempt.model))

    def job(self, result: Result) -> None:
        self.jobs.add(1, (result.status, result.task or "", ""))
        self.attempts.record(len(result.attempts), (result.task or "",))
        for attempt in result.attempts[:-1]:
            if attempt.error is not None and attempt.model != result.attempts[attempt.number].model:
                self.escalations.add(1, (attempt.error.kind, attempt.model))
        if result.attempts and result.attempts[0].rerouted_from:
            self.reroutes.add(1, (result.attempts[0].rerouted_from,))

    def dead_letter(self, kind: str) -> None:
        self.jobs.add(1, ("dead_lettered", "", kind))

    def duplicate(self) -> None:
        self.duplicates.add(1, ())

    def budget_exceeded(self, tenant: str) -> None:
        """A job of `tenant` refused for its budget (its result counts in `jobs` as failed)."""
        self.budget_refusals.add(1, (tenant,))

    def _counter(self, name: str, unit: str, description: str, keys: tuple[str, ...]) -> Sums:
        sums = Sums(keys)
        self._meter.create_observable_counter(name, callbacks=[sums.observe], unit=unit, description=description)
        return sums

    def gauge(self, name: str, unit: str, description: str, observe: Observer) -> None:
        """A gauge read from `observe` (value, attributes) pairs whenever the reader collects."""

        def callback(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, attributes) for value, attributes in observe()]

        self._meter.create_observable_gauge(name, callbacks=[callback], unit=unit, description=description)
