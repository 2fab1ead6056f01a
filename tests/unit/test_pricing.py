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
