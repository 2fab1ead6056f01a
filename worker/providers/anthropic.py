"""Anthropic Messages: `POST {base_url}/v1/messages` with `x-api-key` and `anthropic-version`."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any, NamedTuple, NoReturn

import msgspec
from msgspec.structs import replace

from worker.config import ModelConfig, ProviderConfig
from worker.errors import ProviderError
from worker.http.transport import HttpResponse, Transport
from worker.messages import ChatMessage, ContentPart, ImagePart, JsonSchemaFormat, Tool, ToolCall, ToolChoiceName
from worker.providers.base import (
    BatchLine,
    BatchRequest,
    BatchState,
    BatchStatus,
    Completion,
    CompletionRequest,
    FinishReason,
    Sampling,
    decode_json,
    http_error,
)
from worker.providers.batches import CANCELLED, EXPIRED, answered, check_batch, check_size, jsonl, not_answered
from worker.ratelimit.headers import RateLimitState, anthropic_rate_limits, retry_after_from_headers
from worker.routing.pricing import text_tokens

# The Messages API has no JSON mode: a JSON answer is asked for in the system prompt, and the answer is
# started with "{" (a prefill: the final assistant message, which the model continues). Claude 4.6 models and
# later refuse a prefill (400): it is sent only to models without NATIVE_SCHEMA, which all take it.
JSON_INSTRUCTION = "Answer with one JSON object only, no other text."
JSON_PREFILL = "{"
# The capability of a model with the API's structured outputs (`output_config.format`, generally available
# without a beta header on Claude Sonnet 4.5, Opus 4.5, Haiku 4.5 and later): a schema is asked for by it.
# A model without it answers a schema through a forced tool whose input is the answer (AnswerTool).
NATIVE_SCHEMA = "json_schema"
ANSWER_TOOL_DESCRIPTION = "Give your answer: its input is the answer."
# A tool's input is an object: a schema of anything else is the one property of the answer tool's input.
ANSWER_FIELD = "answer"

# The Messages API's names for the job's generation settings; it has no `seed`.
_SAMPLING_NAMES = {"temperature": "temperature", "top_p": "top_p", "stop": "stop_sequences"}
# Its temperature range is 0-1 (the job's is 0-2): a higher one is left out, which gives the API's
# default, 1.0, the nearest value it takes.
MAX_TEMPERATURE = 1.0
# The API version that removed `temperature` and `top_p` (and `top_k`): from it on, they are left out.
SAMPLING_REMOVED_IN = "2026-10-21"
# The shortest prompt prefix the API caches (Sonnet- and Opus-class models; a shorter one marked for
# caching is simply not cached): a system prompt of this many estimated tokens or more is marked.
MIN_CACHEABLE_TOKENS = 1024
CACHE_CONTROL = {"type": "ephemeral"}  # the default 5-minute cache, whose writes bill 1.25x

# Message Batches: at most this many requests or bytes a batch; a custom_id is 1-64 of [a-zA-Z0-9_-].
MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256_000_000
CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
# The readings (Reading) of this many submitted batches are kept, the oldest forgotten first.
MAX_REMEMBERED_BATCHES = 10_000
_BATCH_STATUS: dict[str, BatchStatus] = {"in_progress": "running", "canceling": "cancelling", "ended": "ended"}
# The results of requests the batch did not reach.
_NOT_REACHED = {"expired": EXPIRED, "canceled": CANCELLED}
# The HTTP status of each error type (docs.anthropic.com, "Errors"): an errored line's error has no status.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "refusal",
}


class AnswerTool(NamedTuple):
    """The forced tool that carries a schema's answer to a model without native structured output."""

    name: str
    schema: dict[str, Any]
    # The schema is not an object's: the tool's input holds the answer under ANSWER_FIELD.
    wrapped: bool

    @classmethod
    def of(cls, schema: JsonSchemaFormat) -> AnswerTool:
        """The answer tool of `schema`, named after it."""
        return cls(name=schema.name, schema=schema.schema, wrapped=schema.schema.get("type") != "object")

    def block(self) -> dict:
        """The tool's definition, its `input_schema` the answer's schema (in an object when wrapped)."""
        input_schema = self.schema
        if self.wrapped:
            input_schema = {"type": "object", "properties": {ANSWER_FIELD: self.schema}, "required": [ANSWER_FIELD]}
        return {"name": self.name, "description": ANSWER_TOOL_DESCRIPTION, "input_schema": input_schema}

    def answer(self, arguments: Any) -> str:
        """The answer, as JSON text, from the tool's input."""
        if self.wrapped and isinstance(arguments, dict):
            arguments = arguments.get(ANSWER_FIELD)
        return msgspec.json.encode(arguments).decode()


class AnthropicProvider:
    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        models: dict[str, ModelConfig],
        api_key: str | None,
        transport: Transport,
    ) -> None:
        self.name = name
        self._url = config.base_url.rstrip("/") + "/v1/messages"
        self._models = {m: c.api_model or m for m, c in models.items()}
        self._native_schema = {m for m, c in models.items() if NATIVE_SCHEMA in c.capabilities}
        self._version = config.anthropic_version
        self._batches_url = self._url + "/batches"
        # The batch API's GETs and body-less POSTs: the same headers but the body's type.
        self._get_headers = {"anthropic-version": config.anthropic_version}
        self._prompt_cache = config.prompt_cache
        if api_key:
            self._get_headers["x-api-key"] = api_key
        self._headers = {"content-type": "application/json"} | self._get_headers
        self._transport = transport
        self._encoder = msgspec.json.Encoder()
        self._readings: dict[str, dict[str, Reading]] = {}  # by batch id, then custom_id: the ones not plain

    def request_body(self, request: CompletionRequest) -> dict:
        """System messages go to the top-level `system`; the rest stay in order, as content blocks
        (`conversation`). A schema is asked for natively (`output_config.format`) where the model has it, else
        by a forced answer tool; a JSON answer without one by an instruction, and a prefill where it is taken."""
        system = [m.text() for m in request.messages if m.role == "system"]
        messages = conversation(request.messages)
        if request.json_output and request.schema is None:
            system.append(JSON_INSTRUCTION)
            if self.prefills(request):
                messages.append({"role": "assistant", "content": JSON_PREFILL})
        body: dict = {
            "model": self._models.get(request.model, request.model),
            "max_tokens": request.max_output_tokens,
            "messages": messages,
        }
        if system:
            body["system"] = self.system(system, sum(1 for m in request.messages if m.role == "system"))
        body.update(sampling_fields(request.sampling, self._version)[0])
        called = [call.name for m in request.messages for call in m.tool_calls or ()]
        body.update(tool_fields(request.tools, request.tool_choice, self.answer_tool(request), called))
        if request.schema is not None and request.model in self._native_schema:
            body["output_config"] = {"format": {"type": "json_schema", "schema": request.schema.schema}}
        return body

    def answer_tool(self, request: CompletionRequest) -> AnswerTool | None:
        """The forced tool that carries the answer of a schema the model cannot be asked for natively."""
        if request.schema is None or request.model in self._native_schema:
            return None
        return AnswerTool.of(request.schema)

    def prefills(self, request: CompletionRequest) -> bool:
        """Whether the call starts the answer with the JSON prefill: a JSON job without a schema or tools, to a
        model that takes a prefill (one without native structured output), whose last message is the user's."""
        return (
            request.json_output
            and request.schema is None
            and not request.tools
            and request.model not in self._native_schema
            and bool(request.messages)
            and request.messages[-1].role == "user"
        )

    def system(self, texts: list[str], own: int) -> str | list[dict]:
        """The top-level `system` of `texts`, whose first `own` are the job's system messages (instructions
        the adapter adds come after them). When prompt caching is on and the job's system prompt is long
        enough to be cached, a list of text blocks whose last one of the job's own carries `cache_control`:
        the cached prefix is then the same whatever the adapter adds."""
        if not (self._prompt_cache and own and text_tokens(texts[:own]) >= MIN_CACHEABLE_TOKENS):
            return "\n\n".join(texts)
        blocks: list[dict] = [{"type": "text", "text": text} for text in texts]
        blocks[own - 1]["cache_control"] = CACHE_CONTROL
        return blocks

    async def complete(self, request: CompletionRequest) -> Completion:
        started = time.monotonic()
        response = await self._transport.post(
            self._url, self._headers, self._encoder.encode(self.request_body(request))
        )
        latency = (time.monotonic() - started) * 1000
        reading = self.reading(request)
        return reading.whole(parse_response(response, latency, self.name, reading.answer))

    def reading(self, request: CompletionRequest) -> Reading:
        """How the answer to `request` is read: its answer tool, and whether it continues the JSON prefill."""
        return Reading(answer=self.answer_tool(request), prefilled=self.prefills(request))

    async def submit_batch(self, model: str, requests: list[BatchRequest]) -> str:
        """Create a Message Batch whose requests' `params` are the synchronous calls' bodies; its id. How each
        answer is read is kept by this client for `batch_results` (see `Reading`)."""
        check_batch(self.name, model, requests, MAX_BATCH_REQUESTS)
        unfit = [r.custom_id for r in requests if not CUSTOM_ID.fullmatch(r.custom_id)]
        if unfit:
            raise ProviderError("bad_request", f"{self.name}: custom_id {unfit[0]!r} is not 1-64 of [a-zA-Z0-9_-]")
        entries = [{"custom_id": r.custom_id, "params": self.request_body(r.request)} for r in requests]
        body = self._encoder.encode({"requests": entries})
        check_size(self.name, len(body), MAX_BATCH_BYTES)
        batch_id = object_id(self._json(await self._transport.post(self._batches_url, self._headers, body)), self.name)
        self._remember(batch_id, {r.custom_id: self.reading(r.request) for r in requests})
        return batch_id

    def _remember(self, batch_id: str, readings: dict[str, Reading]) -> None:
        """Keep the readings of a submitted batch that are not plain, for its results (the oldest batches'
        forgotten beyond MAX_REMEMBERED_BATCHES)."""
        self._readings[batch_id] = {custom_id: r for custom_id, r in readings.items() if r != Reading()}
        while len(self._readings) > MAX_REMEMBERED_BATCHES:
            del self._readings[next(iter(self._readings))]

    async def batch_state(self, batch_id: str) -> BatchState:
        status = str((await self._batch(batch_id)).get("processing_status") or "")
        return BatchState(status=_BATCH_STATUS.get(status, "running"), provider_status=status)

    async def batch_results(self, batch_id: str) -> list[BatchLine]:
        """The lines of the results file at the batch's `results_url`; ProviderError("bad_request") for a batch
        that has not ended."""
        batch = await self._batch(batch_id)
        if batch.get("processing_status") != "ended" or not batch.get("results_url"):
            status = batch.get("processing_status")
            raise ProviderError("bad_request", f"{self.name}: batch {batch_id} has not ended ({status})")
        response = await self._transport.get(str(batch["results_url"]), self._get_headers)
        raise_for_error(response)
        readings = self._readings.get(batch_id, {})
        return [self.batch_line(line, readings) for line in jsonl(response.body, self.name)]

    def batch_line(self, line: dict, readings: dict[str, Reading]) -> BatchLine:
        """A line of a batch's results: its message read as a synchronous answer, or why there is none."""
        custom_id = str(line.get("custom_id") or "")
        result = line.get("result")
        result = result if isinstance(result, dict) else {}
        kind = result.get("type")
        if kind == "succeeded":
            reading = readings.get(custom_id, Reading())
            return answered(custom_id, lambda: reading.whole(self.batch_completion(result.get("message"), reading)))
        if kind in _NOT_REACHED:
            return not_answered(custom_id, _NOT_REACHED[kind], f"{self.name}: the request was {kind}")
        error = result.get("error")
        return answered(custom_id, lambda: raise_line_error(error if isinstance(error, dict) else {}))

    def batch_completion(self, message: Any, reading: Reading) -> Completion:
        """A succeeded line's Message as a Completion."""
        if not isinstance(message, dict):
            raise ProviderError("server", f"{self.name}: a batch result's message is not a JSON object")
        return read_completion(
            message, self.name, reading.answer, request_id=str(message.get("id") or ""), latency_ms=0.0
        )

    async def cancel_batch(self, batch_id: str) -> None:
        raise_for_error(await self._transport.post(f"{self._batches_url}/{batch_id}/cancel", self._get_headers, b""))

    async def _batch(self, batch_id: str) -> dict:
        return self._json(await self._transport.get(f"{self._batches_url}/{batch_id}", self._get_headers))

    def _json(self, response: HttpResponse) -> dict:
        return answer_json(response, self.name, anthropic_rate_limits(response.headers, datetime.now(UTC)))

    async def close(self) -> None:
        await self._transport.close()


class Reading(NamedTuple):
    """How the answer to a request is read: the answer tool whose call is the answer, and whether the answer
    continues the JSON prefill. A batch's results do not say: its client keeps them from `submit_batch`, so
    a batch submitted by another process (or before a restart) is read plainly, and those answers (a schema's
    answer tool call, a JSON answer missing its prefill) fail verification rather than pass wrongly."""

    answer: AnswerTool | None = None
    prefilled: bool = False

    def whole(self, completion: Completion) -> Completion:
        """The model's whole answer: a prefilled answer continues the prefill, which the API does not repeat."""
        if self.prefilled and completion.text and completion.finish_reason != "refusal":
            return replace(completion, text=JSON_PREFILL + completion.text)
        return completion


def raise_line_error(error: dict) -> NoReturn:
    """The ProviderError of an errored batch line: its error type read as the same error's HTTP status."""
    inner = error.get("error")
    detail = inner if isinstance(inner, dict) else error  # an ErrorResponse holds the error object
    error_type, message = str(detail.get("type") or ""), str(detail.get("message") or "")
    raise http_error(_ERROR_STATUS.get(error_type, 500), error_type, "", message, None, None)


def object_id(data: dict, what: str) -> str:
    """The `id` of an API object (a message batch); ProviderError("server") when it has none."""
    if not data.get("id"):
        raise ProviderError("server", f"{what}: the answer names no id: {str(data)[:200]}")
    return str(data["id"])


def sampling_fields(sampling: Sampling, api_version: str) -> tuple[dict[str, Any], list[str]]:
    """The generation settings as Messages API fields of `api_version`, and the ones left out: `seed` (none in
    the API), a temperature above 1 (out of its range), `top_p` beside a temperature (Claude 4 models refuse
    both), and from version 2026-10-21 on `temperature` and `top_p` (removed from the API)."""
    settings = sampling.settings()
    removed = api_version >= SAMPLING_REMOVED_IN  # the versions are ISO dates: they order as strings
    fields: dict[str, Any] = {}
    dropped: list[str] = []
    for name, value in settings.items():
        if (
            name not in _SAMPLING_NAMES
            or (removed and name in ("temperature", "top_p"))
            or (name == "temperature" and value > MAX_TEMPERATURE)
            or (name == "top_p" and "temperature" in fields)
        ):
            dropped.append(name)
        else:
            fields[_SAMPLING_NAMES[name]] = value
    return fields, dropped


def conversation(messages: list[ChatMessage]) -> list[dict]:
    """The job's messages but the system ones as Messages API turns: an assistant's tool calls as `tool_use`
    blocks after its text, each `tool` message as a `tool_result` block of a user turn. Consecutive tool
    results, and a user message after them, make one user turn (the roles alternate; the results first)."""
    turns: list[dict] = []
    for message in messages:
        if message.role == "system":
            continue
        turn: dict[str, Any]
        if message.role == "tool":
            turn = {"role": "user", "content": [tool_result(message)]}
        elif message.role == "assistant" and message.tool_calls:
            text = [] if not message.text() else [{"type": "text", "text": message.text()}]
            turn = {"role": "assistant", "content": text + [tool_use(call) for call in message.tool_calls]}
        else:
            turn = {"role": message.role, "content": content(message.content)}
        if turn["role"] == "user" and turns and _holds_tool_results(turns[-1]):
            turns[-1]["content"].extend(_blocks(turn["content"]))
        else:
            turns.append(turn)
    return turns


def content(value: str | list[ContentPart]) -> str | list[dict]:
    """A message's content: a string as it is, parts as text and image blocks."""
    if isinstance(value, str):
        return value
    return [image_block(part) if isinstance(part, ImagePart) else {"type": "text", "text": part.text} for part in value]


def image_block(image: ImagePart) -> dict:
    """An image block: base64 data with its media type, or a URL the API fetches."""
    if image.url is not None:
        return {"type": "image", "source": {"type": "url", "url": image.url}}
    return {"type": "image", "source": {"type": "base64", "media_type": image.media_type, "data": image.data}}


def tool_use(call: ToolCall) -> dict:
    """An assistant's tool call as a `tool_use` block (its input is the arguments object itself)."""
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}


def tool_result(message: ChatMessage) -> dict:
    """A `tool` message as the `tool_result` block answering the call it names."""
    return {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": content(message.content)}


def _holds_tool_results(turn: dict) -> bool:
    blocks = turn["content"]
    return turn["role"] == "user" and isinstance(blocks, list) and any(b["type"] == "tool_result" for b in blocks)


def _blocks(value: str | list[dict]) -> list[dict]:
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


def tool_fields(
    tools: tuple[Tool, ...],
    choice: str | ToolChoiceName | None,
    answer: AnswerTool | None,
    called: list[str] | None = None,
) -> dict:
    """`tools` and `tool_choice` of a call. With an answer tool (a schema the model cannot be asked for
    natively), it is offered beside the job's tools and forced: alone, or when the job's tools must not be
    called; beside tools the model may call, a call of some tool is required (`any`); a named tool stays forced.
    A conversation holding calls of tools (`called`) that the job does not offer defines them by name, not to be
    called: the API refuses `tool_use` blocks without tools defined."""
    if not tools and called:
        tools, choice = tuple(Tool(name=name) for name in dict.fromkeys(called)), "none"
    blocks = [tool_block(tool) for tool in tools]
    wire_choice = tool_choice(choice)
    if answer is not None:
        blocks.append(answer.block())
        if not isinstance(choice, ToolChoiceName):
            wire_choice = {"type": "any"} if tools and choice != "none" else {"type": "tool", "name": answer.name}
    fields: dict[str, Any] = {}
    if blocks:
        fields["tools"] = blocks
        if wire_choice is not None:
            fields["tool_choice"] = wire_choice
    return fields


def tool_block(tool: Tool) -> dict:
    """A tool's definition: its arguments' schema is the `input_schema`."""
    block = {"name": tool.name, "input_schema": tool.parameters}
    return block | {"description": tool.description} if tool.description else block


def tool_choice(choice: str | ToolChoiceName | None) -> dict | None:
    """The job's `tool_choice` in the API's terms ("required" is `any`), or None to leave the default (auto)."""
    if isinstance(choice, ToolChoiceName):
        return {"type": "tool", "name": choice.name}
    return {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}.get(choice or "")


def parse_response(
    response: HttpResponse, latency_ms: float, what: str = "anthropic", answer: AnswerTool | None = None
) -> Completion:
    """A Messages answer (or error) as a Completion (or ProviderError). A call of the `answer` tool is the
    answer itself, as JSON text, not a tool call."""
    limits = anthropic_rate_limits(response.headers, datetime.now(UTC))
    data = answer_json(response, what, limits)
    request_id = response.headers.get("request-id") or str(data.get("id") or "")
    return read_completion(data, what, answer, request_id=request_id, latency_ms=latency_ms, rate_limits=limits)


def answer_json(response: HttpResponse, what: str, limits: RateLimitState | None = None) -> dict:
    """The JSON object of a 2xx answer; else the answer's ProviderError (its kind, retry time and limits)."""
    raise_for_error(response, limits)
    return decode_json(response.body, what)


def raise_for_error(response: HttpResponse, limits: RateLimitState | None = None) -> None:
    """The ProviderError of a non-2xx answer, with its retry time and the limits its headers give."""
    if response.status >= 300:
        error_type, message = "", response.body[:300].decode(errors="replace")
        try:
            data = msgspec.json.decode(response.body)
            error = data.get("error") or {}
            error_type, message = str(error.get("type") or ""), str(error.get("message") or message)
        except (msgspec.DecodeError, AttributeError):
            pass
        retry = retry_after_from_headers(response.headers, datetime.now(UTC))
        raise http_error(response.status, error_type, "", message, retry, limits)


def read_completion(
    data: dict,
    what: str,
    answer: AnswerTool | None = None,
    *,
    request_id: str,
    latency_ms: float,
    rate_limits: RateLimitState | None = None,
) -> Completion:
    """A Message object (a synchronous answer's body, or a batch result's) as a Completion. A call of the
    `answer` tool is the answer itself, as JSON text, not a tool call."""
    blocks = data.get("content") or ()
    text = "".join(block.get("text", "") for block in blocks if block.get("type") == "text")
    finish = _FINISH.get(data.get("stop_reason") or "", "other")
    uses = [block for block in blocks if block.get("type") == "tool_use"]
    answered = [block for block in uses if answer is not None and block.get("name") == answer.name]
    if answer is not None and answered:
        text = answer.answer(answered[0].get("input"))
        uses = [block for block in uses if block not in answered]
        finish = "tool_calls" if uses else ("stop" if finish == "tool_calls" else finish)
    calls, errors = tool_calls(uses)
    usage = data.get("usage") or {}
    # `input_tokens` excludes the cache reads and writes: the whole input is the sum of the three.
    cache_read = int(usage.get("cache_read_input_tokens") or 0)
    cache_write = int(usage.get("cache_creation_input_tokens") or 0)
    return Completion(
        text=text,
        finish_reason=finish,
        tool_calls=calls,
        tool_call_error="; ".join(errors),
        input_tokens=int(usage.get("input_tokens") or 0) + cache_read + cache_write,
        output_tokens=int(usage.get("output_tokens") or 0),
        cached_input_tokens=cache_read,
        cache_write_input_tokens=cache_write,
        request_id=request_id,
        latency_ms=latency_ms,
        response_model=str(data.get("model") or ""),
        rate_limits=rate_limits,
    )


def tool_calls(blocks: list[dict]) -> tuple[tuple[ToolCall, ...], list[str]]:
    """The `tool_use` blocks as tool calls, and why each one that is not (its input not a JSON object) is not."""
    calls: list[ToolCall] = []
    errors: list[str] = []
    for block in blocks:
        name, arguments = str(block.get("name") or ""), block.get("input")
        if isinstance(arguments, dict):
            calls.append(ToolCall(id=str(block.get("id") or ""), name=name, arguments=arguments))
        else:
            errors.append(f"the input of the call of tool {name!r} is not a JSON object: {arguments!r:.100}")
    return tuple(calls), errors
