"""Jobs through Kafka, the worker, the HTTP adapters and the simulator: costs add up to what it served."""

import asyncio

import msgspec
import pytest

from tests.integration.helpers import Setup, collect, job_bytes, make_topics, produce, simulator_providers
from worker.cli.runs import running_worker
from worker.providers import build_providers
from worker.simulator.server import SimulatorServer
from worker.simulator.settings import ErrorMix, load_simulator_config

KEYS = {
    "OPENAI_API_KEY": "sk-sim",
    "ANTHROPIC_API_KEY": "sk-ant-sim",
    "GEMINI_API_KEY": "gm-sim",
    "LLAMA_API_KEY": "llama-sim",
}


def simulator_config():
    config = load_simulator_config()
    models = dict(config.models)
    # Some weather: 429s with a short retry hint and 5xx on the cheap models, refusals that escalate.
    models["gemini-2.5-flash"] = msgspec.structs.replace(
        models["gemini-2.5-flash"], errors=ErrorMix(rate_limited=0.1, server=0.05, refused=0.1), retry_after_s=0.05
    )
    models["llama-4-70b"] = msgspec.structs.replace(
        models["llama-4-70b"], errors=ErrorMix(unavailable=0.1, refused=0.1)
    )
    models["claude-3-5-sonnet-20241022"] = msgspec.structs.replace(
        models["claude-3-5-sonnet-20241022"], errors=ErrorMix(overloaded=0.1)
    )
    return msgspec.structs.replace(config, models=models, latency_scale=0.05)


def test_cost_events_add_up_to_the_tokens_the_simulator_served(bootstrap, report):
    prompts = [
        "What is the capital of Peru? [[expect: Lima]] [[task: simple_qa]]",
        "Implement a trie in Go.",
        "Summarize the release notes of version 2.",
        "Compare B-trees and LSM trees.",
        "Write a limerick about queues.",
    ]
    jobs = [(f"h{i}", prompts[i % len(prompts)]) for i in range(200)]

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
                await produce(setup, [(i.encode(), job_bytes(i, p, tenant="acme")) for i, p in jobs])
                outputs = await collect(
                    setup, until=lambda o: len(o.result_ids) >= len(jobs), timeout_s=120, settle_s=1
                )
            return setup, outputs, msgspec.to_builtins(server.simulator.stats)
        finally:
            await server.stop()

    setup, outputs, served = asyncio.run(scenario())
    assert outputs.result_ids == {i for i, _ in jobs} and outputs.duplicates() == 0
    models = setup.config.models
    by_api_name = {(m.api_model or name): name for name, m in models.items()}
    # Served tokens at the router's prices, each part of the input at its own (cached, cache-write) rate.
    expected = sum(
        (
            (stats["input_tokens"] - stats["cached_input_tokens"] - stats["cache_write_input_tokens"])
            * models[by_api_name[api]].input_usd_per_mtok
            + stats["cached_input_tokens"] * models[by_api_name[api]].cached_input_usd_per_mtok
            + stats["cache_write_input_tokens"] * models[by_api_name[api]].cache_write_usd_per_mtok
            + stats["output_tokens"] * models[by_api_name[api]].output_usd_per_mtok
        )
        / 1e6
        for api, stats in served["models"].items()
    )
    costs = sum(e.cost_usd for e in outputs.costs)
    assert costs == pytest.approx(expected, rel=1e-9)
    assert costs == pytest.approx(served["cost_usd"], rel=1e-9), "the simulator's bill, at its own prices"
    assert sum(e.cached_input_tokens for e in outputs.costs) == served["cached_input_tokens"]
    assert sum(e.input_tokens for e in outputs.costs) == served["input_tokens"]
    assert sum(e.output_tokens for e in outputs.costs) == served["output_tokens"]
    assert len(outputs.costs) == served["requests"], "one cost event per provider attempt"
    attempts = [a for r in outputs.results for a in r.attempts]
    kinds = {a.error.kind for a in attempts if a.error}
    assert {"rate_limited", "refused"} <= kinds, kinds
    ok = [r for r in outputs.results if r.status == "ok"]
    report(
        f"HTTP end to end: jobs={len(jobs)} ok={len(ok)} attempts={len(attempts)} "
        f"simulator_requests={served['requests']} 429s={served['rate_limited_sent']} "
        f"cost_events_usd={costs:.6f} served_tokens_x_prices_usd={expected:.6f} error_kinds={sorted(kinds)}"
    )
