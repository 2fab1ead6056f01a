"""Recorded provider responses (fixtures/, sources in fixtures/SOURCES.md) parse into the same outcome."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from multidict import CIMultiDict

from worker.errors import ProviderError
from worker.providers import anthropic, gemini, openai
from worker.providers.http import HttpResponse

FIXTURES = Path(__file__).parent / "fixtures"


def response(name: str, status: int = 200, **headers: str) -> HttpResponse:
    return HttpResponse(status, CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}), (FIXTURES / name).read_bytes())


def failure(parse, name: str, status: int, **headers: str) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        parse(response(name, status, **headers), 1.0)
    return info.value


def test_openai_completion():
    c = openai.parse_response(response("openai_chat_completion.json", x_request_id="req_123"), 12.5)
    assert (c.text, c.finish_reason, c.input_tokens, c.output_tokens) == ("Hello! How can I assist you today?", "stop", 19, 10)
    assert (c.request_id, c.response_model, c.latency_ms) == ("req_123", "gpt-4.1-2025-04-14", 12.5)


def test_openai_cached_tokens_are_part_of_the_input():
    c = openai.parse_response(response("openai_chat_completion_cached.json"), 1.0)
    assert (c.input_tokens, c.output_tokens, c.finish_reason) == (2006, 300, "length")
    assert c.request_id == "chatcmpl-cached-example"


def test_openai_errors():
    error = failure(openai.parse_response, "openai_error_rate_limit.json", 429, retry_after_ms="1400", x_ratelimit_limit_tokens="30000", x_ratelimit_remaining_tokens="500", x_ratelimit_reset_tokens="1.4s")
    assert (error.kind, error.retry_after_s) == ("rate_limited", 1.4)
    assert (error.rate_limits.tokens.limit, error.rate_limits.tokens.remaining, error.rate_limits.tokens.reset_s) == (30000, 500, 1.4)
    assert failure(openai.parse_response, "openai_error_context_length.json", 400).kind == "context_too_long"
    assert failure(openai.parse_response, "openai_error_insufficient_quota.json", 429).kind == "quota"


@pytest.mark.parametrize("name", ["vllm_error_flat.json", "vllm_error_nested.json"])
def test_vllm_error_shapes(name):
    error = failure(openai.parse_response, name, 400)
    assert error.kind == "context_too_long" and "maximum context length is 4096" in error.message


def test_anthropic_message():
    c = anthropic.parse_response(response("anthropic_message.json", request_id="req_abc"), 1.0)
    assert (c.text, c.finish_reason, c.input_tokens, c.output_tokens, c.request_id) == ("Hello!", "stop", 12, 6, "req_abc")


def test_anthropic_cache_reads_and_writes_are_part_of_the_input():
    c = anthropic.parse_response(response("anthropic_message_cache.json"), 1.0)
    assert (c.input_tokens, c.output_tokens, c.finish_reason) == (21 + 188086 + 0, 393, "length")


def test_anthropic_errors():
    reset = (datetime.now(UTC) + timedelta(seconds=12)).isoformat(timespec="seconds").replace("+00:00", "Z")
    error = failure(anthropic.parse_response, "anthropic_error_rate_limit.json", 429, retry_after="12", anthropic_ratelimit_input_tokens_limit="40000", anthropic_ratelimit_input_tokens_remaining="0", anthropic_ratelimit_input_tokens_reset=reset)
    assert (error.kind, error.retry_after_s) == ("rate_limited", 12)
    assert error.rate_limits.input_tokens.limit == 40000 and error.rate_limits.input_tokens.remaining == 0 and 10 <= error.rate_limits.input_tokens.reset_s <= 12
    overloaded = failure(anthropic.parse_response, "anthropic_error_overloaded.json", 529)
    assert overloaded.kind == "overloaded" and overloaded.status == 529


def test_gemini_response():
    c = gemini.parse_response(response("gemini_generate_content.json"), 1.0)
    assert (c.text, c.finish_reason, c.input_tokens, c.output_tokens, c.response_model) == ("AI works by learning patterns from data.", "stop", 8, 245, "gemini-2.0-flash")


def test_gemini_thoughts_count_as_output_and_are_not_the_answer():
    c = gemini.parse_response(response("gemini_generate_content_thinking.json"), 1.0)
    assert c.text == "The answer is 42."
    assert (c.input_tokens, c.output_tokens) == (11, 1170 + 1217)
    assert c.request_id == "mJ3HaPjzAoGj1dkPqM-eoQU"


def test_gemini_429_with_retry_info_is_a_rate_limit_not_a_quota():
    error = failure(gemini.parse_response, "gemini_error_429.json", 429)
    assert (error.kind, error.retry_after_s) == ("rate_limited", 1.0)


def test_fixtures_are_json_and_documented():
    sources = (FIXTURES / "SOURCES.md").read_text()
    for path in FIXTURES.glob("*.json"):
        json.loads(path.read_text())
        assert path.name in sources, f"{path.name} has no source in SOURCES.md"
