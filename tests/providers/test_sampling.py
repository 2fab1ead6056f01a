"""Generation settings on the wire: the adapters' bodies encode them as the official SDKs do (a capturing server
on loopback), the simulator answers them, and refuses what each real API refuses, in its own error shape."""

import asyncio
from types import SimpleNamespace

import anthropic
import openai
import pytest
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.providers.capture import Capture, env_of, same_fields
from tests.providers.test_adapters import KEYS, MODELS, sim_config
from tests.providers.test_sdks import anthropic_client, gemini_client, openai_client
from worker.config import load_config
from worker.errors import ProviderError
from worker.messages import ChatMessage
from worker.providers import Sampling, build_providers
from worker.providers.base import CompletionRequest

SAMPLING = Sampling(temperature=0.3, top_p=0.9, stop=("END", "##"), seed=42)
SYSTEM, PROMPT = "Be brief.", "What is the capital of France? [[expect: Paris]]"
MESSAGES = [ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=PROMPT)]


def complete(base_url: str, model: str, sampling: Sampling = SAMPLING, client: str = "lean", **env: str):
    """One call of the worker's adapter for `model`, to a simulator or a capturing server at `base_url`."""
    config = sim_config(SimpleNamespace(url=base_url), client)
    if env:
        config = load_config(env=env_of(base_url, client) | env)
    provider = build_providers(config, env=KEYS).clients[MODELS[model][0]]

    async def run():
        try:
            return await provider.complete(
                CompletionRequest(job_id="j", model=model, messages=MESSAGES, max_output_tokens=50, sampling=sampling)
            )
        finally:
            await provider.close()

    return asyncio.run(run())


def ours(capture: Capture, model: str, **env: str) -> dict:
    complete(capture.url, model, **env)
    return capture.last()


@pytest.mark.parametrize(
    "model, cap_field", [("gpt-4o", "max_completion_tokens"), ("llama-4-70b", "max_tokens")], ids=["openai", "vllm"]
)
def test_openai_and_openai_compatible_bodies_match_the_openai_sdk(capture, model, cap_field):
    adapter = ours(capture, model)
    openai_client(capture).chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
        temperature=0.3,
        top_p=0.9,
        stop=["END", "##"],
        seed=42,
        **{cap_field: 50},
    )
    assert {"temperature", "top_p", "stop", "seed", cap_field} <= adapter.keys()
    same_fields(adapter, capture.last())


def test_anthropic_body_matches_the_anthropic_sdk(capture):
    # The SDK (2.x) speaks API version 2026-10-21, which removed temperature and top_p: so does the adapter
    # set to that version, and both leave them out; stop_sequences is in both.
    adapter = ours(capture, "claude-3-5-sonnet", LLM_ROUTER__PROVIDERS__ANTHROPIC__ANTHROPIC_VERSION='"2026-10-21"')
    anthropic_client(capture).messages.create(
        model="claude-3-5-sonnet-20241022",
        max_tokens=50,
        system=SYSTEM,
        messages=[{"role": "user", "content": PROMPT}],
        stop_sequences=["END", "##"],
    )
    assert adapter["stop_sequences"] == ["END", "##"]
    assert not {"temperature", "top_p", "seed"} & adapter.keys()
    same_fields(adapter, capture.last())


def test_anthropic_body_of_version_2023_06_01_sends_temperature_as_the_sdk_would():
    # An older version still takes temperature (0-1) and top_p; the 2.x SDK has no parameter for them any
    # more: its `extra_body` puts them at the top level of the body, as the 1.x SDK's own parameters did.
    capture = Capture()
    try:
        adapter = ours(capture, "claude-3-5-sonnet")
        anthropic_client(capture).messages.create(
            model="claude-3-5-sonnet-20241022",
            max_tokens=50,
            system=SYSTEM,
            messages=[{"role": "user", "content": PROMPT}],
            stop_sequences=["END", "##"],
            extra_body={"temperature": 0.3},
        )
        assert (adapter["temperature"], adapter["stop_sequences"]) == (0.3, ["END", "##"])
        assert not {"top_p", "seed"} & adapter.keys()  # top_p beside a temperature is left out
        same_fields(adapter, capture.last())
    finally:
        capture.close()


def test_gemini_body_matches_the_google_genai_sdk(capture):
    adapter = ours(capture, "gemini-2.5-flash")
    gemini_client(capture).models.generate_content(
        model="gemini-2.5-flash",
        contents=[genai_types.Content(role="user", parts=[genai_types.Part(text=PROMPT)])],
        config=genai_types.GenerateContentConfig(
            system_instruction=SYSTEM,
            max_output_tokens=50,
            temperature=0.3,
            top_p=0.9,
            stop_sequences=["END", "##"],
            seed=42,
        ),
    )
    sdk = capture.last()
    assert adapter["generationConfig"] == {
        "maxOutputTokens": 50,
        "temperature": 0.3,
        "topP": 0.9,
        "stopSequences": ["END", "##"],
        "seed": 42,
    }
    same_fields(adapter["generationConfig"], sdk["generationConfig"])
    same_fields({"contents": adapter["contents"]}, sdk)
    assert [p["text"] for p in sdk["systemInstruction"]["parts"]] == [
        p["text"] for p in adapter["systemInstruction"]["parts"]
    ]


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("client", ["lean", "aiohttp"])
def test_each_provider_answers_a_call_with_every_setting(sim, model, client):
    completion = complete(sim.url, model, client=client)
    assert completion.finish_reason == "stop" and completion.text
    served = sim.stats()["models"][MODELS[model][1]]
    assert served["ok"] == 1 and served["statuses"] == {"200": 1}


def test_a_setting_the_adapter_does_not_check_is_refused_by_the_api_as_a_bad_request(sim):
    # Intake keeps such jobs out; were one sent, the provider's 400 is a bad_request, not retried.
    with pytest.raises(ProviderError) as refused:
        complete(sim.url, "gpt-4o", Sampling(temperature=2.5))
    assert refused.value.kind == "bad_request" and refused.value.status == 400
    assert "decimal_above_max_value" in refused.value.message and "Expected a value <= 2" in refused.value.message
    with pytest.raises(ProviderError) as refused:
        complete(sim.url, "gemini-2.5-flash", Sampling(top_p=1.5))
    assert refused.value.kind == "bad_request" and "INVALID_ARGUMENT" in refused.value.message
    # a temperature above Anthropic's range is left out, not sent: the call is answered
    assert complete(sim.url, "claude-3-5-sonnet", Sampling(temperature=1.5, seed=3)).finish_reason == "stop"


def test_openai_sdk_gets_openais_errors_for_settings_out_of_range(sim):
    client = openai_client(sim)
    messages = [{"role": "user", "content": PROMPT}]
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="gpt-4o", messages=messages, max_completion_tokens=20, temperature=2.5)
    assert (error.value.code, error.value.param, error.value.type) == (
        "decimal_above_max_value",
        "temperature",
        "invalid_request_error",
    )
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="gpt-4o", messages=messages, max_completion_tokens=20, stop=list("abcde"))
    assert (error.value.code, error.value.param) == ("array_above_max_length", "stop")
    ok = client.chat.completions.create(
        model="gpt-4o", messages=messages, max_completion_tokens=20, temperature=2, top_p=1, stop=list("abcd"), seed=1
    )
    assert ok.choices[0].finish_reason == "stop"


def test_anthropic_sdk_gets_anthropics_errors_for_a_seed_and_removed_or_out_of_range_settings(sim):
    client = anthropic_client(sim)  # API version 2026-10-21
    fields = {
        "model": "claude-3-5-sonnet-20241022",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    with pytest.raises(anthropic.BadRequestError) as error:
        client.messages.create(**fields, extra_body={"seed": 42})
    assert error.value.body["error"] == {
        "type": "invalid_request_error",
        "message": "seed: Extra inputs are not permitted",
    }
    with pytest.raises(anthropic.BadRequestError) as error:
        client.messages.create(**fields, extra_body={"temperature": 0.5})
    assert error.value.body["error"]["message"] == "temperature: Extra inputs are not permitted"
    older = {"anthropic-version": "2023-06-01"}
    with pytest.raises(anthropic.BadRequestError) as error:
        client.messages.create(**fields, extra_body={"temperature": 1.5}, extra_headers=older)
    assert error.value.body["error"]["message"] == "temperature: Input should be less than or equal to 1"
    with pytest.raises(anthropic.BadRequestError) as error:
        client.messages.create(**fields, extra_body={"temperature": 0.5, "top_p": 0.5}, extra_headers=older)
    assert "cannot both be specified" in error.value.body["error"]["message"]
    ok = client.messages.create(**fields, stop_sequences=["END"])
    assert ok.stop_reason == "end_turn"
    ok = client.messages.create(**fields, extra_body={"temperature": 1}, extra_headers=older)
    assert ok.stop_reason == "end_turn"


def test_gemini_sdk_gets_geminis_error_for_a_temperature_above_2(sim):
    client = gemini_client(sim)
    with pytest.raises(genai_errors.ClientError) as error:
        client.models.generate_content(
            model="gemini-2.5-flash", contents=PROMPT, config=genai_types.GenerateContentConfig(temperature=2.5)
        )
    assert (error.value.code, error.value.status) == (400, "INVALID_ARGUMENT")
    assert "temperature value of 2.5" in error.value.message
    ok = client.models.generate_content(
        model="gemini-2.5-flash",
        contents=PROMPT,
        config=genai_types.GenerateContentConfig(temperature=2, top_p=1, stop_sequences=list("abcde"), seed=7),
    )
    assert ok.candidates[0].finish_reason == genai_types.FinishReason.STOP
