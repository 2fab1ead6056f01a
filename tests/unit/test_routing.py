"""Classifier, plan and the attempt loop on the echo provider (no Kafka)."""

import asyncio

import msgspec
import pytest

from worker.attempts import JobRunner, backoff_s, check_answer
from worker.classify import Classifier
from worker.config import load_config
from worker.errors import ProviderError
from worker.messages import ChatMessage, Job
from worker.plan import NoRoute, make_plan
from worker.pricing import attempt_cost
from worker.providers import build_providers
from worker.providers.base import Completion, CompletionRequest


@pytest.fixture(scope="module")
def config(echo_config):
    return echo_config


@pytest.mark.parametrize(
    "prompt, task",
    [
        ("Please summarize this report", "summarization"),
        ("tldr of the thread", "summarization"),
        ("Implement a binary heap", "code_generation"),
        ("Can you fix this stack trace", "code_generation"),
        ("Compare Rust and Go", "complex_reasoning"),
        ("Write a haiku", "creative_writing"),
        ("What is the boiling point of water?", "simple_qa"),
        ("x" * 10_001, "long_context"),
        ("Summarize: " + "x" * 20_000, "summarization"),  # keywords come before length
    ],
)
def test_reference_classifier(config, prompt, task):
    assert Classifier(config.classifier).classify(Job(id="j", prompt=prompt)) == task


def test_the_jobs_own_task_wins(config):
    assert Classifier(config.classifier).classify(Job(id="j", prompt="summarize", task="creative_writing")) == "creative_writing"


def test_plan_follows_the_route_and_narrows_by_constraints(config):
    assert make_plan(Job(id="j", prompt="q"), "simple_qa", config, 10).models == ["gemini-2.5-flash", "llama-4-70b", "gpt-4o"]
    plan = make_plan(Job(id="j", prompt="q", allowed_providers=["llama", "openai"]), "simple_qa", config, 10)
    assert plan.models == ["llama-4-70b", "gpt-4o"] and plan.max_output_tokens == 256
    assert make_plan(Job(id="j", prompt="q", accuracy_floor=0.93), "simple_qa", config, 10).models == ["gpt-4o"]
    assert make_plan(Job(id="j", prompt="q", model="claude-3-5-sonnet", max_output_tokens=9), "simple_qa", config, 10).models == ["claude-3-5-sonnet"]
    assert make_plan(Job(id="j", prompt="q"), "simple_qa", config, 200_000).models == ["gemini-2.5-flash"]


@pytest.mark.parametrize(
    "job, task, message",
    [
        (Job(id="j", prompt="q", allowed_providers=["on-prem"]), "simple_qa", "allowed_providers ['on-prem'] excludes every candidate"),
        (Job(id="j", prompt="q", model="gpt-9"), "simple_qa", "pinned model 'gpt-9' is not configured"),
        (Job(id="j", prompt="q", task="astrology"), "astrology", "unknown task type 'astrology'"),
        (Job(id="j", prompt="q", accuracy_floor=0.99), "simple_qa", "accuracy_floor 0.99 is above every candidate"),
        (Job(id="j", prompt="q", latency_budget_ms=1), "simple_qa", "latency_budget_ms 1 is below"),
        (Job(id="j", prompt="q", cost_cap_usd=0.0), "code_generation", "cost_cap_usd 0.0 is below"),
    ],
)
def test_a_job_no_model_can_serve_says_which_constraint_failed(config, job, task, message):
    with pytest.raises(NoRoute, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        make_plan(job, task, config, 10)


def test_too_long_for_every_window(config):
    with pytest.raises(NoRoute, match="fit no candidate model's context window"):
        make_plan(Job(id="j", prompt="q"), "long_context", config, 2_000_000)


def test_cost_is_arithmetic_on_the_price_table(config):
    assert attempt_cost(config.models["gpt-4o"], 1_000_000, 100_000) == pytest.approx(2.50 + 1.00)
    assert attempt_cost(config.models["gemini-2.5-flash"], 2000, 500) == pytest.approx((2000 * 0.075 + 500 * 0.30) / 1e6)


def test_answer_checks():
    assert check_answer(Completion("fine", "stop", 1, 1)) is None
    assert check_answer(Completion("cut", "length", 1, 1)).kind == "truncated"
    assert check_answer(Completion("no", "refusal", 1, 1)).kind == "refused"
    assert check_answer(Completion("  ", "stop", 1, 0)).kind == "empty_output"


def test_backoff_has_full_jitter_under_the_cap():
    import random

    rng = random.Random(7)
    values = [backoff_s(retry, 0.5, 8.0, rng) for retry in range(10) for _ in range(50)]
    assert all(0 <= v <= 8.0 for v in values)
    assert max(backoff_s(0, 0.5, 8.0, rng) for _ in range(200)) <= 0.5


def run(runner, job):
    return asyncio.run(runner.run(job))


def test_a_refused_attempt_is_paid_and_escalates(config):
    failing = msgspec.structs.replace(
        config, providers={**config.providers, "gemini": msgspec.structs.replace(config.providers["gemini"], failure_rate=1.0)}
    )
    outcome = run(JobRunner(failing, build_providers(failing).clients), Job(id="esc", prompt="What is 2+2?", tenant="t1"))
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
        return Completion("answer", "stop", 10, 5)

    async def close(self):
        return None


def scripted_runner(config, **kinds):
    providers = {name: ScriptedProvider(name, kinds.get(name, [])) for name in config.providers}
    sleeps = []

    async def sleep(seconds):
        sleeps.append(seconds)

    return JobRunner(config, providers, sleep=sleep), providers, sleeps


def test_transient_errors_retry_the_same_model_after_a_backoff(config):
    runner, providers, sleeps = scripted_runner(config, gemini=["rate_limited", "server"])
    result = run(runner, Job(id="t", prompt="q")).result
    assert result.status == "ok" and result.model == "gemini-2.5-flash"
    assert providers["gemini"].calls == ["gemini-2.5-flash"] * 3
    assert len(sleeps) == 2


def test_the_retry_budget_is_per_job_then_escalates(config):
    runner, providers, sleeps = scripted_runner(config, gemini=["timeout"] * 10)
    result = run(runner, Job(id="t", prompt="q")).result
    assert result.model == "llama-4-70b"
    assert len(providers["gemini"].calls) == config.worker.max_retries_per_job + 1


def test_fatal_errors_skip_the_provider(config):
    runner, providers, _ = scripted_runner(config, anthropic=["auth"])
    result = run(runner, Job(id="t", prompt="implement a stack")).result
    assert result.model == "gpt-4o" and providers["anthropic"].calls == ["claude-3-5-sonnet"]


def test_a_job_whose_every_attempt_fails_gets_a_failed_result_with_the_reason(config):
    runner, _, _ = scripted_runner(config, gemini=["context_too_long"])
    result = run(runner, Job(id="t", prompt="q" * 20_000)).result
    assert result.status == "failed" and result.error.kind == "context_too_long"
    assert "all 1 attempt(s) failed" in result.error.message
    assert result.model is None


def test_echo_rejects_prompts_over_the_context_window(config):
    provider = build_providers(config).clients["openai"]
    request = CompletionRequest("j", "gpt-4o", [ChatMessage("user", "x" * 600_000)], 100)
    with pytest.raises(ProviderError) as info:
        asyncio.run(provider.complete(request))
    assert info.value.kind == "context_too_long"


def test_models_of_a_provider_without_a_key_are_left_out(config):
    unavailable = {"gemini": "no API key: set GEMINI_API_KEY"}
    assert make_plan(Job(id="j", prompt="q"), "simple_qa", config, 10, unavailable).models == ["llama-4-70b", "gpt-4o"]
    with pytest.raises(NoRoute, match="gemini: no API key: set GEMINI_API_KEY"):
        make_plan(Job(id="j", prompt="q", allowed_providers=["gemini"]), "simple_qa", config, 10, unavailable)
