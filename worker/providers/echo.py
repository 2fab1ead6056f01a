"""The in-process `echo` provider: deterministic answers with real token counts, no HTTP.

It stands in for a real provider in the demo, the tests and the benchmarks. `latency_ms` makes each
call take that long; `failure_rate` makes that share of attempts end in a refusal (a paid, failed attempt that
escalates), chosen by a hash of job id and model so a job fails the same way every time it runs.
Asked for JSON, it answers a JSON object holding the same text, or, under a schema, JSON valid for
simple schemas (`example`); offered tools with a `tool_choice` that requires a call, it calls the named
tool, else the first, with arguments made the same way. Its batch API (for the benchmark; a provider's
`batch_api` may be true for echo) answers a batch in-process at once, each line the usual answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from functools import partial
from typing import Any

import msgspec

from worker.config import ModelConfig, ProviderConfig
from worker.errors import ProviderError
from worker.messages import ToolCall, ToolChoiceName
from worker.providers.base import BatchLine, BatchRequest, BatchState, Completion, CompletionRequest
from worker.providers.batches import answered, check_batch
from worker.routing.pricing import estimate_tokens, messages_prompt_tokens

# The batches kept for their results, the oldest forgotten first.
MAX_KEPT_BATCHES = 10_000


class EchoProvider:
    """Answers with the start of the last message (in a JSON object when asked for JSON), within the
    request's output-token cap."""

    def __init__(self, name: str, config: ProviderConfig, models: dict[str, ModelConfig]) -> None:
        self.name = name
        self._latency_s = config.latency_ms / 1000
        self._failure_rate = config.failure_rate
        self._models = models
        self._batches: dict[str, list[BatchLine]] = {}  # by id, the oldest first
        self._batch_numbers = itertools.count(1)

    async def complete(self, request: CompletionRequest) -> Completion:
        input_tokens = self._input_tokens(request)  # an impossible call fails at once, as a provider's 400 does
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        return self._answer(request, input_tokens)

    def answer(self, request: CompletionRequest) -> Completion:
        """The answer to `request`, at once; ProviderError for a call the model cannot take."""
        return self._answer(request, self._input_tokens(request))

    def _input_tokens(self, request: CompletionRequest) -> int:
        """The request's input tokens; ProviderError for a model it does not serve or a call over its context."""
        model = self._models.get(request.model)
        if model is None:
            raise ProviderError("bad_request", f"{self.name} serves no model {request.model!r}")
        input_tokens = messages_prompt_tokens(request.messages)
        if input_tokens + request.max_output_tokens > model.context_window:
            raise ProviderError(
                "context_too_long",
                f"{input_tokens} input + {request.max_output_tokens} output tokens exceed {request.model}'s "
                f"context window of {model.context_window}",
            )
        return input_tokens

    def _answer(self, request: CompletionRequest, input_tokens: int) -> Completion:
        messages = request.messages
        if self._failure_rate and self._fails(request):
            return Completion(
                text="I can't help with that.",
                finish_reason="refusal",
                input_tokens=input_tokens,
                output_tokens=7,
                request_id=f"echo-{request.job_id}-{request.model}",
            )
        text = f"[{request.model}] {messages[-1].text()}"
        if request.tools and request.tool_choice not in (None, "auto", "none"):
            return self._call(request, text, input_tokens)
        if request.json_output:
            answer = {"answer": text} if request.schema is None else example(request.schema.schema, text)
            text = msgspec.json.encode(answer).decode()
        text = text[: request.max_output_tokens * 4]
        return Completion(
            text=text,
            finish_reason="stop",
            input_tokens=input_tokens,
            output_tokens=estimate_tokens(text),
            request_id=f"echo-{request.job_id}-{request.model}",
        )

    def _call(self, request: CompletionRequest, text: str, input_tokens: int) -> Completion:
        """The answer to a request whose tool_choice requires a call: a call of the named tool, else the first."""
        choice = request.tool_choice
        name = choice.name if isinstance(choice, ToolChoiceName) else request.tools[0].name
        tool = next(t for t in request.tools if t.name == name)
        arguments = example(tool.parameters, text)
        return Completion(
            text="",
            finish_reason="tool_calls",
            input_tokens=input_tokens,
            output_tokens=estimate_tokens(msgspec.json.encode(arguments).decode()),
            tool_calls=(ToolCall(id=f"call-{request.job_id}-{request.model}", name=name, arguments=arguments),),
            request_id=f"echo-{request.job_id}-{request.model}",
        )

    def _fails(self, request: CompletionRequest) -> bool:
        digest = hashlib.blake2b(f"{request.job_id}\0{request.model}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self._failure_rate

    async def submit_batch(self, model: str, requests: list[BatchRequest]) -> str:
        """A batch answered in-process at once (for the benchmark): its lines are the usual echo answers."""
        check_batch(self.name, model, requests, None)
        batch_id = f"echo-batch-{next(self._batch_numbers)}"
        self._batches[batch_id] = [answered(r.custom_id, partial(self.answer, r.request)) for r in requests]
        while len(self._batches) > MAX_KEPT_BATCHES:
            del self._batches[next(iter(self._batches))]
        return batch_id

    async def batch_state(self, batch_id: str) -> BatchState:
        self._lines(batch_id)
        return BatchState(status="ended", provider_status="ended")

    async def batch_results(self, batch_id: str) -> list[BatchLine]:
        return self._lines(batch_id)

    async def cancel_batch(self, batch_id: str) -> None:
        self._lines(batch_id)  # ended already: nothing is left to cancel

    def _lines(self, batch_id: str) -> list[BatchLine]:
        lines = self._batches.get(batch_id)
        if lines is None:
            raise ProviderError("bad_request", f"{self.name}: no batch {batch_id!r}")
        return lines

    async def close(self) -> None:
        return None


def example(schema: dict[str, Any], text: str) -> Any:
    """A value valid under a simple JSON Schema (`const`, `enum`, `anyOf`/`oneOf`, the basic types with
    their bounds, objects with all their properties), its strings being `text`; not `$ref`, patterns or
    formats."""
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return example(schema[key][0], text)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {name: example(sub, text) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [
            example(schema.get("items", {}), text)
            for _ in range(schema.get("minItems", min(1, schema.get("maxItems", 1))))
        ]
    if kind in ("integer", "number"):
        return schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return text[: schema.get("maxLength", len(text))].ljust(schema.get("minLength", 0), ".")
