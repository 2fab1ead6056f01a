"""The adapters' batch API clients against the simulator's batch APIs: a batch runs until its latency, then
each line is the answer the same synchronous call gets (its body the synchronous body), expired, errored and
cancelled lines have their kinds, a batch the API would refuse is refused before it is sent, and a failed batch
call is a ProviderError of the usual kind. Then the echo provider's in-process batches, and the configuration."""

import asyncio
import time

import httpx
import msgspec
import pytest

from worker.config import ConfigError, ProviderConfig, load_config, parse_config
from worker.errors import ProviderError
from worker.http import make_transport
from worker.messages import ChatMessage, JsonSchemaFormat
from worker.providers import batch_api, build_providers
from worker.providers.anthropic import AnthropicProvider
from worker.providers.base import BatchLine, BatchRequest, CompletionRequest
from worker.providers.gemini import GeminiProvider
from worker.providers.openai import OpenAIProvider

KEYS = {"OPENAI_API_KEY": "sk-sim", "ANTHROPIC_API_KEY": "sk-ant-sim", "GEMINI_API_KEY": "gm-sim"}
# router model -> (provider, the simulator's name for it, the adapter's class)
MODELS = {
    "gpt-4o": ("openai", "gpt-4o", OpenAIProvider),
    "claude-3-5-sonnet": ("anthropic", "claude-3-5-sonnet-20241022", AnthropicProvider),
    "gemini-2.5-flash": ("gemini", "gemini-2.5-flash", GeminiProvider),
}
CITY = JsonSchemaFormat(
    name="city",
    schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def sim_config(sim):
    return load_config(
        env={
            "LLM_ROUTER__PROVIDERS__OPENAI__BASE_URL": f"{sim.url}/v1",
            "LLM_ROUTER__PROVIDERS__ANTHROPIC__BASE_URL": sim.url,
            "LLM_ROUTER__PROVIDERS__GEMINI__BASE_URL": f"{sim.url}/v1beta",
        }
    )


def requests_to(model):
    """A plain question, a JSON answer (Claude 3.5 Sonnet's is prefilled) and a schema's (its answer tool)."""
    asks = [
        ("plain", "Capital of France? [[expect: Paris]]", {}),
        ("json", "Capital of France, as JSON? [[expect: Paris]]", {"json_output": True}),
        ("schema", "Capital of France? [[expect: Paris]]", {"json_output": True, "schema": CITY}),
    ]
    return [
        BatchRequest(
            custom_id=f"job-{name}",
            request=CompletionRequest(
                job_id=f"job-{name}",
                model=model,
                messages=[ChatMessage(role="user", content=prompt)],
                max_output_tokens=200,
                **fields,
            ),
        )
        for name, prompt, fields in asks
    ]


def client_of(sim, model):
    """The built client of the model's provider, and its batch API."""
    config = sim_config(sim)
    provider = MODELS[model][0]
    client = build_providers(config, env=KEYS).clients[provider]
    return client, batch_api(client, config.providers[provider])


def received(sim, via):
    """The bodies the simulator received, as calls ("sync") or as batch lines ("batch")."""
    listed = httpx.get(f"{sim.url}/_sim/requests", params={"limit": 1000}).json()
    return sorted(msgspec.json.encode(r["body"]) for r in listed if r["via"] == via)


async def ended(api, batch_id):
    """Poll the batch's state until it has ended."""
    deadline = time.monotonic() + 10
    while (state := await api.batch_state(batch_id)).status != "ended":
        assert time.monotonic() < deadline, f"still {state}"
        await asyncio.sleep(0.05)
    return state


def by_id(lines: list[BatchLine]) -> dict[str, BatchLine]:
    assert len({line.custom_id for line in lines}) == len(lines)
    return {line.custom_id: line for line in lines}


@pytest.mark.parametrize("model", list(MODELS))
def test_a_batch_runs_then_each_line_is_the_answer_the_same_synchronous_call_gets(timed_sim, model):
    sim_model = MODELS[model][1]
    timed_sim.patch(sim_model, latency_ms=0, default_accuracy=1.0, batch_latency_s=3600)
    client, api = client_of(timed_sim, model)
    assert api is client
    requests = requests_to(model)

    async def scenario():
        try:
            synchronous = {r.custom_id: await client.complete(r.request) for r in requests}
            batch_id = await api.submit_batch(model, requests)
            running = await api.batch_state(batch_id)
            with pytest.raises(ProviderError) as early:
                await api.batch_results(batch_id)
            timed_sim.patch(sim_model, batch_latency_s=0)
            return (
                synchronous,
                batch_id,
                running,
                early.value,
                await ended(api, batch_id),
                await api.batch_results(batch_id),
            )
        finally:
            await client.close()

    synchronous, batch_id, running, early, state, lines = asyncio.run(scenario())
    assert batch_id.startswith("batches/") == (model == "gemini-2.5-flash"), "Gemini's id is the name it gives"
    assert running.status == "running" and running.provider_status
    assert early.kind == "bad_request" and "not ended" in early.message
    assert state.provider_status in ("completed", "ended", "SUCCEEDED")
    assert received(timed_sim, "batch") == received(timed_sim, "sync"), "each line's body is the synchronous body"
    lines = by_id(lines)
    assert set(lines) == set(synchronous)
    for custom_id, answer in synchronous.items():
        line = lines[custom_id].completion
        assert line is not None, lines[custom_id]
        assert line.input_tokens > 0 and line.output_tokens > 0 and line.request_id and line.response_model
        assert (line.finish_reason, line.tool_calls, line.input_tokens) == (
            answer.finish_reason,
            answer.tool_calls,
            answer.input_tokens,
        )
        if custom_id != "job-schema":  # the simulator makes a schema's values up afresh each time
            assert (line.text, line.output_tokens) == (answer.text, answer.output_tokens)
    assert "Paris" in lines["job-plain"].completion.text
    assert msgspec.json.decode(lines["job-json"].completion.text), "Claude's prefilled answer is whole"
    assert set(msgspec.json.decode(lines["job-schema"].completion.text)) == {"city"}, "Claude's answer tool's input"
    assert timed_sim.stats()["models"][sim_model]["batch_requests"] == len(requests)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize(
    ("setting", "kind"), [("batch_expiry_share", "batch_expired"), ("batch_error_share", "server")]
)
def test_expired_and_errored_lines_have_their_kinds(sim, model, setting, kind):
    sim.patch(MODELS[model][1], batch_latency_s=0, **{setting: 1.0})
    client, api = client_of(sim, model)
    requests = requests_to(model)

    async def scenario():
        try:
            batch_id = await api.submit_batch(model, requests)
            await ended(api, batch_id)
            return await api.batch_results(batch_id)
        finally:
            await client.close()

    lines = by_id(asyncio.run(scenario()))
    assert set(lines) == {r.custom_id for r in requests}
    assert {(line.completion, line.error_kind) for line in lines.values()} == {(None, kind)}
    assert all(line.error_message for line in lines.values())


@pytest.mark.parametrize("model", list(MODELS))
def test_a_cancelled_batch_ends_with_every_line_cancelled_and_nothing_billed(timed_sim, model):
    sim_model = MODELS[model][1]
    timed_sim.patch(sim_model, batch_latency_s=3600)
    client, api = client_of(timed_sim, model)
    requests = requests_to(model)

    async def scenario():
        try:
            batch_id = await api.submit_batch(model, requests)
            await api.cancel_batch(batch_id)
            state = await ended(api, batch_id)
            return state, await api.batch_results(batch_id)
        finally:
            await client.close()

    state, lines = asyncio.run(scenario())
    assert state.provider_status in ("cancelled", "ended", "CANCELLED")
    lines = by_id(lines)
    assert set(lines) == {r.custom_id for r in requests}
    assert {(line.completion, line.error_kind) for line in lines.values()} == {(None, "batch_cancelled")}
    assert timed_sim.stats()["models"].get(sim_model, {}).get("batch_requests", 0) == 0


def one(model, custom_id="job-1", text="hi"):
    request = CompletionRequest(
        job_id=custom_id, model=model, messages=[ChatMessage(role="user", content=text)], max_output_tokens=10
    )
    return BatchRequest(custom_id=custom_id, request=request)


REFUSED = [
    ("gpt-4o", [], "at least one request"),
    ("gpt-4o", [one("gpt-4o"), one("gpt-4o-mini", "job-2")], "holds requests to gpt-4o-mini"),
    ("gpt-4o", [one("gpt-4o"), one("gpt-4o")], "the same custom_id"),
    ("gpt-4o", [one("gpt-4o")] * 50_001, "more than a batch takes: 50000"),
    ("claude-3-5-sonnet", [one("claude-3-5-sonnet")] * 100_001, "more than a batch takes: 100000"),
    ("claude-3-5-sonnet", [one("claude-3-5-sonnet", "job:1")], "not 1-64 of [a-zA-Z0-9_-]"),
    ("gemini-2.5-flash", [one("gemini-2.5-flash", text="x" * 20_000_000)], "more than the API takes (20000000)"),
]


@pytest.mark.parametrize(("model", "requests", "reason"), REFUSED)
def test_a_batch_the_api_would_refuse_is_a_bad_request_before_anything_is_sent(sim, model, requests, reason):
    client, api = client_of(sim, model)

    async def scenario():
        try:
            await api.submit_batch(model, requests)
        finally:
            await client.close()

    with pytest.raises(ProviderError) as refused:
        asyncio.run(scenario())
    assert refused.value.kind == "bad_request" and reason in refused.value.message
    assert httpx.get(f"{sim.url}/_sim/requests").json() == []


@pytest.mark.parametrize("model", list(MODELS))
def test_a_failed_batch_call_is_a_provider_error_of_the_usual_kind(sim, model):
    provider, _, adapter = MODELS[model]
    config = sim_config(sim)
    settings = config.providers[provider]
    models = {m: c for m, c in config.models.items() if c.provider == provider}
    keyless = adapter(provider, settings, models, None, make_transport(settings))
    client, api = client_of(sim, model)
    unknown = "batches/nothing" if provider == "gemini" else "nothing"

    async def scenario():
        errors = []
        for call in (
            keyless.submit_batch(model, [one(model)]),
            keyless.batch_state(unknown),
            api.batch_state(unknown),
            api.batch_results(unknown),
            api.cancel_batch(unknown),
        ):
            try:
                await call
            except ProviderError as exc:
                errors.append((exc.kind, exc.status))
        await keyless.close()
        await client.close()
        return errors

    auth_status = 403 if provider == "gemini" else 401
    assert asyncio.run(scenario()) == [("auth", auth_status), ("auth", auth_status)] + [("bad_request", 404)] * 3


def test_echo_answers_a_batch_at_once_with_its_usual_answers():
    config = load_config(
        env={"LLM_ROUTER__PROVIDERS__OPENAI__KIND": "echo", "LLM_ROUTER__PROVIDERS__OPENAI__BATCH_API": "true"}
    )
    client = build_providers(config).clients["openai"]
    api = batch_api(client, config.providers["openai"])
    assert api is client
    requests = [*requests_to("gpt-4o"), one("gpt-4o", "job-long", "x" * 600_000)]

    async def scenario():
        batch_id = await api.submit_batch("gpt-4o", requests)
        state = await api.batch_state(batch_id)
        await api.cancel_batch(batch_id)  # it has ended: nothing is left to cancel
        return state, await api.batch_results(batch_id), [await client.complete(r.request) for r in requests[:3]]

    state, lines, synchronous = asyncio.run(scenario())
    assert state.status == "ended"
    lines = by_id(lines)
    assert [lines[r.custom_id].completion for r in requests[:3]] == synchronous
    assert lines["job-long"].completion is None and lines["job-long"].error_kind == "context_too_long"
    with pytest.raises(ProviderError) as unknown:
        asyncio.run(api.batch_state("echo-batch-0"))
    assert unknown.value.kind == "bad_request"


def test_batch_api_defaults_by_kind_and_a_value_given_wins():
    assert [ProviderConfig(kind=kind).batch_api for kind in ("openai", "anthropic", "gemini")] == [True] * 3
    assert [ProviderConfig(kind=kind).batch_api for kind in ("openai_compatible", "echo")] == [False] * 2
    assert ProviderConfig(kind="openai", batch_api=False).batch_api is False
    assert ProviderConfig(kind="echo", batch_api=True).batch_api is True, "echo's batches are for the benchmark"
    assert ProviderConfig(kind="openai_compatible", batch_api=True).batch_api is True, "Together's, Fireworks'"
    assert ProviderConfig(kind="anthropic").batch_discount == 0.5


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"kind": "openai", "batch_discount": 0}, "providers.llama.batch_discount: Expected `float` > 0.0"),
        ({"kind": "openai", "batch_discount": 1.5}, "providers.llama.batch_discount: Expected `float` <= 1.0"),
    ],
)
def test_a_batch_setting_a_provider_cannot_have_is_a_config_error_naming_why(settings, error):
    raw = {
        "providers": {"llama": {"base_url": "http://127.0.0.1:8000/v1"} | settings},
        "models": {},
        "tasks": {},
        "classifier": {"default_task": "t"},
    }
    with pytest.raises(ConfigError) as refused:
        parse_config(raw)
    assert error in str(refused.value)


def test_batch_api_gives_a_client_only_where_its_provider_has_batch_api():
    config = load_config(env={"LLM_ROUTER__PROVIDERS__GEMINI__BATCH_API": "false"})
    built = build_providers(config, env=KEYS | {"LLAMA_API_KEY": "k"}).clients
    given = {name: batch_api(client, config.providers[name]) is client for name, client in built.items()}
    assert given == {"openai": True, "anthropic": True, "gemini": False, "llama": False}
