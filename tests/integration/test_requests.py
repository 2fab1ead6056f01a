"""The whole request real applications send, through Kafka, the worker, each provider's HTTP adapter and the
simulator: a structured answer, a tool call, a tool conversation continued, and images, on every wire API, each
sent in the provider's own format and answered ok; a job no model can serve names what it needs; bad input is a
dead letter naming the field."""

import asyncio

import httpx
import jsonschema
import msgspec

from tests.integration.helpers import Setup, collect, make_topics, produce, simulator_providers
from tests.integration.test_sampling import KEYS
from worker.cli.demo import PIXELS, PLACE, WEATHER
from worker.cli.runs import running_worker
from worker.providers import build_providers
from worker.simulator.server import SimulatorServer
from worker.simulator.settings import load_simulator_config

MODELS = ["gpt-4o", "claude-3-5-sonnet", "gemini-2.5-flash", "llama-4-70b"]
# The simulator's name of each model (the body's `model`, or Gemini's path).
API_MODELS = {"claude-3-5-sonnet": "claude-3-5-sonnet-20241022"}
WHERE = '"Last week I flew to Lyon, France." Where did I fly? [[expect: {"city": "Lyon", "country": "France"}]]'
SCHEMA = msgspec.to_builtins(PLACE)
TOOLS = [msgspec.to_builtins(WEATHER)]
CALL = {"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}


def jobs_for(model: str) -> dict[str, dict]:
    """The request jobs pinned to `model`, by job id (claude-3-5-sonnet has no native strict schemas: its
    schema job is not strict, and answered by a forced tool)."""
    schema = SCHEMA | {"strict": model != "claude-3-5-sonnet"}
    image = {"type": "image", "data": PIXELS, "media_type": "image/png"}
    return {
        f"{model}/schema": {"prompt": WHERE, "response_format": schema, "temperature": 0},
        f"{model}/tool": {
            "prompt": 'Do I need an umbrella in Paris? [[tool: get_weather {"city": "Paris"}]]',
            "tools": TOOLS,
            "tool_choice": "required",
        },
        f"{model}/followup": {
            "messages": [
                {"role": "user", "content": "Do I need an umbrella in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "rain", "celsius": 14}'},
            ],
            "tools": TOOLS,
        },
        f"{model}/image": {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "What colour is it?"}, image]}]
        },
        f"{model}/image-url": {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this picture?"},
                        {"type": "image", "url": "https://example.com/cat.png"},
                    ],
                }
            ]
        },
    }


JOBS = {job_id: fields for model in MODELS for job_id, fields in jobs_for(model).items()}
# A strict schema pinned to a model that cannot take one natively.
NO_ROUTE = {"id": "strict-on-claude", "prompt": WHERE, "response_format": SCHEMA, "model": "claude-3-5-sonnet"}
# Bad input, and the path or words its dead letter names.
BAD = {
    "bad-schema": (
        {"response_format": {"type": "json_schema", "name": "x", "schema": {"type": 3}}},
        "$.response_format",
    ),
    "bad-tool": ({"tools": [{"description": "no name"}]}, "$.tools[0]"),
    "bad-parameters": ({"tools": [{"name": "f", "parameters": {"type": "string"}}]}, "type` object"),
    "bad-image": (
        {"messages": [{"role": "user", "content": [{"type": "image", "url": "ftp://example.com/a.png"}]}]},
        "$.messages[0].content[0].url",
    ),
    "bad-data": (
        {"messages": [{"role": "user", "content": [{"type": "image", "data": "%%%", "media_type": "image/png"}]}]},
        "not base64",
    ),
    "bad-temperature": ({"temperature": 2.5}, "$.temperature"),
    "bad-choice": ({"tools": TOOLS, "tool_choice": {"name": "get_time"}}, "which `tools` does not offer"),
}


def simulator():
    """The simulator answering at once, without injected errors or prose for JSON (a pinned job has no other
    model to go to)."""
    config = load_simulator_config()
    models = {
        name: msgspec.structs.replace(behaviour, errors=type(behaviour.errors)(), json_failure=0.0)
        for name, behaviour in config.models.items()
    }
    return SimulatorServer(msgspec.structs.replace(config, models=models, latency_scale=0.0))


def encoded(job_id: str, fields: dict) -> tuple[bytes, bytes]:
    job = {"id": job_id} | fields
    if "prompt" not in job and "messages" not in job:
        job["prompt"] = "x"
    if "/" in job_id:
        job["model"] = job_id.split("/")[0]
    return job_id.encode(), msgspec.json.encode(job)


def test_structured_output_tools_and_images_on_every_wire_api(bootstrap, report):
    async def scenario():
        server = simulator()
        url = await server.start()
        setup = Setup(bootstrap, **simulator_providers(url))
        try:
            await make_topics(setup)
            async with running_worker(setup.config, build_providers(setup.config, env=KEYS)):
                messages = [encoded(job_id, fields) for job_id, fields in JOBS.items()]
                messages.append(encoded(NO_ROUTE["id"], NO_ROUTE))
                messages += [encoded(job_id, fields) for job_id, (fields, _) in BAD.items()]
                await produce(setup, messages)
                outputs = await collect(
                    setup,
                    until=lambda o: len(o.result_ids) >= len(JOBS) + 1 + len(BAD) and len(o.letters) >= len(BAD),
                    timeout_s=90,
                    settle_s=0.5,
                )
            async with httpx.AsyncClient() as client:  # the simulator serves on this event loop
                received = (await client.get(f"{url}/_sim/requests", params={"limit": 200})).json()
            return outputs, received
        finally:
            await server.stop()

    outputs, received = asyncio.run(scenario())
    results = {r.job_id: r for r in outputs.results}
    for job_id in JOBS:
        result = results[job_id]
        assert result.status == "ok", (job_id, result.error)
        assert len(result.attempts) == 1 and result.attempts[0].model == job_id.split("/")[0], job_id
    for model in MODELS:
        schema_result = results[f"{model}/schema"]
        jsonschema.validate(schema_result.parsed, SCHEMA["schema"])
        assert schema_result.finish_reason == "stop" and schema_result.tool_calls is None, model
        tool_result = results[f"{model}/tool"]
        assert tool_result.finish_reason == "tool_calls", model
        assert [(c.name, c.arguments) for c in tool_result.tool_calls or []] == [("get_weather", {"city": "Paris"})]
        followup = results[f"{model}/followup"]
        assert followup.finish_reason == "stop" and followup.output and followup.tool_calls is None, model
    report(
        "request jobs end to end: "
        + " ".join(f"{m}={sum(results[j].status == 'ok' for j in jobs_for(m))}/{len(jobs_for(m))}" for m in MODELS)
    )

    # Each job was sent in its provider's own wire format.
    bodies = {}
    for request in received:
        body = request["body"]
        text = msgspec.json.encode(body).decode()
        for job_id in JOBS:
            model = job_id.split("/")[0]
            if API_MODELS.get(model, model) == request["model"] and _is(job_id, text):
                bodies[job_id] = body
    openai_schema = bodies["gpt-4o/schema"]["response_format"]
    assert openai_schema["type"] == "json_schema" and openai_schema["json_schema"]["strict"] is True
    assert bodies["llama-4-70b/schema"]["response_format"]["type"] == "json_schema"
    assert bodies["claude-3-5-sonnet/schema"]["tool_choice"] == {"type": "tool", "name": "place"}
    assert "responseJsonSchema" in bodies["gemini-2.5-flash/schema"]["generationConfig"]
    assert bodies["gpt-4o/tool"]["tools"][0]["function"]["name"] == "get_weather"
    assert bodies["gpt-4o/tool"]["tool_choice"] == "required"
    assert bodies["claude-3-5-sonnet/tool"]["tools"][0]["input_schema"] == WEATHER.parameters
    assert bodies["claude-3-5-sonnet/tool"]["tool_choice"] == {"type": "any"}
    assert bodies["gemini-2.5-flash/tool"]["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    assert bodies["gemini-2.5-flash/tool"]["toolConfig"]["functionCallingConfig"]["mode"] == "ANY"
    assert bodies["gpt-4o/image"]["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert bodies["claude-3-5-sonnet/image"]["messages"][0]["content"][1]["source"]["type"] == "base64"
    assert bodies["gemini-2.5-flash/image"]["contents"][0]["parts"][1]["inlineData"]["mimeType"] == "image/png"
    assert bodies["claude-3-5-sonnet/followup"]["messages"][2]["content"][0]["type"] == "tool_result"
    assert bodies["gemini-2.5-flash/followup"]["contents"][2]["parts"][0]["functionResponse"]["name"] == "get_weather"

    # No model can serve a strict schema pinned to claude-3-5-sonnet: the result says what was missing.
    refused = results[NO_ROUTE["id"]]
    assert refused.status == "failed" and refused.error is not None and refused.error.kind == "no_route"
    assert "json_schema" in refused.error.message and not refused.attempts

    # Bad input: a dead letter naming the field, and a failed result (the id is readable); nothing billed.
    letters = {key.decode(): letter for letter, key, _ in outputs.letters}
    for job_id, (_, where) in BAD.items():
        assert letters[job_id].error_kind == "invalid_job" and where in letters[job_id].error, (job_id, letters[job_id])
        assert results[job_id].status == "failed"
    assert len(outputs.costs) == sum(len(r.attempts) for r in outputs.results) == len(JOBS)


def _is(job_id: str, body_text: str) -> bool:
    """Whether a request body is the call of `job_id`, told by what only its kind of job sends."""
    kind = job_id.split("/")[1]
    return {
        "schema": "Lyon" in body_text,
        "tool": "umbrella" in body_text and "call_1" not in body_text,
        "followup": "call_1" in body_text,
        "image": "What colour" in body_text,
        "image-url": "example.com/cat.png" in body_text,
    }[kind]
