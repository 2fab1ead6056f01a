"""The worker's adapters against the simulator: outcomes, usage and cost, every error kind, retry hints."""

import asyncio

import httpx
import msgspec
import pytest

from worker.config import load_config
from worker.errors import ProviderError
from worker.messages import ChatMessage, Job
from worker.providers import build_providers
from worker.providers.base import CompletionRequest
from worker.routing.judge import JUDGE_MAX_OUTPUT_TOKENS, judge_messages, passed
from worker.routing.pricing import attempt_cost, prompt_tokens
from worker.simulator.caching import key_label

KEYS = {
    "OPENAI_API_KEY": "sk-sim",
    "ANTHROPIC_API_KEY": "sk-ant-sim",
    "GEMINI_API_KEY": "gm-sim",
    "LLAMA_API_KEY": "llama-sim",
}
# router model -> (provider, the simulator's name for it)
MODELS = {
    "gpt-4o": ("openai", "gpt-4o"),
    "claude-3-5-sonnet": ("anthropic", "claude-3-5-sonnet-20241022"),
    "gemini-2.5-flash": ("gemini", "gemini-2.5-flash"),
    "llama-4-70b": ("llama", "llama-4-70b"),
}


def sim_config(sim, client="aiohttp"):
    env = {
        "LLM_ROUTER__PROVIDERS__OPENAI__BASE_URL": f"{sim.url}/v1",
        "LLM_ROUTER__PROVIDERS__ANTHROPIC__BASE_URL": sim.url,
        "LLM_ROUTER__PROVIDERS__GEMINI__BASE_URL": f"{sim.url}/v1beta",
        "LLM_ROUTER__PROVIDERS__LLAMA__BASE_URL": f"{sim.url}/v1",
    }
    env |= {f"LLM_ROUTER__PROVIDERS__{p}__HTTP_CLIENT": client for p in ("OPENAI", "ANTHROPIC", "GEMINI", "LLAMA")}
    env |= {f"LLM_ROUTER__PROVIDERS__{p}__TIMEOUT_S": "2" for p in ("OPENAI", "ANTHROPIC", "GEMINI", "LLAMA")}
    return load_config(env=env)


def call(sim, model, prompt="hello there", max_tokens=400, system=None, client="aiohttp", json_output=False):
    config = sim_config(sim, client)
    providers = build_providers(config, env=KEYS)
    provider = providers.clients[MODELS[model][0]]
    messages = ([ChatMessage(role="system", content=system)] if system else []) + [
        ChatMessage(role="user", content=prompt)
    ]

    async def run():
        try:
            return await provider.complete(
                CompletionRequest(
                    job_id="job-1",
                    model=model,
                    messages=messages,
                    max_output_tokens=max_tokens,
                    json_output=json_output,
                )
            )
        finally:
            await provider.close()

    return asyncio.run(run()), config


@pytest.mark.parametrize("client", ["aiohttp", "httpx", "lean"])
@pytest.mark.parametrize("model", list(MODELS))
def test_text_finish_usage_and_cost_match_what_the_simulator_served(sim, model, client):
    completion, config = call(
        sim,
        model,
        "Capital of France? [[expect: Paris]] [[task: simple_qa]]",
        system="Answer in one word.",
        client=client,
    )
    served = sim.stats()["models"][MODELS[model][1]]
    assert completion.finish_reason == "stop"
    assert completion.text == "Paris" or served["wrong"] == 1
    assert (completion.input_tokens, completion.output_tokens) == (served["input_tokens"], served["output_tokens"])
    assert completion.latency_ms > 0 and completion.request_id
    cost = attempt_cost(config.models[model], completion.input_tokens, completion.output_tokens)
    expected = (
        served["input_tokens"] * config.models[model].input_usd_per_mtok
        + served["output_tokens"] * config.models[model].output_usd_per_mtok
    ) / 1e6
    assert cost == pytest.approx(expected)


@pytest.mark.parametrize("model", list(MODELS))
def test_the_simulator_grades_a_judge_request_on_every_wire(sim, model):
    sim.patch(MODELS[model][1], accuracy={}, default_accuracy=1.0)
    question = "Capital of Kenya? [[expect: Nairobi]] [[task: simple_qa]]"
    for given, passes in (("Nairobi.", True), ("Mombasa", False)):
        system, user = judge_messages(
            Job(id="job-1", prompt=question), [ChatMessage(role="user", content=question)], given
        )
        completion, _ = call(sim, model, user.text(), max_tokens=JUDGE_MAX_OUTPUT_TOKENS, system=system.text())
        assert passed(completion.text) is passes, f"{model} judged {given!r}: {completion.text!r}"
        assert completion.output_tokens <= 2


def test_system_messages_reach_each_wire_format_as_its_own_field(sim):
    for model in MODELS:
        sim.reset()
        completion, _ = call(sim, model, "x" * 400, system="s" * 4000)
        assert completion.input_tokens >= 1100, f"{model}: the system prompt was not sent"


def test_gemini_thinking_tokens_count_as_output(sim):
    sim.patch("gemini-2.5-flash", thinking_tokens=250)
    completion, _ = call(sim, "gemini-2.5-flash", "hi")
    assert completion.output_tokens == sim.stats()["models"]["gemini-2.5-flash"]["output_tokens"]
    assert completion.output_tokens > 250


@pytest.mark.parametrize("model", list(MODELS))
def test_truncation_and_refusal(sim, model):
    completion, _ = call(sim, model, "tell me a long story", max_tokens=5)
    assert completion.finish_reason == "length" and completion.output_tokens == 5
    sim.patch(MODELS[model][1], errors={"refused": 1.0})
    completion, _ = call(sim, model, "something forbidden")
    # Gemini's refusal is a stop by its safety filter (finishReason SAFETY)
    assert completion.finish_reason == ("content_filter" if model == "gemini-2.5-flash" else "refusal")


def error_of(sim, model, **kwargs) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        call(sim, model, **kwargs)
    return info.value


@pytest.mark.parametrize("model", list(MODELS))
def test_injected_errors_map_to_their_kinds(sim, model):
    name = MODELS[model][1]
    expected = {
        "rate_limited": "rate_limited",
        "server": "server",
        "unavailable": "overloaded",
        "overloaded": "overloaded",
        "quota": "quota",
    }
    for injected, kind in expected.items():
        if model == "llama-4-70b" and injected == "quota":
            continue  # vLLM has no quota
        sim.patch(name, errors={injected: 1.0})
        error = error_of(sim, model)
        assert error.kind == kind, (model, injected, error.message)
        sim.patch(name, errors={injected: 0.0})


def test_anthropic_overload_is_529(sim):
    sim.patch("claude-3-5-sonnet-20241022", errors={"overloaded": 1.0})
    error = error_of(sim, "claude-3-5-sonnet")
    assert error.status == 529 and error.kind == "overloaded" and "overloaded_error" in error.message


@pytest.mark.parametrize(
    "model, retry_after_s, expected",
    [
        ("gpt-4o", 2.5, 2.5),  # retry-after-ms
        ("claude-3-5-sonnet", 2.5, 3.0),  # retry-after, whole seconds
        ("gemini-2.5-flash", 2.5, 2.5),  # RetryInfo.retryDelay in the body
        ("llama-4-70b", 0.25, 0.25),
    ],
)
def test_the_retry_delay_comes_from_the_right_header_or_body_field(sim, model, retry_after_s, expected):
    sim.patch(MODELS[model][1], errors={"rate_limited": 1.0}, retry_after_s=retry_after_s)
    error = error_of(sim, model)
    assert error.kind == "rate_limited" and error.retry_after_s == pytest.approx(expected)


@pytest.mark.parametrize("model", list(MODELS))
def test_context_too_long(sim, model):
    error = error_of(sim, model, prompt="word " * 1_000_000, max_tokens=100)
    assert error.kind == "context_too_long", error.message


def test_vllm_errors_in_the_flat_shape_are_read(sim):
    error = error_of(sim, "llama-4-70b", prompt="word " * 200_000, max_tokens=100)
    assert error.kind == "context_too_long" and "maximum context length is 128000" in error.message


@pytest.mark.parametrize("model", list(MODELS))
def test_timeouts(sim, model):
    sim.patch(MODELS[model][1], errors={"timeout": 1.0})
    error = error_of(sim, model)  # the simulator holds the request; the adapter's 2 s timeout fires
    assert error.kind == "timeout"


def test_rate_limit_headers_give_the_remaining_allowance(sim):
    sim.patch("gpt-4o", requests_per_minute=600, tokens_per_minute=100000)
    sim.patch(
        "claude-3-5-sonnet-20241022",
        requests_per_minute=50,
        input_tokens_per_minute=40000,
        output_tokens_per_minute=8000,
    )
    openai_answer, _ = call(sim, "gpt-4o")
    limits = openai_answer.rate_limits
    assert limits.requests.limit == 600 and limits.requests.remaining == 599 and 0 < limits.requests.reset_s <= 0.2
    assert limits.tokens.limit == 100000 and limits.tokens.remaining < 100000
    anthropic_answer, _ = call(sim, "claude-3-5-sonnet")
    limits = anthropic_answer.rate_limits
    assert limits.requests.limit == 50 and limits.requests.remaining == 49
    assert (
        limits.input_tokens.limit == 40000
        and limits.output_tokens.limit == 8000
        and limits.output_tokens.remaining < 8000
    )
    assert 0 <= limits.requests.reset_s <= 2


def test_a_provider_without_its_key_is_left_out_and_never_called(sim):
    config = sim_config(sim)
    providers = build_providers(config, env={k: v for k, v in KEYS.items() if k != "ANTHROPIC_API_KEY"})
    assert "anthropic" not in providers.clients
    assert providers.unavailable == {"anthropic": "no API key: set ANTHROPIC_API_KEY"}


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini", "llama"])
def test_auth_and_bad_request_kinds(sim, provider):
    config = sim_config(sim)
    # A server configured to take no key (api_key_env = "") sends none: the simulator answers 401/403.
    keyless = msgspec.structs.replace(
        config,
        providers={**config.providers, provider: msgspec.structs.replace(config.providers[provider], api_key_env="")},
    )
    model = next(m for m, (p, _) in MODELS.items() if p == provider)

    async def attempt(cfg, model_name, env):
        client = build_providers(cfg, env=env).clients[provider]
        try:
            with pytest.raises(ProviderError) as info:
                await client.complete(
                    CompletionRequest(
                        job_id="j",
                        model=model_name,
                        messages=[ChatMessage(role="user", content="hi")],
                        max_output_tokens=10,
                    )
                )
            return info.value
        finally:
            await client.close()

    assert asyncio.run(attempt(keyless, model, {})).kind == "auth"
    assert asyncio.run(attempt(config, "no-such-model", KEYS)).kind == "bad_request"


@pytest.mark.parametrize(
    "compat, field",
    [
        ("", "max_completion_tokens"),
        ("groq", "max_completion_tokens"),
        ("vllm", "max_tokens"),
        ("ollama", "max_tokens"),
        ("together", "max_tokens"),
    ],
)
def test_openai_compatible_quirks(compat, field):
    from worker.providers.openai import OpenAIProvider

    config = load_config(env={"LLM_ROUTER__PROVIDERS__LLAMA__COMPAT": compat})
    provider = OpenAIProvider(
        "llama", config.providers["llama"], {"llama-4-70b": config.models["llama-4-70b"]}, "k", transport=None
    )
    body = provider.request_body(
        CompletionRequest(
            job_id="j",
            model="llama-4-70b",
            messages=[ChatMessage(role="system", content="s"), ChatMessage(role="user", content="u")],
            max_output_tokens=77,
        )
    )
    assert body == {
        "model": "llama-4-70b",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        field: 77,
    }


@pytest.mark.parametrize("model", list(MODELS))
def test_json_output_is_asked_in_each_wire_format_and_answered_as_json(sim, model):
    completion, _ = call(sim, model, "Capital of France? [[expect: Paris]] [[task: simple_qa]]", json_output=True)
    assert completion.finish_reason == "stop"
    served = sim.stats()["models"][MODELS[model][1]]
    assert msgspec.json.decode(completion.text) == {"answer": "Paris"} or served["wrong"] == 1, completion.text
    assert isinstance(msgspec.json.decode(completion.text), dict)
    plain, _ = call(sim, model, "Capital of France? [[expect: Paris]] [[task: simple_qa]]")
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(plain.text)


@pytest.mark.parametrize("model", list(MODELS))
def test_a_model_whose_json_mode_fails_answers_prose(sim, model):
    sim.patch(MODELS[model][1], json_failure=1.0)
    completion, _ = call(sim, model, "Name a colour.", json_output=True)
    assert completion.finish_reason == "stop"
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(completion.text)


def json_request(*messages):
    return CompletionRequest(
        job_id="j",
        model="m",
        messages=[ChatMessage(role=role, content=content) for role, content in messages],
        max_output_tokens=50,
        json_output=True,
    )


def adapter(kind):
    from worker.providers.anthropic import AnthropicProvider
    from worker.providers.gemini import GeminiProvider
    from worker.providers.openai import OpenAIProvider

    config = load_config()
    cls = {"openai": OpenAIProvider, "anthropic": AnthropicProvider, "gemini": GeminiProvider}[kind]
    return cls(kind, config.providers[kind], {}, "k", transport=None)


def test_openai_json_mode_and_the_word_json_it_needs():
    from worker.providers.openai import JSON_INSTRUCTION

    provider = adapter("openai")
    body = provider.request_body(json_request(("user", "Name a colour.")))
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"] == [
        {"role": "system", "content": JSON_INSTRUCTION},
        {"role": "user", "content": "Name a colour."},
    ]
    body = provider.request_body(json_request(("system", "Be brief."), ("user", "Name a colour.")))
    assert body["messages"][0] == {"role": "system", "content": f"Be brief.\n\n{JSON_INSTRUCTION}"}
    assert len(body["messages"]) == 2, "one system message, first"
    body = provider.request_body(json_request(("user", "Name a colour, as Json.")))
    assert body["messages"] == [{"role": "user", "content": "Name a colour, as Json."}], "it already says JSON"
    plain = provider.request_body(msgspec.structs.replace(json_request(("user", "hi")), json_output=False))
    assert "response_format" not in plain


def test_gemini_json_mode_is_the_response_mime_type():
    body = adapter("gemini").request_body(json_request(("user", "Name a colour.")))
    assert body["generationConfig"] == {"maxOutputTokens": 50, "responseMimeType": "application/json"}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "Name a colour."}]}]


def test_anthropic_asks_for_json_by_instruction_and_prefill():
    from worker.providers.anthropic import JSON_INSTRUCTION

    provider = adapter("anthropic")
    body = provider.request_body(json_request(("system", "Be brief."), ("user", "Name a colour.")))
    assert body["system"] == f"Be brief.\n\n{JSON_INSTRUCTION}"
    assert body["messages"] == [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "{"},
    ]
    own = provider.request_body(json_request(("user", "Name a colour."), ("assistant", "[")))
    assert own["messages"][-1] == {"role": "assistant", "content": "["}, "the job's own prefill is kept, alone"
    assert own["system"] == JSON_INSTRUCTION


LONG_SYSTEM = "You are a careful assistant for the billing team; answer from the policy below. " * 70


@pytest.mark.parametrize("model", list(MODELS))
def test_a_repeated_long_system_prompt_is_read_from_the_cache_and_costs_what_the_simulator_bills(sim, model):
    first, config = call(sim, model, "What is the refund window?", system=LONG_SYSTEM)
    second, _ = call(sim, model, "Who approves exceptions?", system=LONG_SYSTEM)
    prefix = prompt_tokens([LONG_SYSTEM])  # the system prompt alone, as the simulator counts it
    assert prefix >= 1024
    if model == "claude-3-5-sonnet":  # explicit caching: written on first sight, read afterwards
        assert (first.cached_input_tokens, first.cache_write_input_tokens) == (0, prefix)
        assert (second.cached_input_tokens, second.cache_write_input_tokens) == (prefix, 0)
    else:  # automatic caching: nothing written (billed), the prefix read the second time
        assert (first.cached_input_tokens, first.cache_write_input_tokens) == (0, 0)
        expected = prefix if model == "gemini-2.5-flash" else 1024 + (prefix - 1024) // 128 * 128  # OpenAI: 128s
        assert (second.cached_input_tokens, second.cache_write_input_tokens) == (expected, 0)
    assert second.input_tokens > second.cached_input_tokens + second.cache_write_input_tokens
    provider, api_model = MODELS[model]
    bill = sim.stats()["bills"][key_label(KEYS[f"{provider.upper()}_API_KEY"])][api_model]
    assert bill["requests"] == 2
    assert bill["input_tokens"] == first.input_tokens + second.input_tokens
    assert bill["cached_input_tokens"] == first.cached_input_tokens + second.cached_input_tokens
    assert bill["cache_write_input_tokens"] == first.cache_write_input_tokens + second.cache_write_input_tokens
    prices = config.models[model]
    costs = [
        attempt_cost(prices, c.input_tokens, c.output_tokens, c.cached_input_tokens, c.cache_write_input_tokens)
        for c in (first, second)
    ]
    assert sum(costs) == pytest.approx(bill["cost_usd"], rel=1e-12, abs=0)
    if model != "llama-4-70b":  # the OpenAI-compatible server's cache is billed at the full price (1x)
        assert costs[1] < attempt_cost(prices, second.input_tokens, second.output_tokens), "the cache read is cheaper"


def test_anthropic_marks_only_a_long_enough_system_prompt_for_caching_and_only_when_prompt_cache_is_on(sim):
    call(sim, "claude-3-5-sonnet", "hi", system="Be brief.")
    call(sim, "claude-3-5-sonnet", "hi", system=LONG_SYSTEM, json_output=True)
    short, long = (r["body"]["system"] for r in httpx.get(f"{sim.url}/_sim/requests", params={"limit": 2}).json())
    assert short == "Be brief."
    assert [b.get("cache_control") for b in long] == [{"type": "ephemeral"}, None], "the JSON instruction after it"
    assert long[0]["text"] == LONG_SYSTEM
    config = msgspec.structs.replace(
        sim_config(sim),
        providers=sim_config(sim).providers
        | {"anthropic": msgspec.structs.replace(sim_config(sim).providers["anthropic"], prompt_cache=False)},
    )
    provider = build_providers(config, env=KEYS).clients["anthropic"]
    messages = [ChatMessage(role="system", content=LONG_SYSTEM), ChatMessage(role="user", content="hi")]
    body = provider.request_body(
        CompletionRequest(job_id="j", model="claude-3-5-sonnet", messages=messages, max_output_tokens=10)
    )
    assert body["system"] == LONG_SYSTEM
    asyncio.run(provider.close())


def test_the_simulator_shows_its_last_requests_without_keys(sim):
    for model in MODELS:
        call(sim, model, f"hello {model}")
    received = httpx.get(f"{sim.url}/_sim/requests", params={"limit": 3}).json()
    assert [r["model"] for r in received] == ["claude-3-5-sonnet-20241022", "gemini-2.5-flash", "llama-4-70b"]
    assert received[1]["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert received[2]["body"]["messages"] == [{"role": "user", "content": "hello llama-4-70b"}]
    headers = {name.lower() for r in received for name in r["headers"]}
    assert "content-type" in headers and not headers & {"authorization", "x-api-key", "x-goog-api-key"}
    assert len(httpx.get(f"{sim.url}/_sim/requests", params={"limit": 100}).json()) == 4


@pytest.mark.parametrize("model", list(MODELS))
def test_a_repeated_prompt_under_1024_tokens_is_never_cached(sim, model):
    system = "Answer from the policy. " * 120  # about 730 tokens: under every provider's minimum
    completions = [call(sim, model, "Same question?", system=system)[0] for _ in range(2)]
    assert [(c.cached_input_tokens, c.cache_write_input_tokens) for c in completions] == [(0, 0), (0, 0)]
    assert sim.stats()["cached_input_tokens"] == 0
