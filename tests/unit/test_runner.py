"""The attempt runner on the echo provider and scripted providers: retries, escalation, deadlines,
breakers, rerouting for want of capacity (no Kafka)."""

import asyncio
import random
import time

import msgspec
import pytest

from tests.unit.helpers import run
from worker.config import load_config
from worker.errors import ProviderError
from worker.execution.runner import JobRunner, backoff_s, check_answer
from worker.messages import Job
from worker.providers import build_providers
from worker.providers.base import Completion, CompletionRequest


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
