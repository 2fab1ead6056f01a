"""Recorded provider responses (fixtures/, where each came from in fixtures/SOURCES.md) parse into
the outcome they stand for."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from multidict import CIMultiDict

from worker.errors import ProviderError
from worker.http.transport import HttpResponse
from worker.providers import anthropic, gemini, openai

FIXTURES = Path(__file__).parent / "fixtures"


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def response(body, status: int = 200, **headers: str) -> HttpResponse:
    raw = (FIXTURES / body).read_bytes() if isinstance(body, str) else json.dumps(body).encode()
    return HttpResponse(
        status=status, headers=CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}), body=raw
    )


def failure(parse, body, status: int, **headers: str) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        parse(response(body, status, **headers), 1.0)
    return info.value


def test_openai_completion():
    c = openai.parse_response(response("openai_chat_completion.json", x_request_id="req_123"), 12.5)
    assert (c.text, c.finish_reason, c.input_tokens, c.output_tokens) == (
        "Hello! How can I assist you today?",
        "stop",
        19,
        10,
    )
    assert (c.request_id, c.response_model, c.latency_ms) == ("req_123", "gpt-4.1-2025-04-14", 12.5)


def test_openai_cached_tokens_are_part_of_the_input():
    c = openai.parse_response(response("openai_chat_completion_cached.json"), 1.0)
    assert (c.input_tokens, c.output_tokens, c.finish_reason) == (2006, 300, "length")
    assert (c.cached_input_tokens, c.cache_write_input_tokens) == (1920, 0), "prompt_tokens_details.cached_tokens"


def test_openai_reasoning_tokens_are_part_of_the_output():
    # The published body has usage but no choices (the doc cut them): set it in one choice.
    body = load("openai_chat_completion_cached_reasoning.json") | {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]
    }
    c = openai.parse_response(response(body), 1.0)
    assert (c.input_tokens, c.output_tokens, c.response_model) == (1566, 1518, "o1-2024-12-17")
    assert c.cached_input_tokens == 1408


def test_openai_errors():
    error = failure(openai.parse_response, "openai_error_rate_limit.json", 429)
    assert (error.kind, error.retry_after_s) == ("rate_limited", pytest.approx(0.579)), (
        "from 'Please try again in 579ms' when no header says"
    )
    error = failure(
        openai.parse_response,
        "openai_error_rate_limit.json",
        429,
        retry_after_ms="1400",
        x_ratelimit_limit_tokens="300000",
        x_ratelimit_remaining_tokens="13249",
        x_ratelimit_reset_tokens="579ms",
    )
    assert error.retry_after_s == 1.4 and (error.rate_limits.tokens.limit, error.rate_limits.tokens.remaining) == (
        300000,
        13249,
    )
    assert failure(openai.parse_response, "openai_error_context_length.json", 400).kind == "context_too_long"
    assert failure(openai.parse_response, "openai_error_insufficient_quota.json", 429).kind == "quota"


@pytest.mark.parametrize("name, window", [("vllm_error_flat.json", "16384"), ("vllm_error_nested.json", "4096")])
def test_vllm_error_shapes(name, window):
    error = failure(openai.parse_response, name, 400)
    assert error.kind == "context_too_long" and f"maximum context length is {window}" in error.message


def test_anthropic_message():
    c = anthropic.parse_response(response("anthropic_message.json", request_id="req_abc"), 1.0)
    assert (c.text, c.finish_reason, c.input_tokens, c.output_tokens, c.request_id) == (
        "Hello!",
        "stop",
        12,
        6,
        "req_abc",
    )


def test_anthropic_cache_reads_and_writes_are_part_of_the_input():
    # The caching docs publish the usage object only: set it in a minimal message.
    body = {
        "id": "msg_x",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "max_tokens",
        "usage": load("anthropic_message_cache.json"),
    }
    c = anthropic.parse_response(response(body), 1.0)
    assert (c.input_tokens, c.output_tokens, c.finish_reason) == (21 + 188086 + 0, 393, "length")
    assert (c.cached_input_tokens, c.cache_write_input_tokens) == (0, 188086), "the cache write, part of the input"


def test_anthropic_errors():
    error = failure(anthropic.parse_response, "anthropic_error_rate_limit.json", 429)
    assert error.kind == "rate_limited" and error.retry_after_s is None
    reset = (datetime.now(UTC) + timedelta(seconds=12)).isoformat(timespec="seconds").replace("+00:00", "Z")
    error = failure(
        anthropic.parse_response,
        "anthropic_error_rate_limit.json",
        429,
        retry_after="12",
        anthropic_ratelimit_requests_limit="50",
        anthropic_ratelimit_requests_remaining="0",
        anthropic_ratelimit_requests_reset=reset,
    )
    assert (
        error.retry_after_s == 12
        and error.rate_limits.requests.remaining == 0
        and 10 <= error.rate_limits.requests.reset_s <= 12
    )
    overloaded = failure(
        anthropic.parse_response, "anthropic_error_overloaded.json", 529, request_id="req_01RCc7MbLyQNtGKzBTv8VCep"
    )
    assert overloaded.kind == "overloaded" and overloaded.status == 529


def test_gemini_response():
    c = gemini.parse_response(response("gemini_generate_content.json"), 1.0)
    assert c.text.startswith("```python\n# Example list to be sorted") and (
        c.finish_reason,
        c.input_tokens,
        c.output_tokens,
    ) == ("stop", 9, 87)


def test_gemini_thoughts_count_as_output():
    c = gemini.parse_response(response("gemini_generate_content_thinking.json"), 1.0)
    assert (c.input_tokens, c.output_tokens) == (34, 418 + 438)
    assert (c.request_id, c.response_model) == ("3w4Vad6yF-y1vdIP_q_zgAw", "gemini-3-flash-preview")


def test_gemini_thought_parts_are_not_the_answer():
    body = load("gemini_generate_content_thinking.json")
    parts = body["candidates"][0]["content"]["parts"]
    body["candidates"][0]["content"]["parts"] = [{"text": "reasoning about it", "thought": True}, *parts]
    assert gemini.parse_response(response(body), 1.0).text == "".join(p["text"] for p in parts)


def test_gemini_errors():
    error = failure(gemini.parse_response, "gemini_error_429.json", 429)
    assert (error.kind, error.retry_after_s) == ("rate_limited", 58.0), (
        "a 429 with RetryInfo is a rate limit, though it speaks of billing"
    )
    assert failure(gemini.parse_response, "gemini_error_400_context.json", 400).kind == "context_too_long"


def test_fixtures_are_json_and_documented():
    sources = (FIXTURES / "SOURCES.md").read_text()
    for path in FIXTURES.glob("*.json"):
        json.loads(path.read_text())
        assert path.name in sources, f"{path.name} has no source in SOURCES.md"


def test_gemini_cached_content_tokens_are_part_of_the_prompt():
    # The published body with the usage fields of an implicit cache hit (ai.google.dev caching docs).
    body = load("gemini_generate_content.json")
    body["usageMetadata"] = body["usageMetadata"] | {"promptTokenCount": 2100, "cachedContentTokenCount": 2048}
    c = gemini.parse_response(response(body), 1.0)
    assert (c.input_tokens, c.cached_input_tokens, c.cache_write_input_tokens) == (2100, 2048, 0)
