"""Pricing: an attempt's cost from the price table, and the prompt estimate the runner and the echo share."""

import asyncio

import pytest

from worker.messages import ChatMessage
from worker.providers import build_providers
from worker.providers.base import CompletionRequest
from worker.routing.pricing import attempt_cost, content_tokens, messages_prompt_tokens, prompt_tokens, text_tokens


def test_cost_is_arithmetic_on_the_price_table(config):
    assert attempt_cost(config.models["gpt-4o"], 1_000_000, 100_000) == pytest.approx(2.50 + 1.00)
    assert attempt_cost(config.models["gemini-2.5-flash"], 2000, 500) == pytest.approx(
        (2000 * 0.075 + 500 * 0.30) / 1e6
    )


@pytest.mark.parametrize("contents", [["What is 2 + 2?"], ["", "abc"], ["be brief", "x" * 4001, "why?"]])
def test_the_prompt_estimate_of_the_runner_and_the_echo_is_the_pricing_rule(config, contents):
    messages = [ChatMessage(role="user", content=c) for c in contents]
    assert content_tokens(messages) == text_tokens(contents) == sum((len(c) + 3) // 4 for c in contents)
    assert messages_prompt_tokens(messages) == prompt_tokens(contents)
    provider = build_providers(config).clients["openai"]
    completion = asyncio.run(
        provider.complete(CompletionRequest(job_id="j", model="gpt-4o", messages=messages, max_output_tokens=100))
    )
    assert completion.input_tokens == prompt_tokens(contents) == text_tokens(contents) + 4 * len(contents)
    assert completion.text == f"[gpt-4o] {contents[-1]}" and completion.output_tokens == (len(completion.text) + 3) // 4
    assert completion.finish_reason == "stop" and completion.request_id == "echo-j-gpt-4o"


def test_cached_input_and_cache_writes_are_billed_at_their_own_prices(config):
    gpt, claude = config.models["gpt-4o"], config.models["claude-3-5-sonnet"]
    # 3,000 input tokens of which 2,048 read from the cache: the rest at $2.50, the cached at $1.25.
    assert attempt_cost(gpt, 3000, 100, cached_input_tokens=2048) == pytest.approx(
        (952 * 2.50 + 2048 * 1.25 + 100 * 10.00) / 1e6
    )
    # Anthropic: 1,500 read at $0.30, 1,200 written at $3.75, 300 uncached at $3.00.
    assert attempt_cost(claude, 3000, 100, cached_input_tokens=1500, cache_write_input_tokens=1200) == pytest.approx(
        (300 * 3.00 + 1500 * 0.30 + 1200 * 3.75 + 100 * 15.00) / 1e6
    )
    assert attempt_cost(gpt, 3000, 100) == pytest.approx((3000 * 2.50 + 100 * 10.00) / 1e6), "no cache: as before"
