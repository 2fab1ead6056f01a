"""Jobs with generation settings through Kafka, the worker, each HTTP adapter and the simulator: answered ok on
every provider, with the settings a provider does not have named on the attempt."""

import asyncio

import msgspec

from tests.integration.helpers import Setup, collect, job_bytes, make_topics, produce, simulator_providers
from worker.cli.runs import running_worker
from worker.providers import build_providers
from worker.simulator.server import SimulatorServer
from worker.simulator.settings import load_simulator_config

KEYS = {
    "OPENAI_API_KEY": "sk-sim",
    "ANTHROPIC_API_KEY": "sk-ant-sim",
    "GEMINI_API_KEY": "gm-sim",
    "LLAMA_API_KEY": "llama-sim",
}
SETTINGS = {"temperature": 0.2, "top_p": 0.9, "stop": ["END", "##"], "seed": 42}
PROMPT = "What is the capital of Peru? [[expect: Lima]] [[task: simple_qa]]"
# job id -> (pinned model, settings, the attempt's dropped_params)
JOBS = {
    "s-openai": ("gpt-4o", SETTINGS, []),
    "s-llama": ("llama-4-70b", SETTINGS, []),
    "s-gemini": ("gemini-2.5-flash", SETTINGS, []),
    "s-anthropic": ("claude-3-5-sonnet", SETTINGS, ["top_p", "seed"]),
    "s-anthropic-hot": ("claude-3-5-sonnet", {"temperature": 1.6, "top_p": 0.5, "seed": 1}, ["temperature", "seed"]),
    "s-gemini-hot": ("gemini-2.5-flash", {"temperature": 1.6, "stop": ["x"]}, []),
}


def test_jobs_with_generation_settings_are_answered_on_each_provider(bootstrap):
    async def scenario():
        config = load_simulator_config()
        server = SimulatorServer(msgspec.structs.replace(config, latency_scale=0.0))
        url = await server.start()
        setup = Setup(
            bootstrap,
            **simulator_providers(url),
        )
        try:
            await make_topics(setup)
            async with running_worker(setup.config, build_providers(setup.config, env=KEYS)):
                await produce(
                    setup,
                    [
                        (job_id.encode(), job_bytes(job_id, PROMPT, model=model, **settings))
                        for job_id, (model, settings, _) in JOBS.items()
                    ],
                )
                outputs = await collect(setup, until=lambda o: len(o.result_ids) >= len(JOBS), timeout_s=60)
            return outputs, msgspec.to_builtins(server.simulator.stats)
        finally:
            await server.stop()

    outputs, served = asyncio.run(scenario())
    results = {r.job_id: r for r in outputs.results}
    assert results.keys() == JOBS.keys() and not outputs.letters
    for job_id, (model, _, dropped) in JOBS.items():
        result = results[job_id]
        assert result.status == "ok", (job_id, result.error)
        assert [(a.model, a.outcome, a.dropped_params) for a in result.attempts] == [(model, "ok", dropped)], job_id
    # every call was answered: none refused for a setting the provider does not take
    assert served["statuses"] == {"200": len(JOBS)}
    # dropped_params is left out of the JSON when empty
    assert "dropped_params" not in msgspec.json.encode(results["s-openai"].attempts[0]).decode()
    assert len(outputs.costs) == len(JOBS)
