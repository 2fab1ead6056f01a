"""OpenTelemetry: traces from producer to result, metrics, and the switches that set them up.

Configured from the standard environment variables, read once at start:

- `OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER`: `otlp`, `console` or `none` (comma-separated for
  several). Unset, they are `otlp` when an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or the
  per-signal one) and `none` otherwise: a worker without a collector spends nothing on telemetry.
  `OTEL_SDK_DISABLED=true` turns everything off.
- `OTEL_EXPORTER_OTLP_PROTOCOL` (or per signal): `http/protobuf` (default) or `grpc` (needs the
  `grpc` extra: `pip install 'llm-router[grpc]'`); endpoint, headers and timeout as the SDK reads them.
- `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (e.g. `parentbased_traceidratio`, `0.01`),
  `OTEL_SERVICE_NAME` (default `llm-router`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_PROPAGATORS`,
  `OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_BSP_*`: as the SDK reads them.
- `worker.http_port` (not an `OTEL_*` variable): the worker's metrics are also recorded for its HTTP
  endpoint's /metrics, in Prometheus text format (worker/observability/prometheus.py), with or
  without an OTLP exporter.
- `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true` puts prompts and answers on the attempt
  spans (`gen_ai.input.messages`, `gen_ai.output.messages`); off by default, and API keys never.

Spans leave through batch processors (a thread of their own: the event loop never waits for an
exporter). An exporter that fails is reported once per outage, not once per batch or span.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.metrics import Meter, MeterProvider, NoOpMeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, NoOpTracerProvider, SpanKind, Status, StatusCode, Tracer, TracerProvider

from worker.observability.logs import get_logger
from worker.observability.metrics import Distributions

log = get_logger("telemetry")

TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
SCOPE = "llm_router"

# gen_ai.provider.name by wire API (the GenAI conventions' well-known values).
PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini"}


class Telemetry:
    """The tracer and meter every part of one worker (or producer) uses, and how spans link."""

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        capture_content: bool = False,
        process_parent: str = "producer",
        shutdown: Sequence[Any] = (),
        distributions: Distributions | None = None,
        exposition: Callable[[], bytes] | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider or NoOpTracerProvider()
        self.meter_provider = meter_provider or NoOpMeterProvider()
        self.tracing = tracer_provider is not None
        self.metering = meter_provider is not None
        self.tracer: Tracer = self.tracer_provider.get_tracer(SCOPE)
        self.meter: Meter = self.meter_provider.get_meter(SCOPE)
        self.capture_content = capture_content
        self.process_parent = process_parent
        self._shutdown = list(shutdown)
        # The histograms, summed by the worker (worker/observability/metrics.py): they reach the exporters wrapped in
        # a ReportedMetricExporter given these same distributions, as telemetry_from_env sets them up.
        self.distributions = distributions if distributions is not None else Distributions(SCOPE)
        # The metrics in Prometheus text format, collected at each call (the HTTP endpoint's /metrics); None
        # unless telemetry_from_env was asked for it.
        self.exposition = exposition

    def process_context(self, headers: Sequence[tuple[str, bytes]] | None) -> tuple[Context | None, list[Link]]:
        """The parent and links of a job's process span: the producer's context from the job's headers."""
        carrier = trace_carrier(headers)
        if not carrier:
            return None, []
        context = propagate.extract(carrier)
        producer = trace.get_current_span(context).get_span_context()
        links = [Link(producer)] if producer.is_valid else []
        return (context if self.process_parent == "producer" else None), links

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Flush and stop the exporters, waiting at most `timeout_s` (a dead collector must not hold up an exit)."""
        if not self._shutdown:
            return

        def stop() -> None:
            for provider in self._shutdown:
                with contextlib.suppress(Exception):  # one failing exporter must not keep the others up
                    provider.shutdown()

        thread = threading.Thread(target=stop, name="telemetry-shutdown", daemon=True)
        thread.start()
        thread.join(timeout_s)
        self._shutdown = []


OFF = Telemetry()


def trace_carrier(headers: Iterable[tuple[str, bytes]] | None) -> dict[str, str]:
    """The trace-context headers of a Kafka record, as text."""
    if not headers:
        return {}
    return {k: v.decode("latin-1") for k, v in headers if k in TRACE_HEADERS and v is not None}


def inject(headers: list[tuple[str, bytes]], context: Context | None = None) -> None:
    """Add the current (or given) trace context to a Kafka record's headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    headers.extend((k, v.encode("latin-1")) for k, v in carrier.items())


def start_send_span(telemetry: Telemetry, topic: str, key: bytes | None):
    """The span of one message sent (`send {topic}`, PRODUCER): the caller injects it and ends it at the
    acknowledgement."""
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
    }
    if key is not None:
        attributes["messaging.kafka.message.key"] = key.decode("utf-8", "replace")
    return telemetry.tracer.start_span(f"send {topic}", kind=SpanKind.PRODUCER, attributes=attributes)


def sent(span, metadata) -> None:
    """End a send span at the broker's acknowledgement, with where the message landed."""
    span.set_attribute("messaging.destination.partition.id", str(metadata.partition))
    span.set_attribute("messaging.kafka.offset", metadata.offset)
    span.end()


def not_sent(span, exc: BaseException) -> None:
    """End a send span whose message did not get there (it may be sent again, without a span)."""
    span.set_attribute("error.type", type(exc).__name__)
    span.set_status(Status(StatusCode.ERROR, repr(exc)[:300]))
    span.end()


def telemetry_from_env(
    env: Mapping[str, str] | None = None,
    process_parent: str = "producer",
    service_name: str = "llm-router",
    prometheus: bool = False,
) -> Telemetry:
    """The telemetry the `OTEL_*` environment asks for (see the module's docstring); OFF when it asks for none.
    With `prometheus` (the worker's HTTP endpoint is on), metrics are recorded whatever the exporters, and
    `exposition` gives them in Prometheus text format."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return OFF
    capture = env.get(CAPTURE_CONTENT_ENV, "").strip().lower() == "true"
    traces = _exporters(env, "TRACES")
    metrics = _exporters(env, "METRICS")
    if not traces and not metrics and not prometheus:
        return Telemetry(capture_content=capture, process_parent=process_parent)

    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = Resource.create({SERVICE_NAME: env.get("OTEL_SERVICE_NAME") or service_name})
    tracer_provider = meter_provider = None
    exposition = None
    distributions = Distributions(SCOPE)
    if traces:
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        tracer_provider = SdkTracerProvider(
            resource=resource, shutdown_on_exit=False
        )  # shut down by Telemetry.shutdown, bounded
        for name in traces:
            tracer_provider.add_span_processor(
                BatchSpanProcessor(ReportedSpanExporter(_exporter("TRACES", name, env), name))
            )
    if metrics or prometheus:
        from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
        from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader

        # The wrapper and the exporter it wraps must agree on the temporality the reader asks for.
        temporality = metric_temporality(env)
        readers: list[MetricReader] = [
            PeriodicExportingMetricReader(
                ReportedMetricExporter(
                    _exporter("METRICS", name, env, preferred_temporality=temporality),
                    name,
                    distributions,
                    preferred_temporality=temporality,
                )
            )
            for name in metrics
        ]
        if prometheus:
            from worker.observability.prometheus import PrometheusExposition

            reader = PrometheusExposition(distributions)
            readers.append(reader)
            exposition = reader.text
        meter_provider = SdkMeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False)
    _quiet_sdk_logs()
    log.info(
        "telemetry on",
        extra={"traces": traces, "metrics": metrics, "prometheus": prometheus, "capture_content": capture},
    )
    return Telemetry(
        tracer_provider,
        meter_provider,
        capture,
        process_parent,
        [p for p in (tracer_provider, meter_provider) if p is not None],
        distributions,
        exposition,
    )


def _exporters(env: Mapping[str, str], signal: str) -> list[str]:
    value = env.get(f"OTEL_{signal}_EXPORTER")
    if value is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
        return ["otlp"] if endpoint else []
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in ("otlp", "console", "none")]
    if unknown:
        raise ValueError(
            f"OTEL_{signal}_EXPORTER: unknown exporter(s) {', '.join(unknown)} (known: otlp, console, none)"
        )
    return [n for n in names if n != "none"]


def _protocol(env: Mapping[str, str], signal: str) -> str:
    protocol = (
        env.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    )
    if protocol not in ("http/protobuf", "grpc"):
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported (http/protobuf or grpc)")
    return protocol


# The exporter class for each signal and protocol (or the console), imported only when chosen.
_EXPORTERS = {
    ("TRACES", "console"): "opentelemetry.sdk.trace.export:ConsoleSpanExporter",
    ("TRACES", "http/protobuf"): "opentelemetry.exporter.otlp.proto.http.trace_exporter:OTLPSpanExporter",
    ("TRACES", "grpc"): "opentelemetry.exporter.otlp.proto.grpc.trace_exporter:OTLPSpanExporter",
    ("METRICS", "console"): "opentelemetry.sdk.metrics.export:ConsoleMetricExporter",
    ("METRICS", "http/protobuf"): "opentelemetry.exporter.otlp.proto.http.metric_exporter:OTLPMetricExporter",
    ("METRICS", "grpc"): "opentelemetry.exporter.otlp.proto.grpc.metric_exporter:OTLPMetricExporter",
}


def metric_temporality(env: Mapping[str, str]) -> dict[type, Any]:
    """The aggregation temporality of each instrument kind that OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE
    asks for, as the OpenTelemetry specification defines its values: "cumulative" (the default) for all,
    "delta" for counters and histograms, "lowmemory" for synchronous counters and histograms."""
    from opentelemetry.sdk.metrics import (
        Counter,
        Histogram,
        ObservableCounter,
        ObservableGauge,
        ObservableUpDownCounter,
        UpDownCounter,
    )
    from opentelemetry.sdk.metrics.export import AggregationTemporality

    preference = env.get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "cumulative").strip().lower()
    delta: tuple[type, ...] = {
        "delta": (Counter, Histogram, ObservableCounter),
        "lowmemory": (Counter, Histogram),
    }.get(preference, ())
    kinds = (Counter, UpDownCounter, Histogram, ObservableCounter, ObservableUpDownCounter, ObservableGauge)
    return {
        kind: AggregationTemporality.DELTA if kind in delta else AggregationTemporality.CUMULATIVE for kind in kinds
    }


def _exporter(signal: str, name: str, env: Mapping[str, str], **options: Any):
    """The `name` exporter (console or otlp) of `signal`; OTLP's endpoint, headers and timeout come from the
    environment."""
    module, _, cls = _EXPORTERS[(signal, "console" if name == "console" else _protocol(env, signal))].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)(**options)
    except ImportError as exc:
        raise ValueError(f"OTLP over gRPC needs the grpc exporter: pip install 'llm-router[grpc]' ({exc})") from None


class _Outage:
    """Reports an exporter's failures once per outage, and its recovery."""

    def __init__(self, signal: str, name: str) -> None:
        self.signal = signal
        self.name = name
        self.failing = False
        self.failures = 0

    def failed(self, error: str = "") -> None:
        self.failures += 1
        if not self.failing:
            self.failing = True
            log.warning(
                f"telemetry export failing: {self.signal} are dropped until the collector answers "
                "(reported once per outage)",
                extra={"signal": self.signal, "exporter": self.name, "error": error},
            )

    def watch(self, export: Callable[[], Any], success: Any) -> Any:
        """Run one export; note its failure (an exception or a result other than `success`) or success.
        None if it raised."""
        try:
            result = export()
        except Exception as exc:
            self.failed(repr(exc))
            return None
        if result is success:
            self.succeeded()
        else:
            self.failed()
        return result

    def succeeded(self) -> None:
        if self.failing:
            self.failing = False
            log.info(
                "telemetry export recovered",
                extra={"signal": self.signal, "exporter": self.name, "failed_exports": self.failures},
            )


class ReportedSpanExporter(SpanExporter):
    """A span exporter whose failures are reported once per outage."""

    def __init__(self, inner: Any, name: str) -> None:
        self._inner = inner
        self.outage = _Outage("spans", name)

    def export(self, spans):
        result = self.outage.watch(lambda: self._inner.export(spans), SpanExportResult.SUCCESS)
        return SpanExportResult.FAILURE if result is None else result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class ReportedMetricExporter(MetricExporter):
    """A metric exporter whose failures are reported once per outage, and which adds the worker's own
    histograms (`distributions`, cumulative whatever temporality the exporter prefers) to each export."""

    def __init__(
        self,
        inner: Any,
        name: str,
        distributions: Distributions | None = None,
        preferred_temporality: dict[type, Any] | None = None,
    ) -> None:
        super().__init__(preferred_temporality=preferred_temporality)
        self._inner = inner
        self._distributions = distributions
        self.outage = _Outage("metrics", name)

    def export(self, metrics_data, timeout_millis: float = 10_000, **kwargs):
        if self._distributions is not None:
            metrics_data = self._distributions.add_to(metrics_data)
        result = self.outage.watch(
            lambda: self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs),
            MetricExportResult.SUCCESS,
        )
        return MetricExportResult.FAILURE if result is None else result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


class _FirstOfEach(logging.Filter):
    """Lets each message template of the SDK's loggers through once: our wrappers report the outages."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, object]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def _quiet_sdk_logs() -> None:
    """The exporters log every failed batch and retry; keep the first of each, as JSON lines."""
    from worker.observability.logs import JsonFormatter

    sdk = logging.getLogger("opentelemetry")
    if any(isinstance(f, _FirstOfEach) for h in sdk.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_FirstOfEach())
    sdk.addHandler(handler)
    sdk.propagate = False
