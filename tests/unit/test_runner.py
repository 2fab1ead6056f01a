"""The attempt runner on the echo provider and scripted providers: retries, escalation, deadlines,
breakers, rerouting for want of capacity (no Kafka)."""

import asyncio
import random
import time

import msgspec
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tests.unit.helpers import run
from worker.config import load_config
from worker.errors import ProviderError
from worker.execution.runner import JobRunner, backoff_s, check_answer
from worker.messages import ChatMessage, Checks, ImagePart, Job, JsonSchemaFormat, TextPart, Tool, ToolCall
from worker.observability.telemetry import Telemetry
from worker.providers import build_providers
from worker.providers.base import Completion, CompletionRequest
from worker.routing.learning import FORMAT_PRIOR


def test_answer_checks():
    assert check_answer(Completion(text="fine", finish_reason="stop", input_tokens=1, output_tokens=1)) is None
    assert (
        check_answer(Completion(text="cut", finish_reason="length", input_tokens=1, output_tokens=1)).kind
        == "truncated"
    )
    assert (
        check_answer(Completion(text="no", finish_reason="refusal", input_tokens=1, output_tokens=1)).kind == "refused"
    )
    assert (
        check_answer(Completion(text="  ", finish_reason="stop", input_tokens=1, output_tokens=0)).kind
        == "empty_output"
    )


def test_backoff_has_full_jitter_under_the_cap():
    rng = random.Random(7)
    values = [backoff_s(retry, 0.5, 8.0, rng) for retry in range(10) for _ in range(50)]
    assert all(0 <= v <= 8.0 for v in values)
    assert max(backoff_s(0, 0.5, 8.0, rng) for _ in range(200)) <= 0.5


def test_a_refused_attempt_is_paid_and_escalates(config):
    failing = msgspec.structs.replace(
        config,
        providers={**config.providers, "gemini": msgspec.structs.replace(config.providers["gemini"], failure_rate=1.0)},
    )
    outcome = run(
        JobRunner(failing, build_providers(failing).clients), Job(id="esc", prompt="What is 2+2?", tenant="t1")
    )
    result = outcome.result
    assert result.status == "ok" and result.model == "llama-4-70b"
    assert [a.outcome for a in result.attempts] == ["failed", "ok"]
    assert result.attempts[0].error.kind == "refused" and result.attempts[0].cost_usd > 0
    assert [(e.attempt, e.model, e.outcome, e.tenant) for e in outcome.cost_events] == [
        (1, "gemini-2.5-flash", "failed", "t1"),
        (2, "llama-4-70b", "ok", "t1"),
    ]
    assert result.cost_usd == pytest.approx(sum(e.cost_usd for e in outcome.cost_events))
    assert result.usage.input_tokens == sum(e.input_tokens for e in outcome.cost_events)


class ScriptedProvider:
    """A provider that fails with the given kinds, then answers."""

    def __init__(self, name, kinds):
        self.name = name
        self.kinds = list(kinds)
        self.calls = []

    async def complete(self, request: CompletionRequest) -> Completion:
        self.calls.append(request.model)
        if self.kinds:
            raise ProviderError(self.kinds.pop(0), "scripted")
        return Completion(text="answer", finish_reason="stop", input_tokens=10, output_tokens=5)

    async def close(self):
        return None


def scripted_runner(config, clock=time.monotonic, **kinds):
    """A runner whose providers fail with the kinds given by provider name; its backoffs are recorded, not slept."""
    providers = {name: ScriptedProvider(name, kinds.get(name, [])) for name in config.providers}
    sleeps = []

    async def sleep(seconds):
        sleeps.append(seconds)

    return JobRunner(config, providers, sleep=sleep, clock=clock), providers, sleeps


def test_transient_errors_retry_the_same_model_after_a_backoff(config):
    runner, providers, sleeps = scripted_runner(config, gemini=["rate_limited", "server"])
    result = run(runner, Job(id="t", prompt="q")).result
    assert result.status == "ok" and result.model == "gemini-2.5-flash"
    assert providers["gemini"].calls == ["gemini-2.5-flash"] * 3
    assert len(sleeps) == 2


def test_the_retry_budget_is_per_job_then_escalates(config):
    runner, providers, _ = scripted_runner(config, gemini=["timeout"] * 10)
    result = run(runner, Job(id="t", prompt="q")).result
    assert result.model == "llama-4-70b"
    assert len(providers["gemini"].calls) == config.worker.max_retries_per_job + 1


def test_quota_and_auth_take_the_provider_out_of_rotation(config):
    runner, providers, _ = scripted_runner(config, llama=["auth"])
    result = run(runner, Job(id="t", prompt="q", allowed_providers=["llama", "openai"])).result
    assert result.model == "gpt-4o" and providers["llama"].calls == ["llama-4-70b"]
    second = run(runner, Job(id="u", prompt="q", allowed_providers=["llama", "openai"])).result
    assert second.model == "gpt-4o" and len(second.attempts) == 1 and providers["llama"].calls == ["llama-4-70b"]


def test_context_too_long_jumps_to_a_model_whose_window_fits(config):
    runner, providers, _ = scripted_runner(config, llama=["context_too_long"])
    result = run(
        runner,
        Job(
            id="t",
            prompt="q",
            allowed_providers=["llama", "openai", "gemini"],
            task="code_generation",
            accuracy_floor=0.88,
        ),
    ).result
    # llama (128K) said too long: gpt-4o (128K) is skipped, gemini (1M) is tried
    assert [a.model for a in result.attempts] == ["llama-4-70b", "gemini-2.5-flash"] and result.status == "ok"
    assert providers["openai"].calls == []


def test_the_job_deadline_bounds_every_attempt(config):
    short = msgspec.structs.replace(config, routing=msgspec.structs.replace(config.routing, job_deadline_s=0.2))

    class Hanging(ScriptedProvider):
        async def complete(self, request):
            self.calls.append(request.model)
            await asyncio.sleep(10)

    providers = {name: Hanging(name, []) for name in config.providers}
    outcome = run(JobRunner(short, providers), Job(id="t", prompt="q"))
    assert outcome.result.status == "failed" and outcome.result.error.kind == "deadline_exceeded"
    assert len(outcome.cost_events) == 1 and outcome.cost_events[0].error_kind == "deadline_exceeded"


def test_a_failing_provider_opens_its_breaker_and_is_routed_around(config):
    clock = [0.0]
    runner, providers, _ = scripted_runner(config, clock=lambda: clock[0], gemini=["server"] * 100)
    for i in range(6):
        run(runner, Job(id=f"j{i}", prompt="q"))
    calls = len(providers["gemini"].calls)
    for i in range(20):
        assert run(runner, Job(id=f"k{i}", prompt="q")).result.model == "llama-4-70b"
    assert len(providers["gemini"].calls) == calls, "no call while the breaker is open"
    clock[0] = 100.0
    run(runner, Job(id="probe", prompt="q"))
    assert len(providers["gemini"].calls) == calls + 1, "one probe after the cooldown"


def test_a_job_whose_every_attempt_fails_gets_a_failed_result_with_the_reason(config):
    runner, _, _ = scripted_runner(config, gemini=["context_too_long"])
    result = run(runner, Job(id="t", prompt="q" * 20_000)).result
    assert result.status == "failed" and result.error.kind == "context_too_long"
    assert "all 1 attempt(s) failed" in result.error.message
    assert result.model is None


def rerouting_config(config, waiting):
    models = {
        **config.models,
        "gemini-2.5-flash": msgspec.structs.replace(config.models["gemini-2.5-flash"], requests_per_minute=60),
    }
    return msgspec.structs.replace(
        config, models=models, rate_limits=msgspec.structs.replace(config.rate_limits, reroute_waiting=waiting)
    )


async def run_many(runner, count, timeout_s):
    tasks = [
        asyncio.create_task(runner.run(Job(id=f"j{i}", prompt="What is the capital of France?"))) for i in range(count)
    ]
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return [t.result().result for t in done]


def test_when_too_many_jobs_wait_for_a_model_they_go_to_the_next_model_with_capacity(config):
    rerouting = rerouting_config(config, waiting=3)
    runner = JobRunner(rerouting, build_providers(rerouting).clients)
    results = asyncio.run(run_many(runner, 300, timeout_s=10))
    assert len(results) == 300 and all(r.status == "ok" for r in results)
    by_model = {m: sum(1 for r in results if r.model == m) for m in {r.model for r in results}}
    # gemini's bucket holds 58.8 requests (60/min less the margin), then one a second; 3 wait for it; the rest go on.
    assert 58 + 3 <= by_model["gemini-2.5-flash"] <= 58 + 3 + 5 and by_model["llama-4-70b"] >= 230, by_model
    rerouted = [r for r in results if r.attempts[0].rerouted_from]
    assert len(rerouted) == runner.rerouted == by_model["llama-4-70b"]
    assert {r.attempts[0].rerouted_from for r in rerouted} == {"gemini-2.5-flash"}


def test_without_rerouting_jobs_wait_for_their_planned_model(config):
    waiting = rerouting_config(config, waiting=0)
    runner = JobRunner(waiting, build_providers(waiting).clients)
    results = asyncio.run(run_many(runner, 100, timeout_s=2))
    assert {r.model for r in results} == {"gemini-2.5-flash"} and 58 <= len(results) <= 61, len(results)
    assert runner.rerouted == 0


def test_a_call_cut_by_the_deadline_returns_its_reservation():
    config = load_config(
        env={f"LLM_ROUTER__PROVIDERS__{p}__KIND": "echo" for p in ("OPENAI", "ANTHROPIC", "GEMINI", "LLAMA")}
        | {
            "LLM_ROUTER__ROUTING__JOB_DEADLINE_S": "0.1",
            "LLM_ROUTER__MODELS__GPT_4O__TOKENS_PER_MINUTE": "100000",
            "LLM_ROUTER__PROVIDERS__OPENAI__LATENCY_MS": "1000",
        }
    )
    runner = JobRunner(config, build_providers(config).clients)
    outcome = asyncio.run(runner.run(Job(id="j", prompt="q", model="gpt-4o")))
    gate = runner.limits.models["gpt-4o"]
    assert outcome.result.error.kind == "deadline_exceeded"
    assert gate.in_flight == 0 and gate.stats().used["tokens"] == 0


def test_a_job_no_model_can_serve_fails_with_no_route_and_costs_nothing(config):
    outcome = run(JobRunner(config, build_providers(config).clients), Job(id="j", prompt="q", model="gpt-9"))
    result = outcome.result
    assert result.status == "failed" and result.error.kind == "no_route" and "gpt-9" in result.error.message
    assert result.attempts == [] and outcome.cost_events == [] and result.cost_usd == 0 and result.model is None


def test_a_request_larger_than_a_whole_minutes_limit_is_a_bad_request_that_costs_nothing():
    config = load_config(
        env={f"LLM_ROUTER__PROVIDERS__{p}__KIND": "echo" for p in ("OPENAI", "ANTHROPIC", "GEMINI", "LLAMA")}
        | {"LLM_ROUTER__MODELS__GPT_4O__TOKENS_PER_MINUTE": "100"}
    )
    runner = JobRunner(config, build_providers(config).clients)
    outcome = run(runner, Job(id="j", prompt="q", model="gpt-4o", max_output_tokens=500))
    result = outcome.result
    assert result.status == "failed" and result.error.kind == "bad_request" and "can never fit" in result.error.message
    assert [(a.model, a.error.kind, a.cost_usd) for a in result.attempts] == [("gpt-4o", "bad_request", 0.0)]
    assert [e.error_kind for e in outcome.cost_events] == ["bad_request"]
    assert runner.limits.models["gpt-4o"].in_flight == 0


class HangingAfter(ScriptedProvider):
    """Fails with the given kinds, then never answers."""

    async def complete(self, request):
        if self.kinds:
            return await super().complete(request)
        self.calls.append(request.model)
        await asyncio.sleep(10)


def test_a_deadline_after_failed_attempts_names_them_and_the_cut_call_is_a_cost_event(config):
    short = msgspec.structs.replace(config, routing=msgspec.structs.replace(config.routing, job_deadline_s=0.2))

    async def sleep(seconds):
        return None

    providers = {name: HangingAfter(name, ["server"]) for name in config.providers}
    outcome = run(JobRunner(short, providers, sleep=sleep), Job(id="t", prompt="q"))
    error = outcome.result.error
    assert error.kind == "deadline_exceeded"
    assert error.message == "the job deadline of 0.2 s passed after 1 attempt(s); last: scripted"
    assert [e.error_kind for e in outcome.cost_events] == ["server", "deadline_exceeded"]


def traced_runner(config, **kinds):
    """A scripted runner whose spans go to an in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(provider)
    providers = {name: ScriptedProvider(name, kinds.get(name, [])) for name in config.providers}

    async def sleep(seconds):
        return None

    return JobRunner(config, providers, sleep=sleep, telemetry=telemetry), telemetry, exporter


async def run_traced(runner, telemetry, job):
    with telemetry.tracer.start_as_current_span("process llm.jobs"):
        return await runner.run(job)


def test_each_attempt_span_says_why_it_was_made_and_only_a_final_failure_is_an_error(config):
    runner, telemetry, exporter = traced_runner(config, gemini=["server", "verification_failed"])
    outcome = asyncio.run(run_traced(runner, telemetry, Job(id="t", prompt="q")))
    assert outcome.result.status == "ok" and outcome.result.model == "llama-4-70b"
    *attempts, job = exporter.get_finished_spans()
    assert job.name == "process llm.jobs" and job.status.status_code is StatusCode.UNSET
    assert [
        (
            s.name,
            s.attributes["llm_router.attempt"],
            s.attributes["llm_router.attempt.reason"],
            s.attributes.get("llm_router.escalation.reason"),
            s.attributes["llm_router.outcome"],
        )
        for s in attempts
    ] == [
        ("chat gemini-2.5-flash", 1, "planned", None, "failed"),
        ("chat gemini-2.5-flash", 2, "retry", "server", "failed"),
        ("chat llama-4-70b", 3, "escalation", "verification_failed", "ok"),
    ]
    assert not any("error.type" in s.attributes for s in attempts)

    exporter.clear()
    runner, telemetry, exporter = traced_runner(config, gemini=["auth"], llama=["auth"])
    outcome = asyncio.run(run_traced(runner, telemetry, Job(id="u", prompt="q", allowed_providers=["gemini", "llama"])))
    assert outcome.result.error.kind == "auth"
    *attempts, job = exporter.get_finished_spans()
    assert [s.attributes.get("error.type") for s in attempts] == [None, "auth"]
    assert job.attributes["error.type"] == "auth" and job.status.status_code is StatusCode.ERROR


def test_a_cancellation_that_is_not_the_deadline_propagates_and_ends_the_attempt_spans(config):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(provider)
    providers = {name: HangingAfter(name, []) for name in config.providers}
    runner = JobRunner(config, providers, telemetry=telemetry)

    async def scenario():
        task = asyncio.create_task(run_traced(runner, telemetry, Job(id="t", prompt="q")))
        while not any(p.calls for p in providers.values()):
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    attempt = next(s for s in exporter.get_finished_spans() if s.name.startswith("chat "))
    assert attempt.attributes["llm_router.error.kind"] == "deadline_exceeded" and "error.type" not in attempt.attributes


class AnsweringProvider:
    """A provider whose models answer as scripted: `answer(request)` gives (text, finish reason); the
    requests it got are kept."""

    def __init__(self, name, answer):
        self.name = name
        self.answer = answer
        self.requests = []

    async def complete(self, request: CompletionRequest) -> Completion:
        self.requests.append(request)
        text, finish = self.answer(request)
        return Completion(text=text, finish_reason=finish, input_tokens=10, output_tokens=request.max_output_tokens)

    async def close(self):
        return None


def answering_runner(config, answer, **answers):
    """A runner whose providers answer with `answer`, or with the one given by provider name."""
    providers = {name: AnsweringProvider(name, answers.get(name, answer)) for name in config.providers}
    return JobRunner(config, providers), providers


def learned(runner):
    """What the runner learned: accuracy per task and model, and JSON format reliability per model."""
    return runner.quality.snapshot(), runner.quality.json_format.snapshot()


@pytest.mark.parametrize(
    ("job", "text", "finish", "kind", "accuracy", "json_format"),
    [
        (Job(id="w", prompt="2+2?", checks=Checks(expected="4")), "5", "stop", "verification_failed", "down", None),
        (Job(id="r", prompt="2+2?", checks=Checks(expected="4")), "4", "stop", None, "up", None),
        (Job(id="f", prompt="q"), "no", "refusal", "refused", "down", None),
        (Job(id="e", prompt="q"), " ", "stop", "empty_output", "down", None),
        (Job(id="j", prompt="q", response_format="json"), "it is 4", "stop", "format_failed", None, "down"),
        (Job(id="k", prompt="q", response_format="json"), '{"a": 4}', "stop", None, None, "up"),
        (
            Job(id="s", prompt="q", checks=Checks(json_schema={"type": "array"})),
            "4!",
            "stop",
            "format_failed",
            None,
            "down",
        ),
        (
            Job(id="t", prompt="q", checks=Checks(json_schema={"type": "array"})),
            "{}",
            "stop",
            "verification_failed",
            "down",
            "up",
        ),
        (Job(id="c", prompt="q", max_output_tokens=16), "cut", "length", "truncated", None, None),
        (
            Job(id="d", prompt="q", response_format="json", max_output_tokens=16),
            '{"a',
            "length",
            "truncated",
            None,
            None,
        ),
    ],
)
def test_what_each_outcome_teaches(config, job, text, finish, kind, accuracy, json_format):
    """A wrong, refused or empty answer counts against the model's accuracy for the task type; an answer
    that is not the JSON asked for counts against its JSON format reliability only; a truncation counts
    against nothing."""
    runner, _ = answering_runner(config, lambda request: (text, finish))
    job = msgspec.structs.replace(job, model="gemini-2.5-flash", task="simple_qa")  # one model, no escalation
    prior = runner.quality.rate("simple_qa", "gemini-2.5-flash")
    result = run(runner, job).result
    assert (result.error.kind if result.error else None) == kind
    assert [a.error.kind if a.error else None for a in result.attempts] == [kind]
    accuracy_now = runner.quality.rate("simple_qa", "gemini-2.5-flash")
    format_now = runner.quality.json_format.rate("gemini-2.5-flash")
    moved = {None: lambda now, before: now == before, "up": float.__gt__, "down": float.__lt__}
    assert moved[accuracy](accuracy_now, prior), f"accuracy {prior} -> {accuracy_now}"
    assert moved[json_format](format_now, FORMAT_PRIOR), f"format reliability {FORMAT_PRIOR} -> {format_now}"
    snapshot, formats = learned(runner)
    assert ("gemini-2.5-flash" in snapshot.get("simple_qa", {})) == (accuracy is not None)
    assert ("gemini-2.5-flash" in formats) == (json_format is not None)


def test_a_format_failure_escalates_and_is_a_cost_event_of_its_own_kind(config):
    runner, providers = answering_runner(
        config, lambda request: ('{"answer": 4}', "stop"), gemini=lambda request: ("The answer is 4.", "stop")
    )
    outcome = run(runner, Job(id="jf", prompt="2+2? Answer in JSON.", response_format="json", task="simple_qa"))
    result = outcome.result
    assert result.status == "ok" and result.output == '{"answer": 4}' and result.model != "gemini-2.5-flash"
    first, last = outcome.cost_events[0], outcome.cost_events[-1]
    assert (first.model, first.error_kind, last.error_kind) == ("gemini-2.5-flash", "format_failed", None)
    assert all(r.json_output for p in providers.values() for r in p.requests), "every call asked for JSON"
    assert runner.quality.snapshot() == {}, "no accuracy learned: only formats were judged"


def test_a_fenced_json_answer_is_accepted_and_given_as_the_model_wrote_it(config):
    fenced = '```json\n{"answer": 4}\n```'
    runner, _ = answering_runner(config, lambda request: (fenced, "stop"))
    result = run(runner, Job(id="jc", prompt="2+2 in JSON", response_format="json", task="simple_qa")).result
    assert result.status == "ok" and len(result.attempts) == 1 and result.output == fenced


def test_plain_jobs_do_not_ask_for_json(config):
    runner, providers = answering_runner(config, lambda request: ("4", "stop"))
    assert run(runner, Job(id="p", prompt="2+2?", task="simple_qa")).result.status == "ok"
    assert [r.json_output for p in providers.values() for r in p.requests] == [False]


def test_an_answer_cut_at_the_workers_cap_tries_the_same_model_once_with_double_the_cap(config):
    """simple_qa's cap is 256: the answer needs 400 tokens, so the model is asked again with 512."""
    runner, providers = answering_runner(
        config, lambda request: ("long answer", "length" if request.max_output_tokens < 400 else "stop")
    )
    result = run(runner, Job(id="tc", prompt="explain", task="simple_qa")).result
    assert result.status == "ok" and result.model == "gemini-2.5-flash"
    assert [r.max_output_tokens for r in providers["gemini"].requests] == [256, 512]
    assert [(a.model, a.error.kind if a.error else None) for a in result.attempts] == [
        ("gemini-2.5-flash", "truncated"),
        ("gemini-2.5-flash", None),
    ]
    assert learned(runner) == ({}, {}), "a truncation teaches nothing"


def test_a_larger_cap_is_tried_once_a_job_then_the_next_models_keep_it(config):
    runner, providers = answering_runner(config, lambda request: ("endless", "length"))
    result = run(runner, Job(id="tn", prompt="explain", task="simple_qa")).result
    assert result.status == "failed" and result.error.kind == "truncated"
    caps = [(r.model, r.max_output_tokens) for p in providers.values() for r in p.requests]
    assert [c for c in caps if c[0] == "gemini-2.5-flash"] == [("gemini-2.5-flash", 256), ("gemini-2.5-flash", 512)]
    assert len(caps) == len(result.attempts) and len(caps) > 2
    assert all(cap == 512 for model, cap in caps if model != "gemini-2.5-flash")
    assert learned(runner) == ({}, {})


def test_a_jobs_own_cap_is_a_hard_limit(config):
    runner, providers = answering_runner(config, lambda request: ("endless", "length"))
    result = run(runner, Job(id="th", prompt="explain", task="simple_qa", max_output_tokens=16)).result
    assert result.status == "failed" and result.error.kind == "truncated"
    requests = [r for p in providers.values() for r in p.requests]
    assert [r.max_output_tokens for r in requests] == [16] * len(requests)
    assert len({r.model for r in requests}) == len(requests), "each model once: the next model, the same cap"


def test_a_provider_out_of_rotation_gets_one_probe_job_after_the_retry_period_and_comes_back_when_it_answers(
    config, caplog
):
    now = [0.0]
    runner, providers, _ = scripted_runner(config, clock=lambda: now[0], llama=["quota", "quota"])
    job = {"prompt": "q", "allowed_providers": ["llama", "openai"]}
    with caplog.at_level("INFO", logger="llm_router.providers"):
        assert run(runner, Job(id="a", **job)).result.model == "gpt-4o"
        assert run(runner, Job(id="b", **job)).result.model == "gpt-4o"
        assert providers["llama"].calls == ["llama-4-70b"], "out of rotation: not called again"
        now[0] = config.routing.rotation_retry_s
        assert runner.serving()
        # The probe meets quota again: out for another period, and said once only.
        assert run(runner, Job(id="c", **job)).result.model == "gpt-4o"
        assert providers["llama"].calls == ["llama-4-70b"] * 2
        now[0] += config.routing.rotation_retry_s - 1
        assert run(runner, Job(id="d", **job)).result.model == "gpt-4o"
        assert len(providers["llama"].calls) == 2, "not before the next period"
        now[0] += 1
        assert run(runner, Job(id="e", **job)).result.model == "llama-4-70b", "the probe answered"
        assert run(runner, Job(id="f", **job)).result.model == "llama-4-70b", "back in rotation for every job"
    events = [r.getMessage() for r in caplog.records]
    assert events.count("provider out of rotation") == 1
    assert events.count("provider back in rotation") == 1


def test_a_runner_whose_only_provider_is_out_of_rotation_is_not_serving_until_its_retry_is_due(config):
    now = [0.0]
    providers = {"llama": ScriptedProvider("llama", ["auth"])}
    unavailable = dict.fromkeys(("openai", "anthropic", "gemini"), "no API key")
    runner = JobRunner(config, providers, unavailable, sleep=lambda s: asyncio.sleep(0), clock=lambda: now[0])
    assert runner.serving() and runner.healthy()
    result = run(runner, Job(id="a", prompt="q", allowed_providers=["llama"])).result
    assert result.status == "failed" and result.error.kind == "auth"
    assert not runner.serving() and not runner.healthy()
    now[0] = config.routing.rotation_retry_s
    assert runner.serving() and not runner.healthy(), "one probe may go"
    assert run(runner, Job(id="b", prompt="q", allowed_providers=["llama"])).result.status == "ok"
    assert runner.healthy()


SEEDED = {"prompt": "q", "task": "simple_qa", "seed": 7, "temperature": 0.2, "top_p": 0.9}


def test_a_model_without_the_seed_capability_gets_the_job_without_its_seed(config):
    runner, providers = answering_runner(config, lambda request: ("4", "stop"))
    result = run(runner, Job(id="s1", model="claude-3-5-sonnet", **SEEDED)).result
    assert [r.sampling.seed for r in providers["anthropic"].requests] == [None], "not sent"
    assert result.attempts[0].dropped_params == ["seed"]
    result = run(runner, Job(id="s2", model="gpt-4o", **SEEDED)).result
    assert [r.sampling.seed for r in providers["openai"].requests] == [7] and result.attempts[0].dropped_params == []
    # On the Anthropic wire, what its adapter leaves out too, each named once, in the job's order.
    wired = load_config(env={})
    runner, providers = answering_runner(wired, lambda request: ("4", "stop"))
    result = run(runner, Job(id="s3", model="claude-3-5-sonnet", **SEEDED)).result
    assert result.attempts[0].dropped_params == ["top_p", "seed"]


def test_the_plan_cache_tells_jobs_apart_by_what_they_need(config):
    blind = {
        name: msgspec.structs.replace(m, capabilities=["tools"]) if name == "gemini-2.5-flash" else m
        for name, m in config.models.items()
    }
    config = msgspec.structs.replace(config, models=blind)
    runner = JobRunner(config, build_providers(config).clients)
    assert run(runner, Job(id="t", prompt="what is it?", task="simple_qa")).result.model == "gemini-2.5-flash"
    image = [ChatMessage(role="user", content=[TextPart(text="what is it?"), ImagePart(url="https://x/c.png")])]
    result = run(runner, Job(id="i", messages=image, task="simple_qa")).result
    assert result.status == "ok" and result.model != "gemini-2.5-flash", "gemini has no vision here"


def test_no_model_with_the_capability_is_a_failed_result_naming_it(config):
    job = Job(
        id="n",
        prompt="q",
        model="claude-3-5-sonnet",
        response_format=JsonSchemaFormat(name="a", schema={}, strict=True),
    )
    result = run(JobRunner(config, build_providers(config).clients), job).result
    assert result.status == "failed" and result.error.kind == "no_route" and result.attempts == []
    assert "needs json_schema" in result.error.message


CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


def test_tool_and_schema_jobs_on_the_echo_provider_answer_with_calls_and_parsed_json(config):
    runner = JobRunner(config, build_providers(config).clients)
    tools = [Tool(name="weather", parameters=CITY), Tool(name="clock")]
    called = run(runner, Job(id="tc", prompt="weather in Oslo?", tools=tools, tool_choice="required")).result
    assert (called.status, called.finish_reason, called.output) == ("ok", "tool_calls", "")
    assert [(c.name, sorted(c.arguments)) for c in called.tool_calls] == [("weather", ["city"])]
    structured = Job(
        id="sj", prompt="capital of Norway", response_format=JsonSchemaFormat(name="c", schema=CITY, strict=True)
    )
    result = run(runner, structured).result
    assert (result.status, result.finish_reason, sorted(result.parsed)) == ("ok", "stop", ["city"])
    assert len(result.attempts) == 1 and result.parsed == msgspec.json.decode(result.output)


class ToolCallingProvider:
    """A provider whose models call a tool: with `arguments` by model (else {"city": "Oslo"})."""

    def __init__(self, name, arguments):
        self.name = name
        self.arguments = arguments

    async def complete(self, request: CompletionRequest) -> Completion:
        arguments = self.arguments.get(request.model, {"city": "Oslo"})
        call = ToolCall(id="c1", name="weather", arguments=arguments)
        return Completion(text="", finish_reason="tool_calls", input_tokens=10, output_tokens=5, tool_calls=(call,))

    async def close(self):
        return None


def test_a_tool_call_off_the_tools_parameters_is_a_paid_format_failure_that_escalates(config):
    providers = {name: ToolCallingProvider(name, {"gemini-2.5-flash": {"town": "Oslo"}}) for name in config.providers}
    runner = JobRunner(config, providers)
    job = Job(id="tf", prompt="weather in Oslo?", task="simple_qa", tools=[Tool(name="weather", parameters=CITY)])
    outcome = run(runner, job)
    result = outcome.result
    assert result.status == "ok" and result.model != "gemini-2.5-flash"
    first = result.attempts[0]
    assert (first.model, first.error.kind, first.cost_usd > 0) == ("gemini-2.5-flash", "format_failed", True)
    assert first.error.message.endswith("Additional properties are not allowed ('town' was unexpected)")
    assert result.tool_calls == [ToolCall(id="c1", name="weather", arguments={"city": "Oslo"})]
    assert runner.quality.snapshot() == {}, "a format failure teaches no accuracy"


def test_a_reservation_counts_the_jobs_images(config):
    limited = load_config(
        env={
            **{f"LLM_ROUTER__PROVIDERS__{p}__KIND": "echo" for p in ("OPENAI", "ANTHROPIC", "GEMINI", "LLAMA")},
            "LLM_ROUTER__MODELS__GEMINI_2_5_FLASH__TOKENS_PER_MINUTE": "1500",
        }
    )
    runner = JobRunner(limited, build_providers(limited).clients)
    assert run(runner, Job(id="t", prompt="what is it?", model="gemini-2.5-flash")).result.status == "ok"
    image = [ChatMessage(role="user", content=[TextPart(text="what is it?"), ImagePart(url="https://x/c.png")])]
    result = run(runner, Job(id="i", messages=image, model="gemini-2.5-flash")).result
    # An image whose size is not known counts as the most its wire's rule gives (1,445 tokens on OpenAI's,
    # the rule of the echo provider): with the output cap it can never fit 1,500 tokens a minute.
    assert result.status == "failed" and result.attempts[0].error.kind == "bad_request"
    assert "'input_tokens': 1452" in result.attempts[0].error.message


def test_attempt_spans_trace_content_parts_and_tool_calls_when_content_capture_is_on(config):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(provider, capture_content=True)
    runner = JobRunner(config, {name: ToolCallingProvider(name, {}) for name in config.providers}, telemetry=telemetry)
    messages = [
        ChatMessage(role="user", content=[TextPart(text="weather here?"), ImagePart(url="https://x/c.png")]),
        ChatMessage(role="assistant", tool_calls=[ToolCall(id="c0", name="weather", arguments={"city": "Oslo"})]),
        ChatMessage(role="tool", tool_call_id="c0", content="rain"),
    ]
    job = Job(id="sp", messages=messages, task="simple_qa", tools=[Tool(name="weather", parameters=CITY)])
    assert asyncio.run(run_traced(runner, telemetry, job)).result.status == "ok"
    span = next(s for s in exporter.get_finished_spans() if s.name.startswith("chat "))
    assert msgspec.json.decode(span.attributes["gen_ai.input.messages"]) == [
        {
            "role": "user",
            "parts": [
                {"type": "text", "content": "weather here?"},
                {"type": "uri", "modality": "image", "uri": "https://x/c.png"},
            ],
        },
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "c0", "name": "weather", "arguments": {"city": "Oslo"}}],
        },
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c0", "response": "rain"}]},
    ]
    assert msgspec.json.decode(span.attributes["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "tool_call", "id": "c1", "name": "weather", "arguments": {"city": "Oslo"}}],
            "finish_reason": "tool_calls",
        }
    ]


def test_an_unreadable_tool_call_is_a_format_failure_not_an_empty_answer(config):
    class Unreadable(ToolCallingProvider):
        async def complete(self, request):
            error = "the arguments of 'weather' are not a JSON object"
            return Completion(
                text="", finish_reason="tool_calls", input_tokens=10, output_tokens=5, tool_call_error=error
            )

    runner = JobRunner(config, {name: Unreadable(name, {}) for name in config.providers})
    job = Job(id="tu", prompt="weather?", model="gpt-4o", tools=[Tool(name="weather", parameters=CITY)])
    result = run(runner, job).result
    assert result.status == "failed" and result.error.kind == "format_failed"
    assert "not a JSON object" in result.error.message and result.attempts[0].cost_usd > 0
    assert runner.quality.snapshot() == {}, "not a wrong answer: no accuracy learned"
