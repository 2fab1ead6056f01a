"""The worker's own histograms against the SDK's: the same data points, exported through the real path."""

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, PeriodicExportingMetricReader

from tests.metric_capture import Captured, captured_telemetry, points_by_name
from worker.observability.metrics import CARDINALITY_LIMIT, DURATION_BUCKETS, Distributions, Sums
from worker.observability.telemetry import SCOPE, ReportedMetricExporter

# On the bounds, between them, below the first and past the last; two attribute sets, one with an empty value.
VALUES = [0.0, 0.01, 0.015, 0.02, 0.64, 0.641, 1.28, 3.0, 81.92, 100.0, 0.005, 0.32, 0.32]
KEYS = ("gen_ai.request.model", "error.type")


def comparable(point) -> tuple:
    return (
        dict(point.attributes),
        point.count,
        pytest.approx(point.sum),
        tuple(point.bucket_counts),
        tuple(point.explicit_bounds),
        point.min,
        point.max,
    )


def test_a_histogram_summed_by_the_worker_equals_the_sdks_and_goes_out_with_the_sdks_metrics():
    # The SDK's own histogram, as the worker recorded them before.
    sdk_reader = InMemoryMetricReader()
    sdk_histogram = (
        MeterProvider(metric_readers=[sdk_reader])
        .get_meter(SCOPE)
        .create_histogram("d", unit="s", explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
    )
    # The worker's, beside a counter of the SDK's, exported through the exporter wrapper telemetry_from_env uses.
    telemetry, captured, reader = captured_telemetry()
    telemetry.meter.create_counter("c").add(1)
    ours = telemetry.distributions.get("d", "s", "a duration", KEYS, DURATION_BUCKETS)
    assert telemetry.distributions.get("d", "s", "a duration", KEYS, DURATION_BUCKETS) is ours, (
        "one histogram a name, whoever asks"
    )
    for n, value in enumerate(VALUES):
        error = "timeout" if n % 3 == 0 else ""
        sdk_histogram.record(value, {"gen_ai.request.model": "gpt-4o", **({"error.type": error} if error else {})})
        ours.record(value, ("gpt-4o", error))

    reader.force_flush()
    exported = points_by_name(captured.data)
    expected = points_by_name(sdk_reader.get_metrics_data())["d"]
    assert sorted(map(comparable, exported["d"]), key=str) == sorted(map(comparable, expected), key=str)
    assert sum(p.count for p in exported["d"]) == len(VALUES) and [p.value for p in exported["c"]] == [1], (
        "the SDK's own metrics go out beside"
    )
    scope = captured.data.resource_metrics[0].scope_metrics
    assert [s.scope.name for s in scope] == [SCOPE] and {m.name for m in scope[0].metrics} == {"c", "d"}
    assert encode_metrics(captured.data).resource_metrics[0].scope_metrics[0].metrics, "the OTLP encoder takes them"
    telemetry.meter_provider.shutdown()


def test_no_histogram_goes_out_before_its_first_measurement_and_an_export_without_the_sdks_metrics_is_left_as_it_is():
    distributions = Distributions(SCOPE)
    distributions.get("d", "s", "a duration", KEYS, DURATION_BUCKETS)
    captured = Captured()
    reader = PeriodicExportingMetricReader(
        ReportedMetricExporter(captured, "test", distributions), export_interval_millis=3_600_000
    )
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter(SCOPE).create_counter("c").add(1)
    reader.force_flush()
    assert set(points_by_name(captured.data)) == {"c"}
    provider.shutdown()


def test_attribute_sets_past_the_cardinality_limit_are_summed_together_as_the_sdks_overflow():
    """A job's task type and tenant are the producer's to name: the sets kept apart are bounded."""
    extra = 7
    distributions = Distributions(SCOPE)
    histogram = distributions.get("d", "s", "a duration", ("llm_router.task",), DURATION_BUCKETS)
    counter = Sums(("llm_router.task", "llm_router.tenant"))
    for n in range(CARDINALITY_LIMIT + extra):
        histogram.record(0.5, (f"task-{n}",))
        counter.add(1.0, (f"task-{n}", "t"))
    histogram.record(0.5, ("task-0",))  # a set kept apart before the limit still counts apart
    counter.add(1.0, ("task-0", "t"))

    points = histogram.metric(0, 1).data.data_points
    observed = counter.observe(None)
    assert len(points) == len(observed) == CARDINALITY_LIMIT + 1
    overflow = [p for p in points if p.attributes == {"otel.metric.overflow": True}]
    assert len(overflow) == 1 and overflow[0].count == extra
    assert [o.value for o in observed if o.attributes == {"otel.metric.overflow": True}] == [extra]
    assert next(p.count for p in points if p.attributes == {"llm_router.task": "task-0"}) == 2
    assert (
        next(o.value for o in observed if o.attributes == {"llm_router.task": "task-0", "llm_router.tenant": "t"}) == 2
    )
    assert sum(p.count for p in points) == sum(o.value for o in observed) == CARDINALITY_LIMIT + extra + 1
