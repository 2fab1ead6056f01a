"""Telemetry set-up from the OTEL_* environment, and trace context in and out of Kafka headers."""

import pytest
from opentelemetry.sdk.trace import TracerProvider

from worker.observability.telemetry import OFF, Telemetry, inject, telemetry_from_env, trace_carrier


def test_nothing_is_exported_unless_the_environment_asks():
    telemetry = telemetry_from_env({})
    assert not telemetry.tracing and type(telemetry.tracer_provider) is type(OFF.tracer_provider)
    assert type(telemetry.meter_provider) is type(OFF.meter_provider)
    assert not telemetry_from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}
    ).tracing


def test_an_otlp_endpoint_turns_on_traces_and_metrics_over_http():
    telemetry = telemetry_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    try:
        assert telemetry.tracing and type(telemetry.meter_provider).__module__.startswith("opentelemetry.sdk")
    finally:
        telemetry.shutdown(timeout_s=1)
    only_traces = telemetry_from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none"})
    assert only_traces.tracing and not type(only_traces.meter_provider).__module__.startswith("opentelemetry.sdk")
    only_traces.shutdown(timeout_s=1)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: unknown exporter"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "http/protobuf or grpc"),
        # The test environment has no grpc extra: the error says how to get it.
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, r"pip install 'llm-router\[grpc\]'"),
    ],
)
def test_settings_it_cannot_honour_are_refused_with_the_variable_named(env, message):
    with pytest.raises(ValueError, match=message):
        telemetry_from_env(env)


def test_content_capture_is_off_unless_switched_on():
    assert not telemetry_from_env({}).capture_content
    assert telemetry_from_env({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}).capture_content


def test_trace_context_goes_into_and_out_of_kafka_headers():
    telemetry = Telemetry(TracerProvider())
    span = telemetry.tracer.start_span("send jobs")
    from opentelemetry import trace

    headers = [("other", b"x")]
    inject(headers, trace.set_span_in_context(span))
    carrier = trace_carrier(headers)
    assert set(carrier) == {"traceparent"} and carrier["traceparent"].split("-")[2] == format(
        span.get_span_context().span_id, "016x"
    )
    parent, links = telemetry.process_context(headers)
    assert trace.get_current_span(parent).get_span_context().span_id == span.get_span_context().span_id
    assert [link.context.span_id for link in links] == [span.get_span_context().span_id]
    root, links = Telemetry(TracerProvider(), process_parent="link").process_context(headers)
    assert root is None and len(links) == 1, "link mode: a trace of its own, linked to the producer"
    assert telemetry.process_context([]) == (None, [])
