"""The in-process `echo` provider: deterministic answers with real token counts, no HTTP.

It stands in for a real provider in the demo, the tests and the benchmarks. `latency_ms` makes each
call take that long; `failure_rate` makes that share of attempts end in a refusal (a paid, failed attempt that
escalates), chosen by a hash of job id and model so a job fails the same way every time it runs.
Asked for JSON, it answers a JSON object holding the same text, or, under a schema, JSON valid for
simple schemas (`example`); offered tools with a `tool_choice` that requires a call, it calls the named
tool, else the first, with arguments made the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import msgspec

from worker.config import ModelConfig, ProviderConfig
from worker.errors import ProviderError
from worker.messages import ToolCall, ToolChoiceName
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
