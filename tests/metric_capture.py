"""A metric exporter for tests that keeps what it is given, and the data points it got by metric name."""

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, PeriodicExportingMetricReader

from worker.observability.metrics import Distributions
from worker.observability.telemetry import SCOPE, ReportedMetricExporter, Telemetry


class Captured(MetricExporter):
    """An exporter that keeps the last data it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.data = None

    def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs):
        self.data = metrics_data
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        pass


def points_by_name(data) -> dict[str, list]:
    points: dict[str, list] = {}
    for resource_metrics in data.resource_metrics:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def captured_telemetry() -> tuple[Telemetry, Captured, PeriodicExportingMetricReader]:
    """Metrics on, read as an exporter gets them (through the wrapper telemetry_from_env uses, which adds the
    worker's own histograms): the telemetry, what its reader's `force_flush` exported, and the reader."""
    distributions = Distributions(SCOPE)
    captured = Captured()
    reader = PeriodicExportingMetricReader(
        ReportedMetricExporter(captured, "test", distributions), export_interval_millis=3_600_000
    )
    telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]), distributions=distributions)
    return telemetry, captured, reader
