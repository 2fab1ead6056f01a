"""Costs that match the bill with prompt caching in play: jobs with repeated long system prompts through
Kafka, the worker, each provider's HTTP adapter and the simulator, whose bill the cost events add up to."""

import asyncio

import msgspec
import pytest

from tests.integration.helpers import Setup, collect, make_topics, produce, simulator_providers
from tests.integration.test_http_providers import KEYS
from worker.cli.runs import running_worker
from worker.config import load_config
from worker.messages import ChatMessage, Job
from worker.providers import build_providers
from worker.simulator.caching import key_label
from worker.simulator.server import SimulatorServer
from worker.simulator.settings import ErrorMix, load_simulator_config

# Two long system prompts (each over 1,024 tokens, so cached by every provider) shared by many jobs.
POLICIES = [
    "You answer customers of the billing team from this refund policy. " * 70,
    "You review pull requests against this style guide; quote the rule you apply. " * 60,
]
QUESTIONS = ["Can I get a refund after 40 days?", "Is a trailing comma allowed?", "Who approves exceptions?"]
# The simulator's name for each router model, and the provider key it bills.
MODELS = {
    "gpt-4o": ("gpt-4o", "OPENAI_API_KEY"),
    "claude-3-5-sonnet": ("claude-3-5-sonnet-20241022", "ANTHROPIC_API_KEY"),
    "gemini-2.5-flash": ("gemini-2.5-flash", "GEMINI_API_KEY"),
    "llama-4-70b": ("llama-4-70b", "LLAMA_API_KEY"),
}
JOBS = 400


def simulator_config():
    config = load_simulator_config()
    # Some failed calls too (billed nothing), retried on the same model.
    models = {
        name: msgspec.structs.replace(behaviour, errors=ErrorMix(server=0.05), retry_after_s=0.05)
        for name, behaviour in config.models.items()
    }
    return msgspec.structs.replace(config, models=models, latency_scale=0.02)


def jobs() -> list[Job]:
    """Jobs pinned to each model in turn (every provider's caching in play), a few left to the planner."""
    pinned = list(MODELS)
    return [
        Job(
            id=f"c{i}",
            messages=[
                ChatMessage(role="system", content=POLICIES[i // len(MODELS) % len(POLICIES)]),
                ChatMessage(role="user", content=f"{QUESTIONS[i % len(QUESTIONS)]} (case {i})"),
            ],
            model=pinned[i % len(pinned)] if i % 10 else None,
            max_output_tokens=200,
        )
        for i in range(JOBS)
    ]


def test_cost_events_add_up_to_the_simulators_bill_with_cached_tokens(bootstrap, report):
    work = jobs()

    async def scenario():
        server = SimulatorServer(simulator_config())
        url = await server.start()
        setup = Setup(
            bootstrap,
            LLM_ROUTER__WORKER__RETRY_BASE_S=0.01,
            LLM_ROUTER__WORKER__RETRY_CAP_S=0.05,
            **simulator_providers(url),
        )
        try:
            await make_topics(setup)
            async with running_worker(setup.config, build_providers(setup.config, env=KEYS)):
                await produce(setup, [(j.id.encode(), msgspec.json.encode(j)) for j in work])
                outputs = await collect(
                    setup, until=lambda o: len(o.result_ids) >= len(work), timeout_s=180, settle_s=1
                )
            return outputs, msgspec.to_builtins(server.simulator.stats)
        finally:
            await server.stop()

    outputs, served = asyncio.run(scenario())
    assert outputs.result_ids == {j.id for j in work} and outputs.duplicates() == 0
    assert len(outputs.costs) == served["requests"], "one cost event per provider attempt"
    bill = served["bills"]
    # Each provider's cached tokens, as its cost events and the simulator's bill count them.
    for model, (api_model, key_env) in MODELS.items():
        events = [e for e in outputs.costs if e.model == model]
        billed = bill[key_label(KEYS[key_env])][api_model]
        assert sum(e.input_tokens for e in events) == billed["input_tokens"], model
        assert sum(e.cached_input_tokens for e in events) == billed["cached_input_tokens"] > 0, model
        assert sum(e.cache_write_input_tokens for e in events) == billed["cache_write_input_tokens"], model
        assert sum(e.output_tokens for e in events) == billed["output_tokens"], model
        assert sum(e.cost_usd for e in events) == pytest.approx(billed["cost_usd"], rel=1e-9), model
    writes = sum(e.cache_write_input_tokens for e in outputs.costs)
    assert writes == served["cache_write_input_tokens"] > 0, "Anthropic's cache writes"
    costs = sum(e.cost_usd for e in outputs.costs)
    billed_usd = sum(b["cost_usd"] for bills in bill.values() for b in bills.values())
    assert billed_usd == pytest.approx(served["cost_usd"], rel=1e-12)
    gap_per_1000_jobs = abs(costs - billed_usd) / len(work) * 1000
    assert gap_per_1000_jobs <= 0.000001
    # What the same tokens would have cost without the cache prices: the bill the cost events used to miss.
    models = load_config(env={}).models
    uncached = sum(
        (e.input_tokens * models[e.model].input_usd_per_mtok + e.output_tokens * models[e.model].output_usd_per_mtok)
        / 1e6
        for e in outputs.costs
    )
    cached = sum(e.cached_input_tokens for e in outputs.costs)
    results_cached = sum(r.usage.cached_input_tokens for r in outputs.results)
    assert results_cached == cached, "each result's usage sums its attempts' cached tokens"
    report(
        f"cache costs end to end: jobs={len(work)} attempts={len(outputs.costs)} "
        f"input_tokens={served['input_tokens']} cached_input_tokens={cached} cache_write_input_tokens={writes} "
        f"cost_events_usd={costs:.6f} simulator_bill_usd={billed_usd:.6f} "
        f"gap_per_1000_jobs_usd={gap_per_1000_jobs:.9f} at_full_input_price_usd={uncached:.6f}"
    )
