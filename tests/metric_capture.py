"""A metric exporter for tests that keeps what it is given, and the data points it got by metric name."""

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult


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
