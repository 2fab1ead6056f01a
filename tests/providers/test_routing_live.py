"""The router against the simulator over HTTP: it learns a drift and routes around a failing provider."""

import asyncio

import msgspec

from worker.config import load_config
from worker.execution.runner import JobRunner
from worker.messages import Checks, Job
from worker.providers import build_providers
from worker.simulator.server import SimulatorServer
from worker.simulator.settings import ErrorMix, load_simulator_config

KEYS = {"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k", "GEMINI_API_KEY": "k", "LLAMA_API_KEY": "k"}


def router_config(url: str, **routing):
    env = {
        "LLM_ROUTER__PROVIDERS__OPENAI__BASE_URL": f"{url}/v1",
        "LLM_ROUTER__PROVIDERS__ANTHROPIC__BASE_URL": url,
        "LLM_ROUTER__PROVIDERS__GEMINI__BASE_URL": f"{url}/v1beta",
        "LLM_ROUTER__PROVIDERS__LLAMA__BASE_URL": f"{url}/v1",
        "LLM_ROUTER__WORKER__RETRY_BASE_S": "0.005",
        "LLM_ROUTER__WORKER__RETRY_CAP_S": "0.02",
    } | {f"LLM_ROUTER__ROUTING__{k.upper()}": str(v) for k, v in routing.items()}
    return load_config(env=env)


async def _with_simulator(body, sim_config=None):
    server = SimulatorServer(msgspec.structs.replace(sim_config or load_simulator_config(), latency_scale=0.0))
    url = await server.start()
    try:
        return await body(server, url)
    finally:
        await server.stop()


def test_a_drop_in_a_cheap_models_accuracy_moves_the_task_type_within_a_few_hundred_jobs(report):
    async def body(server, url):
        config = router_config(url)
        providers = build_providers(config, env=KEYS)
        runner = JobRunner(config, providers.clients, providers.unavailable)
        first_models = []

        async def one(i):
            job = Job(
                id=f"d{i}",
                prompt=f"Question number {i}? [[expect: A{i}]] [[task: simple_qa]]",
                task="simple_qa",
                checks=Checks(expected=f"A{i}"),
            )
            outcome = await runner.run(job)
            return outcome.result.attempts[0].model

        for batch in range(40):
            if batch == 10:  # after 200 jobs, gemini starts getting simple questions wrong
                gemini = server.simulator.config.models["gemini-2.5-flash"]
                server.simulator.config.models["gemini-2.5-flash"] = msgspec.structs.replace(
                    gemini, accuracy=gemini.accuracy | {"simple_qa": 0.2}
                )
            first_models += await asyncio.gather(*(one(batch * 20 + i) for i in range(20)))
        try:
            return first_models, runner.quality.rate("simple_qa", "gemini-2.5-flash")
        finally:
            for client in providers.clients.values():
                await client.close()

    first_models, learned = asyncio.run(_with_simulator(body))
    before, after = first_models[:200], first_models[200:]
    assert before.count("gemini-2.5-flash") == 200, "gemini first while it is good"
    moved_at = next(i for i, m in enumerate(after) if m != "gemini-2.5-flash")
    settled = after[moved_at + 40 :]
    report(
        f"drift: gemini simple_qa accuracy 0.90 -> 0.20 after job 200; "
        f"the plan moved off gemini {moved_at} jobs later; learned rate now {learned:.2f}; "
        f"later jobs first on {sorted(set(settled))}"
    )
    assert moved_at <= 300
    assert settled and settled.count("gemini-2.5-flash") <= len(settled) * 0.05


def test_a_provider_answering_503_to_everything_is_routed_around_once_its_breaker_opens(report):
    sim_config = load_simulator_config()
    llama = sim_config.models["llama-4-70b"]
    sim_config = msgspec.structs.replace(
        sim_config,
        models=sim_config.models | {"llama-4-70b": msgspec.structs.replace(llama, errors=ErrorMix(unavailable=1.0))},
    )

    async def body(server, url):
        config = router_config(url, breaker_cooldown_s=60)
        providers = build_providers(config, env=KEYS)
        runner = JobRunner(config, providers.clients, providers.unavailable)

        def job(i):  # llama is the first choice for code (quality 0.89, cheaper than gpt-4o)
            return Job(id=f"f{i}", prompt=f"Implement a stack, variant {i}.", task="code_generation")

        warmup = [await runner.run(job(i)) for i in range(10)]
        llama_before = server.simulator.stats.models["llama-4-70b"].requests
        outcomes = []
        for batch in range(6):
            outcomes += await asyncio.gather(*(runner.run(job(100 + batch * 50 + i)) for i in range(50)))
        llama_after = server.simulator.stats.models["llama-4-70b"].requests
        for client in providers.clients.values():
            await client.close()
        return warmup, outcomes, llama_before, llama_after

    warmup, outcomes, llama_before, llama_after = asyncio.run(_with_simulator(body, sim_config))
    report(
        f"fault: llama answers 503 to everything; requests to it while its breaker closed: {llama_before}, "
        f"in the 300 jobs after it opened: {llama_after - llama_before}; "
        f"jobs ok: {sum(o.result.status == 'ok' for o in warmup + outcomes)}/{len(warmup + outcomes)}"
    )
    assert all(o.result.status == "ok" for o in warmup + outcomes), "jobs complete through the other providers"
    assert llama_before <= 10, "the breaker opened after a few consecutive failures"
    assert llama_after - llama_before <= 1
    assert {o.result.model for o in outcomes} <= {"gpt-4o", "claude-3-5-sonnet", "gemini-2.5-flash"}


def test_format_failures_and_truncations_leave_the_learned_accuracy_and_the_cheapest_route(report):
    """Issue 20's acceptance: 50 JSON jobs that fail their format check on one model, and 150 jobs cut at
    their own cap of 16 tokens, leave that model's learned accuracy for the task type unchanged, and
    plain jobs keep their cheapest route."""
    cheap = "gemini-2.5-flash"

    async def body(server, url):
        # One model answers a plain job (the reference floor): agreement would teach accuracy, which this test
        # shows format failures and truncations do not.
        config = router_config(url, default_accuracy_floor=0.85)
        providers = build_providers(config, env=KEYS)
        runner = JobRunner(config, providers.clients, providers.unavailable)
        server.simulator.config.models[cheap] = msgspec.structs.replace(
            server.simulator.config.models[cheap], json_failure=1.0
        )
        schema = {"type": "object", "required": ["answer"]}

        async def first_model_of_a_plain_job(name):
            outcome = await runner.run(Job(id=name, prompt="What is the capital of France?", task="simple_qa"))
            return outcome.result.attempts[0].model

        before = {m: runner.quality.rate("simple_qa", m) for m in config.models}
        plain_before = await first_model_of_a_plain_job("plain-before")
        formats = await asyncio.gather(
            *(
                runner.run(
                    Job(
                        id=f"json{i}",
                        prompt=f"Item {i} as a JSON object.",
                        task="simple_qa",
                        model=cheap,
                        response_format="json",
                        checks=Checks(json_schema=schema),
                    )
                )
                for i in range(50)
            )
        )
        escalated = await asyncio.gather(
            *(
                runner.run(Job(id=f"esc{i}", prompt=f"Item {i} as JSON.", task="simple_qa", response_format="json"))
                for i in range(20)
            )
        )
        truncated = await asyncio.gather(
            *(
                runner.run(Job(id=f"cut{i}", prompt=f"Tell story {i}.", task="simple_qa", max_output_tokens=16))
                for i in range(150)
            )
        )
        plain_after = await first_model_of_a_plain_job("plain-after")
        after = {m: runner.quality.rate("simple_qa", m) for m in config.models}
        try:
            return before, after, plain_before, plain_after, formats, escalated, truncated, runner.quality
        finally:
            for client in providers.clients.values():
                await client.close()

    before, after, plain_before, plain_after, formats, escalated, truncated, quality = asyncio.run(
        _with_simulator(body)
    )
    config = router_config("http://unused")
    cheapest = min(
        config.models, key=lambda m: config.models[m].input_usd_per_mtok + config.models[m].output_usd_per_mtok
    )
    format_failures = sum(
        a.model == cheap and a.error.kind == "format_failed" for o in formats for a in o.result.attempts
    )
    cut_attempts = [a for o in truncated for a in o.result.attempts]
    first_of_escalated = [o.result.attempts[0].model for o in escalated]
    report(
        f"format/truncation: {format_failures} format failures on {cheap}, {len(cut_attempts)} attempts of 150 jobs "
        f"cut at 16 tokens; {cheap} simple_qa accuracy {before[cheap]:.4f} -> {after[cheap]:.4f}, JSON format "
        f"reliability {quality.json_format.rate(cheap):.4f}; plain jobs first on {plain_before} -> {plain_after}; "
        f"later JSON jobs first on {sorted(set(first_of_escalated))}"
    )
    assert format_failures == 50
    assert all(o.result.error.kind == "format_failed" for o in formats)
    assert all(o.result.status == "ok" and msgspec.json.decode(o.result.output) for o in escalated)
    assert all(o.result.error.kind == "truncated" for o in truncated)
    assert sum(a.model == cheap for a in cut_attempts) == 150
    assert {(a.error.kind, a.output_tokens) for a in cut_attempts} == {("truncated", 16)}, "the job's cap is hard"
    assert after == before, "no model's accuracy for the task type moved"
    assert quality.snapshot() == {}, "nothing was learned about accuracy"
    assert quality.json_format.rate(cheap) < 0.25
    assert plain_before == plain_after == cheapest == cheap
