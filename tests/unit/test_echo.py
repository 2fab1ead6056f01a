"""The in-process echo provider (the demo's and the tests' stand-in for a real provider)."""

import asyncio

import pytest

from worker.errors import ProviderError
from worker.messages import ChatMessage
from worker.providers import build_providers
from worker.providers.base import CompletionRequest


def test_echo_rejects_prompts_over_the_context_window(config):
    provider = build_providers(config).clients["openai"]
    request = CompletionRequest(
        job_id="j", model="gpt-4o", messages=[ChatMessage(role="user", content="x" * 600_000)], max_output_tokens=100
    )
    with pytest.raises(ProviderError) as info:
        asyncio.run(provider.complete(request))
    assert info.value.kind == "context_too_long"
