"""The planner: the chain of models with the lowest expected cost per correct answer under a job's constraints."""

import msgspec
import pytest

from worker.messages import ChatMessage, Checks, ImagePart, Job, JsonSchemaFormat, TextPart, Tool
from worker.routing.plan import NoRoute, make_plan


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
    with pytest.raises(NoRoute, match=r"accuracy_floor 0\.999 is above what any plan"):
        make_plan(Job(id="j", prompt="q", accuracy_floor=0.999), "simple_qa", config, 10)
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


def test_models_of_a_provider_without_a_key_are_left_out(config):
    unavailable = {"gemini": "no API key: set GEMINI_API_KEY"}
    assert make_plan(Job(id="j", prompt="q"), "simple_qa", config, 10, unavailable).models == [
        "llama-4-70b",
        "gpt-4o",
        "claude-3-5-sonnet",
    ]
    with pytest.raises(NoRoute, match="gemini: no API key: set GEMINI_API_KEY"):
        make_plan(Job(id="j", prompt="q", allowed_providers=["gemini"]), "simple_qa", config, 10, unavailable)


def test_alternates_are_the_chain_models_that_may_go_first(config):
    plan = make_plan(Job(id="j", prompt="q"), "simple_qa", config, 10)
    assert plan.alternates == ("llama-4-70b", "gpt-4o")
    # Unverifiable: the first answer is the answer, so an alternate must clear the floor alone (gpt-4o only,
    # among single models: the job is pinned to chains by allowing no cheap pair).
    job = Job(id="j", prompt="q", accuracy_floor=0.93, allowed_providers=["openai", "anthropic"])
    plan = make_plan(job, "simple_qa", config, 10)
    assert plan.models == ["gpt-4o", "claude-3-5-sonnet"] and plan.alternates == ("claude-3-5-sonnet",)
    # Verifiable: reordering keeps the chain's P(success); the latency budget still binds:
    # llama first expects 1,800 ms per 100 output tokens, over an 800 ms budget that gemini first meets.
    plan = make_plan(Job(id="j", prompt="q", checks=Checks(expected="a")), "simple_qa", config, 10)
    assert plan.models == ["gemini-2.5-flash", "llama-4-70b"] and plan.alternates == ("llama-4-70b",)
    plan = make_plan(
        Job(id="j", prompt="q", checks=Checks(expected="a"), latency_budget_ms=800), "simple_qa", config, 10
    )
    assert plan.models == ["gemini-2.5-flash", "llama-4-70b"] and plan.alternates == ()


def without(config, capability, *models):
    """The configuration with `capability` taken from `models`."""
    changed = {
        name: msgspec.structs.replace(m, capabilities=[c for c in m.capabilities if c != capability])
        for name, m in config.models.items()
        if name in models
    }
    return msgspec.structs.replace(config, models={**config.models, **changed})


IMAGE_JOB = Job(
    id="j",
    messages=[ChatMessage(role="user", content=[TextPart(text="what is it?"), ImagePart(url="https://x/c.png")])],
)
STRICT = JsonSchemaFormat(
    name="a", schema={"type": "object", "properties": {}, "additionalProperties": False}, strict=True
)


def test_a_job_goes_only_to_models_that_have_what_it_needs(config):
    blind = without(config, "vision", "gemini-2.5-flash", "llama-4-70b")
    assert make_plan(IMAGE_JOB, "simple_qa", config, 10).models[0] == "gemini-2.5-flash"
    assert make_plan(IMAGE_JOB, "simple_qa", blind, 10).models == ["gpt-4o", "claude-3-5-sonnet"]
    assert make_plan(Job(id="j", prompt="q"), "simple_qa", blind, 10).models[0] == "gemini-2.5-flash", "text: any"
    # A strict schema needs native structured output, which claude-3-5-sonnet lacks; a non-strict one does not.
    strict = Job(id="j", prompt="q", response_format=STRICT, accuracy_floor=0.999)
    assert "claude-3-5-sonnet" not in make_plan(strict, "simple_qa", config, 10).models
    loose = msgspec.structs.replace(strict, response_format=msgspec.structs.replace(STRICT, strict=False))
    pinned = msgspec.structs.replace(loose, model="claude-3-5-sonnet", accuracy_floor=None)
    assert make_plan(pinned, "simple_qa", config, 10).models == ["claude-3-5-sonnet"]


def test_no_route_names_the_missing_capability_and_the_models(config):
    blind = without(config, "vision", *config.models)
    with pytest.raises(NoRoute) as info:
        make_plan(IMAGE_JOB, "simple_qa", blind, 10)
    assert str(info.value) == (
        "no model of task simple_qa can serve a job that needs vision: none of gpt-4o, claude-3-5-sonnet, "
        "gemini-2.5-flash, llama-4-70b has it"
    )
    # Each capability on some model, none with both: both are named.
    split = without(
        without(config, "vision", "gpt-4o", "gemini-2.5-flash", "llama-4-70b"), "tools", "claude-3-5-sonnet"
    )
    both = msgspec.structs.replace(IMAGE_JOB, tools=[Tool(name="t")], allowed_providers=["openai", "anthropic"])
    with pytest.raises(NoRoute, match="needs tools and vision: none of gpt-4o, claude-3-5-sonnet has them all"):
        make_plan(both, "simple_qa", split, 10)


def test_a_pinned_model_must_have_what_the_job_needs(config):
    pinned = Job(id="j", prompt="q", model="claude-3-5-sonnet", response_format=STRICT)
    with pytest.raises(NoRoute) as info:
        make_plan(pinned, "simple_qa", config, 10)
    assert str(info.value) == (
        "pinned model 'claude-3-5-sonnet' cannot serve a job that needs json_schema (its capabilities: tools, vision)"
    )
    assert make_plan(msgspec.structs.replace(pinned, model="gpt-4o"), "simple_qa", config, 10).models == ["gpt-4o"]


def test_the_fixed_policy_takes_the_tasks_first_model_that_can_serve_the_job(config):
    fixed = msgspec.structs.replace(config, routing=msgspec.structs.replace(config.routing, policy="fixed"))
    strict = Job(id="j", prompt="q", response_format=STRICT)
    assert make_plan(Job(id="j", prompt="q"), "code_generation", fixed, 10).models == ["claude-3-5-sonnet"]
    assert make_plan(strict, "code_generation", fixed, 10).models == ["gpt-4o"]
    single = msgspec.structs.replace(
        config, routing=msgspec.structs.replace(config.routing, policy="single", single_model="claude-3-5-sonnet")
    )
    with pytest.raises(NoRoute, match="needs json_schema: none of claude-3-5-sonnet has it"):
        make_plan(strict, "simple_qa", single, 10)
