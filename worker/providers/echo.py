"""The in-process `echo` provider: deterministic answers with real token counts, no HTTP.

It stands in for a real provider in the demo, the tests and the benchmarks. `latency_ms` makes each
call take that long; `failure_rate` makes that share of attempts end in a refusal (a paid, failed attempt that
escalates), chosen by a hash of job id and model so a job fails the same way every time it runs.
Asked for JSON, it answers a JSON object holding the same text.
"""

from __future__ import annotations

import asyncio
import hashlib

import msgspec

from worker.config import ModelConfig, ProviderConfig
from worker.errors import ProviderError
from worker.providers.base import Completion, CompletionRequest
from worker.routing.pricing import estimate_tokens, messages_prompt_tokens


class EchoProvider:
    """Answers with the start of the last message (in a JSON object when asked for JSON), within the
    request's output-token cap."""

    def __init__(self, name: str, config: ProviderConfig, models: dict[str, ModelConfig]) -> None:
        self.name = name
        self._latency_s = config.latency_ms / 1000
        self._failure_rate = config.failure_rate
        self._models = models

    async def complete(self, request: CompletionRequest) -> Completion:
        model = self._models.get(request.model)
        if model is None:
            raise ProviderError("bad_request", f"{self.name} serves no model {request.model!r}")
        messages = request.messages
        input_tokens = messages_prompt_tokens(messages)
        if input_tokens + request.max_output_tokens > model.context_window:
            raise ProviderError(
                "context_too_long",
                f"{input_tokens} input + {request.max_output_tokens} output tokens exceed {request.model}'s "
                f"context window of {model.context_window}",
            )
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        if self._failure_rate and self._fails(request):
            return Completion(
                text="I can't help with that.",
                finish_reason="refusal",
                input_tokens=input_tokens,
                output_tokens=7,
                request_id=f"echo-{request.job_id}-{request.model}",
            )
        text = f"[{request.model}] {messages[-1].content}"
        if request.json_output:
            text = msgspec.json.encode({"answer": text}).decode()
        text = text[: request.max_output_tokens * 4]
        return Completion(
            text=text,
            finish_reason="stop",
            input_tokens=input_tokens,
            output_tokens=estimate_tokens(text),
            request_id=f"echo-{request.job_id}-{request.model}",
        )

    def _fails(self, request: CompletionRequest) -> bool:
        digest = hashlib.blake2b(f"{request.job_id}\0{request.model}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self._failure_rate

    async def close(self) -> None:
        return None
