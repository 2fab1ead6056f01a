"""Classifier, plan and the attempt loop on the echo provider (no Kafka)."""

import asyncio

import msgspec
import pytest

from worker.errors import ProviderError
from worker.execution.runner import JobRunner, backoff_s, check_answer
from worker.messages import ChatMessage, Checks, Job
from worker.providers import build_providers
from worker.providers.base import Completion, CompletionRequest
from worker.routing.classify import Classifier
from worker.routing.plan import NoRoute, make_plan
from worker.routing.pricing import attempt_cost, content_tokens, messages_prompt_tokens, prompt_tokens, text_tokens


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
    assert (
        Classifier(config.classifier).classify(Job(id="j", prompt="summarize", task="creative_writing"))
        == "creative_writing"
    )


def test_unverifiable_jobs_get_the_cheapest_model_over_the_floor_then_fallbacks(config):
    # No checks: a wrong answer cannot be caught, so the first model's prior must clear the floor (0.85).
    plan = make_plan(Job(id="j", prompt="q"), "simple_qa", config, 10)
    assert plan.models == ["gemini-2.5-flash", "llama-4-70b", "gpt-4o"] and plan.success_probability == pytest.approx(
        0.90
    )
    assert (
        make_plan(Job(id="j", prompt="q"), "code_generation", config, 10).models[0] == "llama-4-70b"
    )  # gemini 0.84 < 0.85
    plan = make_plan(Job(id="j", prompt="q", accuracy_floor=0.93), "simple_qa", config, 10)
    assert plan.models == ["gpt-4o", "claude-3-5-sonnet"], "fallbacks clear the floor too"


def test_verifiable_jobs_get_the_chain_with_the_lowest_cost_per_correct_answer(config):
    job = Job(id="j", prompt="q", checks=Checks(expected="a"))
    plan = make_plan(job, "code_generation", config, 1000)
    assert plan.models == ["gemini-2.5-flash", "llama-4-70b"]
    out = 2048 // 2
    c_g = (1000 * 0.075 + out * 0.30) / 1e6
    c_l = (1000 * 0.20 + out * 0.60) / 1e6
    assert plan.expected_cost_usd == pytest.approx(c_g + (1 - 0.84) * c_l)
    assert plan.success_probability == pytest.approx(1 - (1 - 0.84) * (1 - 0.89))


def test_expected_cost_counts_paid_failures(config):
    # E[cost] = c1 + (1-p1)(c2 + (1-p2) c3) for the chain the planner chose, checked by hand.
    rates = {"gemini-2.5-flash": 0.5, "llama-4-70b": 0.5, "gpt-4o": 0.95, "claude-3-5-sonnet": 0.96}
    job = Job(id="j", prompt="q", checks=Checks(expected="a"), accuracy_floor=0.99)
    plan = make_plan(job, "simple_qa", config, 100, rate=lambda t, m: rates[m])
    cost = {
        m: (100 * config.models[m].input_usd_per_mtok + 128 * config.models[m].output_usd_per_mtok) / 1e6 for m in rates
    }
    expected, reach = 0.0, 1.0
    for m in plan.models:
        expected += reach * cost[m]
        reach *= 1 - rates[m]
    assert plan.expected_cost_usd == pytest.approx(expected) and 1 - reach >= 0.99


def test_learned_rates_move_the_plan(config):
    job = Job(id="j", prompt="q", checks=Checks(expected="a"))
    assert make_plan(job, "simple_qa", config, 10).models[0] == "gemini-2.5-flash"
    worse = {"gemini-2.5-flash": 0.2}
    plan = make_plan(
        job, "simple_qa", config, 10, rate=lambda t, m: worse.get(m, config.models[m].quality["instruction_following"])
    )
    assert plan.models[0] == "llama-4-70b"


def test_policies(config):
    fixed = msgspec.structs.replace(config, routing=msgspec.structs.replace(config.routing, policy="fixed"))
    assert make_plan(Job(id="j", prompt="q"), "code_generation", fixed, 10).models == ["claude-3-5-sonnet"]
    single = msgspec.structs.replace(config, routing=msgspec.structs.replace(config.routing, policy="single"))
    assert make_plan(Job(id="j", prompt="q", checks=Checks(expected="a")), "summarization", single, 10).models == [
        "gpt-4o"
    ]


def test_open_breakers_are_routed_around_unless_nothing_is_left(config):
    job = Job(id="j", prompt="q")
    assert "gemini-2.5-flash" not in make_plan(job, "simple_qa", config, 10, blocked={"gemini"}).models
    assert make_plan(
        Job(id="j", prompt="q", allowed_providers=["gemini"]), "simple_qa", config, 10, blocked={"gemini"}
    ).models == ["gemini-2.5-flash"]


def test_constraints(config):
    assert make_plan(
        Job(id="j", prompt="q", allowed_providers=["llama", "openai"]), "simple_qa", config, 10
    ).models == ["llama-4-70b", "gpt-4o"]
    assert make_plan(
        Job(id="j", prompt="q", model="claude-3-5-sonnet", max_output_tokens=9), "simple_qa", config, 10
    ).models == ["claude-3-5-sonnet"]
    assert make_plan(Job(id="j", prompt="q"), "simple_qa", config, 200_000).models == ["gemini-2.5-flash"]
    # a 300 ms budget for 128 expected output tokens: only gemini (400 ms per 100 tokens -> 512 ms) is too slow too
    plan = make_plan(Job(id="j", prompt="q", latency_budget_ms=1200), "simple_qa", config, 10)
    assert plan.models[0] == "gemini-2.5-flash"
    with pytest.raises(NoRoute, match="accuracy_floor 0.99 is above what any chain"):
        make_plan(Job(id="j", prompt="q", accuracy_floor=0.99), "simple_qa", config, 10)
    assert (
        make_plan(
            Job(id="j", prompt="q", accuracy_floor=0.99, checks=Checks(regex="a")), "simple_qa", config, 10
        ).success_probability
        >= 0.99
    )


@pytest.mark.parametrize(
    "job, task, message",
    [
        (
            Job(id="j", prompt="q", allowed_providers=["on-prem"]),
            "simple_qa",
            "allowed_providers ['on-prem'] excludes every candidate",
        ),
        (Job(id="j", prompt="q", model="gpt-9"), "simple_qa", "pinned model 'gpt-9' is not configured"),
        (Job(id="j", prompt="q", task="astrology"), "astrology", "unknown task type 'astrology'"),
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
    assert attempt_cost(config.models["gemini-2.5-flash"], 2000, 500) == pytest.approx(
        (2000 * 0.075 + 500 * 0.30) / 1e6
    )


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


def test_quota_and_auth_take_the_provider_out_of_rotation(config):
    runner, providers, _ = scripted_runner(config, llama=["auth"])
    result = run(runner, Job(id="t", prompt="q", allowed_providers=["llama", "openai"])).result
    assert result.model == "gpt-4o" and providers["llama"].calls == ["llama-4-70b"]
    second = run(runner, Job(id="u", prompt="q", allowed_providers=["llama", "openai"])).result
    assert second.model == "gpt-4o" and len(second.attempts) == 1 and providers["llama"].calls == ["llama-4-70b"]


@pytest.mark.parametrize(
    "kind, decision",
    [
        ("rate_limited", "retry"),
        ("overloaded", "retry"),
        ("server", "retry"),
        ("timeout", "retry"),
        ("verification_failed", "escalate"),
        ("truncated", "escalate"),
        ("refused", "escalate"),
        ("empty_output", "escalate"),
        ("context_too_long", "escalate"),
        ("quota", "fail"),
        ("auth", "fail"),
        ("bad_request", "fail"),
    ],
)
def test_retry_or_escalate_for_every_error_kind(kind, decision):
    from worker.errors import disposition

    assert disposition(kind).value == decision


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


def test_verified_outcomes_teach_the_rates(config):
    runner = JobRunner(config, build_providers(config).clients)
    before = runner.quality.rate("simple_qa", "gemini-2.5-flash")
    outcome = run(runner, Job(id="t", prompt="What is 2+2?", checks=Checks(expected="4")))
    # the echo answer is never "4": every model of the chain fails verification and learns it
    assert outcome.result.status == "failed" and outcome.result.error.kind == "verification_failed"
    assert runner.quality.rate("simple_qa", "gemini-2.5-flash") < before
    assert {(c.model, c.error_kind) for c in outcome.cost_events} >= {("gemini-2.5-flash", "verification_failed")}


def test_circuit_breaker_states():
    from worker.execution.breakers import Breaker, BreakerState

    breaker = Breaker(threshold=3, cooldown_s=10)
    for t in (0, 1):
        breaker.failed(t)
        assert breaker.state(t) is BreakerState.CLOSED
    breaker.failed(2)
    assert breaker.state(2) is BreakerState.OPEN and not breaker.allows(5)
    assert breaker.state(12) is BreakerState.HALF_OPEN and breaker.allows(12)
    breaker.start_call(12)
    assert not breaker.allows(12), "one probe at a time"
    breaker.failed(13)
    assert breaker.state(13) is BreakerState.OPEN, "a failed probe opens it again"
    breaker.start_call(24)
    breaker.succeeded()
    assert breaker.state(24) is BreakerState.CLOSED and breaker.allows(24)


def test_breakers_block_a_provider_while_its_breaker_is_open_or_probing_and_not_once_it_closes():
    from worker.execution.breakers import Breakers

    breakers = Breakers(threshold=2, cooldown_s=10)
    gemini, llama = breakers.of("gemini"), breakers.of("llama")
    assert breakers.blocked(0) == frozenset()
    gemini.failed(0)
    llama.failed(0)
    assert breakers.blocked(0) == frozenset(), "below the threshold"
    gemini.failed(1)
    assert breakers.blocked(1) == {"gemini"}
    assert breakers.blocked(11) == frozenset(), "half-open: the probe may go"
    gemini.start_call(11)
    assert breakers.blocked(11) == {"gemini"}, "while the probe is out"
    gemini.succeeded()
    llama.failed(12)
    assert breakers.blocked(12) == {"llama"}
    llama.succeeded()
    assert breakers.blocked(12) == frozenset()


def test_a_failing_provider_opens_its_breaker_and_is_routed_around(config):
    clock = [0.0]
    runner, providers, _ = scripted_runner(config, gemini=["server"] * 100)
    runner._clock = lambda: clock[0]
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


def test_echo_rejects_prompts_over_the_context_window(config):
    provider = build_providers(config).clients["openai"]
    request = CompletionRequest("j", "gpt-4o", [ChatMessage("user", "x" * 600_000)], 100)
    with pytest.raises(ProviderError) as info:
        asyncio.run(provider.complete(request))
    assert info.value.kind == "context_too_long"


@pytest.mark.parametrize("contents", [["What is 2 + 2?"], ["", "abc"], ["be brief", "x" * 4001, "why?"]])
def test_the_prompt_estimate_of_the_runner_and_the_echo_is_the_pricing_rule(config, contents):
    messages = [ChatMessage("user", c) for c in contents]
    assert content_tokens(messages) == text_tokens(contents) == sum((len(c) + 3) // 4 for c in contents)
    assert messages_prompt_tokens(messages) == prompt_tokens(contents)
    provider = build_providers(config).clients["openai"]
    completion = asyncio.run(provider.complete(CompletionRequest("j", "gpt-4o", messages, 100)))
    assert completion.input_tokens == prompt_tokens(contents) == text_tokens(contents) + 4 * len(contents)
    assert completion.text == f"[gpt-4o] {contents[-1]}" and completion.output_tokens == (len(completion.text) + 3) // 4
    assert completion.finish_reason == "stop" and completion.request_id == "echo-j-gpt-4o"


def test_models_of_a_provider_without_a_key_are_left_out(config):
    unavailable = {"gemini": "no API key: set GEMINI_API_KEY"}
    assert make_plan(Job(id="j", prompt="q"), "simple_qa", config, 10, unavailable).models == [
        "llama-4-70b",
        "gpt-4o",
        "claude-3-5-sonnet",
    ]
    with pytest.raises(NoRoute, match="gemini: no API key: set GEMINI_API_KEY"):
        make_plan(Job(id="j", prompt="q", allowed_providers=["gemini"]), "simple_qa", config, 10, unavailable)


def test_rules_can_be_patterns(config):
    from worker.config import ClassifierConfig, ClassifierRule

    classifier = Classifier(
        ClassifierConfig(
            default_task="simple_qa", rules=[ClassifierRule(task="code_generation", patterns=[r"\bdef \w+\(", r"```"])]
        )
    )
    assert classifier.classify(Job(id="j", prompt="why does def f(x): fail?")) == "code_generation"
    assert classifier.classify(Job(id="j", prompt="what is a closure")) == "simple_qa"


def test_alternates_are_the_chain_models_that_may_go_first(config):
    plan = make_plan(Job(id="j", prompt="q"), "simple_qa", config, 10)
    assert plan.alternates == ("llama-4-70b", "gpt-4o")
    # Unverifiable: the first answer is the answer, so an alternate must clear the floor alone.
    plan = make_plan(Job(id="j", prompt="q", accuracy_floor=0.93), "simple_qa", config, 10)
    assert plan.models == ["gpt-4o", "claude-3-5-sonnet"] and plan.alternates == ("claude-3-5-sonnet",)
    # Verifiable: reordering keeps the chain's P(success); the latency budget still binds:
    # llama first expects 1,800 ms per 100 output tokens, over an 800 ms budget that gemini first meets.
    plan = make_plan(Job(id="j", prompt="q", checks=Checks(expected="a")), "simple_qa", config, 10)
    assert plan.models == ["gemini-2.5-flash", "llama-4-70b"] and plan.alternates == ("llama-4-70b",)
    plan = make_plan(
        Job(id="j", prompt="q", checks=Checks(expected="a"), latency_budget_ms=800), "simple_qa", config, 10
    )
    assert plan.models == ["gemini-2.5-flash", "llama-4-70b"] and plan.alternates == ()


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
