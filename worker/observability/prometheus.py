"""The worker's metrics in Prometheus text format, for the HTTP endpoint's /metrics.

The OpenTelemetry SDK's Prometheus reader (opentelemetry-exporter-prometheus) collects at each scrape
and names the metrics as the OpenTelemetry specification maps them to Prometheus (dots to
underscores, the unit as a suffix, `_total` on counters): the same names the Collector's Prometheus
exporter gives the OTLP export. Like the OTLP exporters (telemetry.ReportedMetricExporter), it adds
the histograms the worker sums itself (metrics.Distributions) to what the SDK collected.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import MetricsData
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from worker.observability.metrics import Distributions

CONTENT_TYPE = CONTENT_TYPE_LATEST


class PrometheusExposition(PrometheusMetricReader):
    """A metric reader that collects when scraped, into a registry of its own (not the process-wide one:
    several workers may run in one process), with the worker's histograms."""

    def __init__(self, distributions: Distributions) -> None:
        self._scraped = CollectorRegistry()
        super().__init__(registry=self._scraped)
        self._distributions = distributions

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        # MetricReader's hook for each collection (abstract in the SDK): the histograms join here.
        super()._receive_metrics(self._distributions.add_to(metrics_data), timeout_millis, **kwargs)

    def text(self) -> bytes:
        """Every metric as Prometheus text exposition format (version 0.0.4), collected now."""
        return generate_latest(self._scraped)
