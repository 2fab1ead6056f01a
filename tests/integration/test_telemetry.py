"""OpenTelemetry from `llm-router produce` to the result.

One trace, metrics equal to the cost events, a dead collector.
"""

import asyncio
import subprocess
import sys
import time

import httpx
import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.integration.helpers import REPO, Setup, broker_has_transactions, collect, job_bytes, make_topics, produce
from tests.metric_capture import captured_telemetry, points_by_name
from worker.broker import free_port, wait_for_port
from worker.cli import commands as cli
from worker.cli.runs import running_worker
from worker.observability.telemetry import Telemetry, telemetry_from_env
from worker.pipeline.consume import Worker
from worker.pipeline.kafka import DeliveryError

# The verifiable simple_qa chain is gemini then llama; the echo provider answers "[model] prompt",
# so this check fails gemini's answer (failed verification) and passes llama's.
ESCALATING = {"prompt": "What is 2+2?", "task": "simple_qa", "checks": {"regex": r"^\[llama-4-70b\]"}}


def traced(**kwargs):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Telemetry(provider, **kwargs), exporter


def parse_traceparent(headers):
    value = dict(headers)["traceparent"].decode()
    _, trace_id, span_id, _ = value.split("-")
    return int(trace_id, 16), int(span_id, 16)


def test_a_job_from_llm_router_produce_is_one_trace_to_its_result(bootstrap, tmp_path, monkeypatch, report):
    telemetry, exporter = traced()
    setup = Setup(bootstrap)
    for key, value in setup.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(cli, "_telemetry", lambda config: telemetry)  # the CLI's own code path, an in-memory exporter
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(orjson.dumps({"id": "traced-1", **ESCALATING}) + b"\n")
    asyncio.run(make_topics(setup))
    assert cli.main(["produce", str(jobs)]) == 0

    async def scenario():
        async with running_worker(setup.config, telemetry=telemetry):
            return await collect(setup, lambda o: len(o.results) == 1 and len(o.costs) == 2, timeout_s=60)

    outputs = asyncio.run(scenario())
    topics = setup.topics
    spans = exporter.get_finished_spans()
    by_name = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    report(f"trace of one escalating job: {sorted((s.name, s.kind.name) for s in spans)}")

    (produced,) = by_name[f"send {topics.jobs}"]
    (process,) = by_name[f"process {topics.jobs}"]
    (first,) = by_name["chat gemini-2.5-flash"]
    (second,) = by_name["chat llama-4-70b"]
    (result_send,) = by_name[f"send {topics.results}"]
    cost_sends = by_name[f"send {topics.costs}"]
    assert len(cost_sends) == 2
    trace_id = produced.context.trace_id
    assert {s.context.trace_id for s in spans} == {trace_id}, "one trace from the producer to the outputs"

    assert produced.kind is SpanKind.PRODUCER and produced.attributes["messaging.kafka.message.key"] == "traced-1"
    assert process.kind is SpanKind.CONSUMER
    assert process.parent.span_id == produced.context.span_id
    assert [link.context.span_id for link in process.links] == [produced.context.span_id]
    assert process.attributes["messaging.system"] == "kafka"
    assert process.attributes["messaging.destination.name"] == topics.jobs
    assert process.attributes["messaging.consumer.group.name"] == setup.config.kafka.group_id
    assert process.attributes["messaging.kafka.message.key"] == "traced-1"
    assert "messaging.destination.partition.id" in process.attributes and "messaging.kafka.offset" in process.attributes
    assert process.attributes["llm_router.task"] == "simple_qa"
    assert list(process.attributes["llm_router.route"]) == ["gemini-2.5-flash", "llama-4-70b"]

    costs = {c.attempt: c for c in outputs.costs}
    for number, span, provider, model in (
        (1, first, "gemini", "gemini-2.5-flash"),
        (2, second, "llama", "llama-4-70b"),
    ):  # echo stands in: the provider's name
        attributes = span.attributes
        assert span.kind is SpanKind.CLIENT and span.parent.span_id == process.context.span_id
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.provider.name"] == provider
        assert attributes["gen_ai.request.model"] == model and attributes["gen_ai.response.model"] == model
        assert attributes["gen_ai.response.id"] == f"echo-traced-1-{model}"
        assert list(attributes["gen_ai.response.finish_reasons"]) == ["stop"]
        assert attributes["gen_ai.usage.input_tokens"] == costs[number].input_tokens
        assert attributes["gen_ai.usage.output_tokens"] == costs[number].output_tokens
        assert attributes["llm_router.cost_usd"] == pytest.approx(costs[number].cost_usd)
        assert attributes["llm_router.attempt"] == number and "llm_router.rate_limit_wait_ms" in attributes
        assert "error.type" not in attributes, "error.type only on a job's final failure"
    assert (
        first.attributes["llm_router.error.kind"] == "verification_failed"
        and first.attributes["llm_router.attempt.reason"] == "planned"
    )
    assert (
        second.attributes["llm_router.attempt.reason"] == "escalation"
        and second.attributes["llm_router.escalation.reason"] == "verification_failed"
    )
    assert first.end_time <= second.start_time

    # The outputs carry the trace: each one's traceparent is its own send span.
    assert parse_traceparent(outputs.result_headers[0]) == (trace_id, result_send.context.span_id)
    assert sorted(parse_traceparent(h) for h in outputs.cost_headers) == sorted(
        (trace_id, s.context.span_id) for s in cost_sends
    )
    for send in (result_send, *cost_sends):
        assert send.kind is SpanKind.PRODUCER and send.parent.span_id == process.context.span_id
    # Privacy: no prompt or answer text anywhere unless content capture is on.
    assert not [s.name for s in spans if any("2+2" in str(v) for v in s.attributes.values())]


def test_a_job_not_sampled_makes_no_spans_but_its_outputs_still_carry_its_trace(bootstrap):
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    setup = Setup(bootstrap)

    async def scenario():
        await make_topics(setup)
        async with running_worker(setup.config, telemetry=Telemetry(provider)):
            await produce(setup, [(b"u1", job_bytes("u1", "What is 2+2?"))])
            return await collect(setup, lambda o: len(o.results) == 1 and len(o.costs) == 1, timeout_s=60)

    outputs = asyncio.run(scenario())
    assert exporter.get_finished_spans() == ()
    result_trace = dict(outputs.result_headers[0])["traceparent"].decode()
    assert int(result_trace.split("-")[3], 16) & 1 == 0, (
        "not sampled, and said so downstream (the sampled flag is clear)"
    )
    assert dict(outputs.cost_headers[0])["traceparent"].decode().split("-")[1] == result_trace.split("-")[1], (
        "one trace id for the job's outputs"
    )


def test_in_exactly_once_mode_each_output_has_a_send_span_ended_when_its_transaction_commits(bootstrap):
    """On Apache Kafka; the embedded Tansu has no transactions, and there the worker refuses the mode."""
    telemetry, exporter = traced()
    setup = Setup(bootstrap, LLM_ROUTER__WORKER__DELIVERY="exactly_once", LLM_ROUTER__WORKER__COMMIT_INTERVAL_MS=200)
    ids = [f"x{i}" for i in range(30)]

    async def scenario():
        await make_topics(setup)
        async with running_worker(setup.config, telemetry=telemetry):
            await produce(setup, [(i.encode(), job_bytes(i, "What is 2+2?")) for i in ids])
            return await collect(
                setup,
                lambda o: len(o.result_ids) == len(ids) and len(o.costs) >= len(ids),
                timeout_s=90,
                settle_s=0.5,
                isolation_level="read_committed",
            )

    async def refused():  # the worker's run ends at start, without a job
        await make_topics(setup)
        await Worker(setup.config, telemetry=telemetry).run(asyncio.Event())

    if not asyncio.run(broker_has_transactions(bootstrap)):
        with pytest.raises(DeliveryError, match="exactly_once needs a broker with transactions"):
            asyncio.run(refused())
        return
    outputs = asyncio.run(scenario())
    assert outputs.result_ids == set(ids) and outputs.duplicates() == 0
    spans = exporter.get_finished_spans()
    process = {s.context.span_id for s in spans if s.name.startswith("process ")}
    sends = {
        (s.context.trace_id, s.context.span_id): s
        for s in spans
        if s.kind == SpanKind.PRODUCER and s.name.startswith("send ")
    }
    # Each job's outputs: its result, its cost events and, answered, its route. The finished records
    # (deduplication) are the transaction's, each listing many jobs: no job's send span.
    assert not [s for s in sends.values() if s.name == f"send {setup.topics.finished}"]
    routes = [s for s in sends.values() if s.name == f"send {setup.topics.routes}"]
    assert len(routes) == sum(r.status == "ok" for r in outputs.results)
    assert len(sends) == len(outputs.results) + len(outputs.costs) + len(routes)
    for headers in outputs.result_headers + outputs.cost_headers:
        send = sends[parse_traceparent(headers)]  # each output carries its own send span's context
        assert send.parent is not None and send.parent.span_id in process
        assert send.status.status_code != StatusCode.ERROR and send.attributes["messaging.kafka.offset"] >= 0


def test_content_capture_puts_prompts_and_answers_on_attempt_spans_only_when_switched_on(bootstrap):
    telemetry, exporter = traced(capture_content=True)
    setup = Setup(bootstrap)

    async def scenario():
        await make_topics(setup)
        async with running_worker(setup.config, telemetry=telemetry):
            await produce(setup, [(b"c1", job_bytes("c1", "What is 2+2?"))])
            await collect(setup, lambda o: len(o.results) == 1, timeout_s=60)

    asyncio.run(scenario())
    (attempt,) = [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")]
    assert (
        "2+2" in attempt.attributes["gen_ai.input.messages"] and "2+2" in attempt.attributes["gen_ai.output.messages"]
    )


def test_token_and_cost_metrics_equal_the_sums_of_the_cost_events(bootstrap, report):
    telemetry, captured, reader = captured_telemetry()
    setup = Setup(
        bootstrap,
        LLM_ROUTER__MODELS__GPT_4O__REQUESTS_PER_MINUTE=100_000,
        LLM_ROUTER__PROVIDERS__GEMINI__FAILURE_RATE=0.3,
    )
    jobs = [
        (
            f"m{i}".encode(),
            job_bytes(
                f"m{i}",
                f"question {i}",
                tenant=f"t{i % 3}",
                **({"checks": {"regex": r"^\[llama"}} if i % 4 == 0 else {}),
            ),
        )
        for i in range(120)
    ]
    jobs.append((b"bad", b"not json"))

    async def scenario():
        await make_topics(setup)
        async with running_worker(setup.config, telemetry=telemetry):
            await produce(setup, jobs)
            # Every cost event too: the costs topic may be read behind the results topic.
            outputs = await collect(
                setup,
                lambda o: (
                    len(o.results) == 120
                    and len(o.letters) == 1
                    and len(o.costs) >= sum(len(r.attempts) for r in o.results)
                ),
                timeout_s=90,
            )
            reader.force_flush()  # gauges are read while the worker runs
            points = points_by_name(captured.data)
        return outputs, points

    outputs, points = asyncio.run(scenario())
    assert len(outputs.results) == 120
    tokens = {
        t: sum(p.sum for p in points["gen_ai.client.token.usage"] if p.attributes["gen_ai.token.type"] == t)
        for t in ("input", "output")
    }
    assert tokens == {
        "input": sum(c.input_tokens for c in outputs.costs),
        "output": sum(c.output_tokens for c in outputs.costs),
    }
    assert sum(p.value for p in points["llm_router.cost"]) == pytest.approx(sum(c.cost_usd for c in outputs.costs))
    by_tenant = {}
    for p in points["llm_router.cost"]:
        by_tenant[p.attributes["llm_router.tenant"]] = by_tenant.get(p.attributes["llm_router.tenant"], 0) + p.value
    assert by_tenant == pytest.approx(
        {t: sum(c.cost_usd for c in outputs.costs if c.tenant == t) for t in ("t0", "t1", "t2")}
    )
    assert sum(p.count for p in points["gen_ai.client.operation.duration"]) == len(outputs.costs)
    assert sum(p.count for p in points["llm_router.job.attempts"]) == 120
    assert sum(p.sum for p in points["llm_router.job.attempts"]) == len(outputs.costs)
    outcomes = {
        p.attributes["llm_router.outcome"]: p.value
        for p in points["llm_router.jobs"]
        if "llm_router.task" in p.attributes or p.attributes["llm_router.outcome"] == "dead_lettered"
    }
    assert outcomes.get("ok", 0) + outcomes.get("failed", 0) == 120 and outcomes["dead_lettered"] == 1
    escalations = sum(p.value for p in points["llm_router.escalations"])
    assert escalations == sum(len({a.model for a in r.attempts}) - 1 for r in outputs.results) > 0
    assert "llm_router.jobs.in_flight" in points and "llm_router.consumer.lag" in points
    gates = {p.attributes["llm_router.gate"]: p.value for p in points["llm_router.rate_limit.allowance"]}
    assert gates["model:gpt-4o"] == pytest.approx(100_000 * 0.98)
    assert {p.attributes["llm_router.gate"] for p in points["llm_router.rate_limit.waiting"]} >= {"model:gpt-4o"}
    assert points["llm_router.learned_success_rate"], "the learned rates are exported"
    report(f"metrics: {len(outputs.costs)} cost events; token usage {tokens}; escalations {escalations}")


def test_a_dead_collector_loses_spans_never_jobs_and_is_reported_once(bootstrap, monkeypatch, capfd, report):
    """Three runs of the same jobs: untraced, traced to a live OTLP sink, traced to a closed port."""
    count = 2000
    for key, value in {
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2",
    }.items():
        monkeypatch.setenv(key, value)

    def run(telemetry, linger_s=0.0):
        setup = Setup(bootstrap)

        async def scenario():
            await make_topics(setup)
            await produce(setup, [(f"d{i}".encode(), job_bytes(f"d{i}", f"question {i}")) for i in range(count)])
            start = time.monotonic()
            async with running_worker(setup.config, telemetry=telemetry):
                outputs = await collect(setup, lambda o: len(o.results) >= count, timeout_s=180)
            return outputs, time.monotonic() - start

        try:
            return asyncio.run(scenario())
        finally:
            time.sleep(linger_s)
            telemetry.shutdown(timeout_s=3)

    from worker.observability.logs import setup_logging

    setup_logging("INFO")
    sink_port = free_port()
    sink = subprocess.Popen([sys.executable, str(REPO / "scripts" / "otlp_sink.py"), str(sink_port)])
    try:
        wait_for_port("127.0.0.1", sink_port, 20, sink)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{sink_port}")
        live_outputs, live_s = run(telemetry_from_env())
        exported = httpx.get(f"http://127.0.0.1:{sink_port}/stats").json()
    finally:
        sink.terminate()
        sink.wait(timeout=10)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    telemetry = telemetry_from_env()
    assert telemetry.tracing

    dead_outputs, dead_s = run(telemetry, linger_s=1.5)  # the metric reader's export fails too, at least once
    plain_outputs, plain_s = run(Telemetry())
    logged = capfd.readouterr().err
    assert exported["requests"] > 0, "the live run exported to the sink"
    assert (
        len(dead_outputs.result_ids) == count
        and len(live_outputs.result_ids) == count
        and len(plain_outputs.result_ids) == count
    )
    failing = [line for line in logged.splitlines() if "telemetry export failing" in line]
    signals = sorted(orjson.loads(line)["signal"] for line in failing)
    assert signals == ["metrics", "spans"], f"one report per signal, not one per span or batch: {failing}"
    # The SDK's own loggers say each kind of thing once (their first of each message), not per batch.
    sdk_lines = [line for line in logged.splitlines() if '"logger":"opentelemetry' in line]
    assert len(sdk_lines) <= 5, sdk_lines
    report(
        f"dead collector: {count} jobs in {dead_s:.1f} s with the collector dead, {live_s:.1f} s with it alive "
        f"(dead/alive speed {live_s / dead_s:.0%}), {plain_s:.1f} s untraced; "
        f"export failures reported {len(failing)} times (once per signal); SDK log lines {len(sdk_lines)}; "
        f"the live sink took {exported['requests']} requests"
    )
