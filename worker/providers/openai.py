"""OpenAI Chat Completions, and OpenAI-compatible servers (vLLM, Ollama, Together, Groq)."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from msgspec import Struct

from worker.config import ModelConfig, ProviderConfig
from worker.errors import ProviderError
from worker.http.transport import HttpResponse, Transport
from worker.messages import ChatMessage, ImagePart, TextPart, Tool, ToolCall, ToolChoiceName
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
from worker.ratelimit.headers import RateLimitState, openai_rate_limits, parse_duration, retry_after_from_headers

_TRY_AGAIN = re.compile(r"try again in ((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)")
# "function_call" is the finish reason of the deprecated `functions` API, still sent by some servers.
_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}
# The Batch API (kind "openai", and OpenAI-compatible servers that serve it): each line a Chat Completions
# call, answered within the window.
BATCH_ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
MAX_BATCH_REQUESTS = 50_000
MAX_BATCH_BYTES = 200_000_000  # of the input file ("200 MB")
_BATCH_STATUS: dict[str, BatchStatus] = {
    "validating": "running",
    "in_progress": "running",
    "finalizing": "running",
    "cancelling": "cancelling",
    "completed": "ended",
    "expired": "ended",
    "cancelled": "ended",
    "failed": "ended",
}
# An error file's codes for a request without an answer.
_LINE_ERRORS = {"batch_expired": EXPIRED, "batch_cancelled": CANCELLED, "request_timeout": "timeout"}
# JSON mode (`response_format: json_object`) is refused unless a message asks for JSON in words.
JSON_INSTRUCTION = "Answer with one JSON object only, no other text."
# JSON mode standing in for a schema the model cannot take natively: the schema goes in the instructions.
SCHEMA_INSTRUCTION = "Answer with one JSON object only, no other text, valid under this JSON Schema: {schema}"


class Compat(Struct, frozen=True, kw_only=True):
    """What an OpenAI-compatible server takes differently from OpenAI (docs/architecture.md, "Structured
    output, tools and images on the OpenAI wire"). All of them take `response_format` json_schema and
    `tools` as OpenAI does."""

    # The output limit's field: older servers take `max_tokens` rather than `max_completion_tokens`.
    max_tokens_field: str = "max_completion_tokens"
    # Whether `tool_choice` is read: Ollama's endpoint has no such field and ignores it.
    tool_choice: bool = True
    # Whether an image may be an http(s) URL: Ollama's endpoint takes base64 data URLs only.
    image_urls: bool = True


COMPAT: dict[str, Compat] = {
    "": Compat(),
    "groq": Compat(),
    "vllm": Compat(max_tokens_field="max_tokens"),
    "ollama": Compat(max_tokens_field="max_tokens", tool_choice=False, image_urls=False),
    "together": Compat(max_tokens_field="max_tokens"),
}


class OpenAIProvider:
    """`POST {base_url}/chat/completions` with a Bearer key."""

    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        models: dict[str, ModelConfig],
        api_key: str | None,
        transport: Transport,
    ) -> None:
        self.name = name
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._models = {m: c.api_model or m for m, c in models.items()}
        # The models that take a JSON Schema natively (`response_format` json_schema); the others get JSON
        # mode with the schema in the instructions.
        self._native_schema = {m for m, c in models.items() if "json_schema" in c.capabilities}
        self._compat_name = config.compat or "openai"
        self._compat = COMPAT[config.compat]
        self._base = config.base_url.rstrip("/")
        # The key alone: the headers of a GET, a body-less POST and a file upload.
        self._auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._headers = {"content-type": "application/json"} | self._auth
        self._transport = transport
        self._encoder = msgspec.json.Encoder()

    def request_body(self, request: CompletionRequest) -> dict:
        """The JSON body: only fields every OpenAI-compatible server accepts (Groq rejects `n`, `logprobs`...).
        Raises ProviderError("bad_request") for what the server cannot take at all (an image URL on Ollama),
        before anything is sent."""
        messages = [self._message(m) for m in request.messages]
        body: dict[str, Any] = {
            "model": self._models.get(request.model, request.model),
            "messages": messages,
            self._compat.max_tokens_field: request.max_output_tokens,
        }
        response_format, instruction = output_fields(request, native_schema=request.model in self._native_schema)
        body.update(response_format)
        if instruction:
            _instruct(messages, instruction)
        body.update(tool_fields(request, self._compat)[0])
        body.update(sampling_fields(request.sampling)[0])
        return body

    def _message(self, message: ChatMessage) -> dict[str, Any]:
        """One message in Chat Completions form: text, content parts, tool calls or a tool result."""
        if message.role == "tool":
            return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.text()}
        if message.role == "assistant" and message.tool_calls:
            # Content is null beside tool calls when the model said nothing, as OpenAI's own answers have it.
            return {
                "role": "assistant",
                "content": message.text() or None,
                "tool_calls": [_tool_call(call) for call in message.tool_calls],
            }
        if isinstance(message.content, str) or not message.images():
            return {"role": message.role, "content": message.text()}
        return {"role": message.role, "content": [self._part(part) for part in message.content]}

    def _part(self, part: TextPart | ImagePart) -> dict[str, Any]:
        if isinstance(part, TextPart):
            return {"type": "text", "text": part.text}
        if part.url is not None and not self._compat.image_urls:
            raise ProviderError(
                "bad_request",
                f"{self._compat_name} takes images as base64 data only, not URLs: {part.url[:100]}",
            )
        url = part.url if part.url is not None else f"data:{part.media_type};base64,{part.data}"
        return {"type": "image_url", "image_url": {"url": url}}

    async def complete(self, request: CompletionRequest) -> Completion:
        started = time.monotonic()
        response = await self._transport.post(
            self._url, self._headers, self._encoder.encode(self.request_body(request))
        )
        latency = (time.monotonic() - started) * 1000
        return parse_response(response, latency, self.name)

    async def submit_batch(self, model: str, requests: list[BatchRequest]) -> str:
        """Upload the requests as a JSONL file (purpose "batch"), each line's body the synchronous call's, and
        create a batch of it; the batch's id."""
        check_batch(self.name, model, requests, MAX_BATCH_REQUESTS)
        content = b"".join(self._encoder.encode(self.batch_input_line(r)) + b"\n" for r in requests)
        check_size(self.name, len(content), MAX_BATCH_BYTES)
        file_id = await self._upload(content)
        body = {"input_file_id": file_id, "endpoint": BATCH_ENDPOINT, "completion_window": COMPLETION_WINDOW}
        response = await self._transport.post(f"{self._base}/batches", self._headers, self._encoder.encode(body))
        return object_id(self._json(response), self.name)

    def batch_input_line(self, request: BatchRequest) -> dict:
        """A line of the batch's input file: the request's synchronous body, under its custom_id."""
        body = self.request_body(request.request)
        return {"custom_id": request.custom_id, "method": "POST", "url": BATCH_ENDPOINT, "body": body}

    async def _upload(self, content: bytes) -> str:
        """Upload a batch input file (multipart/form-data); the file's id."""
        boundary = uuid.uuid4().hex
        headers = self._auth | {"content-type": f"multipart/form-data; boundary={boundary}"}
        response = await self._transport.post(f"{self._base}/files", headers, batch_file_form(boundary, content))
        return object_id(self._json(response), self.name)

    async def batch_state(self, batch_id: str) -> BatchState:
        status = str((await self._batch(batch_id)).get("status") or "")
        return BatchState(status=_BATCH_STATUS.get(status, "running"), provider_status=status)

    async def batch_results(self, batch_id: str) -> list[BatchLine]:
        """The lines of the batch's output file (answers, and answers with an error status) and of its error
        file (requests without an answer: expired, cancelled). ProviderError("bad_request") for a batch that
        failed as a whole (its input refused) or has not ended."""
        batch = await self._batch(batch_id)
        status = str(batch.get("status") or "")
        if status == "failed":
            errors = (batch.get("errors") or {}).get("data") or []
            detail = "; ".join(str(e.get("message") or e.get("code") or "") for e in errors if isinstance(e, dict))
            raise ProviderError("bad_request", f"{self.name}: batch {batch_id} failed: {detail or 'no reason given'}")
        if _BATCH_STATUS.get(status) != "ended":
            raise ProviderError("bad_request", f"{self.name}: batch {batch_id} has not ended ({status})")
        lines: list[BatchLine] = []
        for file_id in (batch.get("output_file_id"), batch.get("error_file_id")):
            if file_id:
                response = await self._transport.get(f"{self._base}/files/{file_id}/content", self._auth)
                raise_for_error(response)
                lines.extend(read_batch_line(line, self.name) for line in jsonl(response.body, self.name))
        return lines

    async def cancel_batch(self, batch_id: str) -> None:
        raise_for_error(await self._transport.post(f"{self._base}/batches/{batch_id}/cancel", self._auth, b""))

    async def _batch(self, batch_id: str) -> dict:
        return self._json(await self._transport.get(f"{self._base}/batches/{batch_id}", self._auth))

    def _json(self, response: HttpResponse) -> dict:
        return answer_json(response, self.name, openai_rate_limits(response.headers))

    async def close(self) -> None:
        await self._transport.close()


def batch_file_form(boundary: str, content: bytes) -> bytes:
    """The multipart/form-data body that uploads `content` as a batch input file."""
    return b"".join(
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'.encode(),
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="batch.jsonl"\r\n'.encode(),
            b"Content-Type: application/jsonl\r\n\r\n",
            content,
            f"\r\n--{boundary}--\r\n".encode(),
        )
    )


def object_id(data: dict, what: str) -> str:
    """The `id` of an API object (a file, a batch); ProviderError("server") when it has none."""
    if not data.get("id"):
        raise ProviderError("server", f"{what}: the answer names no id: {str(data)[:200]}")
    return str(data["id"])


def read_batch_line(line: dict, what: str) -> BatchLine:
    """A line of a batch's output or error file: its answer (read as a synchronous answer, or the error its
    status gives), or the error of a request the batch did not answer (expired, cancelled, timed out)."""
    custom_id = str(line.get("custom_id") or "")
    response = line.get("response")
    if isinstance(response, dict):
        return answered(custom_id, lambda: batch_completion(response, what))
    error = line.get("error")
    error = error if isinstance(error, dict) else {}
    code, message = str(error.get("code") or ""), str(error.get("message") or "")
    return not_answered(custom_id, _LINE_ERRORS.get(code, "server"), f"{what}: {code or 'error'}: {message}")


def batch_completion(response: dict, what: str) -> Completion:
    """A batch line's `response` (status_code, request_id, body) as a Completion, or the ProviderError its
    status and body make on a synchronous call."""
    status, body = int(response.get("status_code") or 0), response.get("body")
    if not 200 <= status < 300:
        error_type, code, message = error_fields(body)
        raise http_error(status, error_type, code, message, None, None)
    if not isinstance(body, dict):
        raise ProviderError("server", f"{what}: a batch line's answer is not a JSON object: {str(body)[:200]}")
    request_id = str(response.get("request_id") or body.get("id") or "")
    return read_completion(body, what, request_id=request_id, latency_ms=0.0)


def sampling_fields(sampling: Sampling, api_version: str = "") -> tuple[dict[str, Any], list[str]]:
    """The generation settings as Chat Completions fields, and the ones left out. OpenAI and the compat
    servers (vLLM, Ollama, Together, Groq) take all four under OpenAI's names: none is left out (and the
    API has no version that changes this: `api_version` is not used)."""
    return sampling.settings(), []


def output_fields(request: CompletionRequest, native_schema: bool) -> tuple[dict[str, Any], str]:
    """The `response_format` a request's JSON answer takes, and the instruction the messages need for it
    ("" for none): the job's schema natively where the model takes one (`native_schema`, its json_schema
    capability), else JSON mode, which needs the word JSON in a message, with the schema in the instructions."""
    schema = request.schema
    if schema is not None and native_schema:
        json_schema = {"name": schema.name, "schema": schema.schema, "strict": schema.strict}
        return {"response_format": {"type": "json_schema", "json_schema": json_schema}}, ""
    if not request.json_output:
        return {}, ""
    json_mode = {"response_format": {"type": "json_object"}}
    if schema is not None:
        return json_mode, SCHEMA_INSTRUCTION.format(schema=msgspec.json.encode(schema.schema).decode())
    if any("json" in m.text().lower() for m in request.messages):
        return json_mode, ""
    return json_mode, JSON_INSTRUCTION


def tool_fields(request: CompletionRequest, compat: Compat) -> tuple[dict[str, Any], list[str]]:
    """The request's `tools` and `tool_choice` as a server of `compat` takes them, and what it leaves out.
    A server that ignores `tool_choice` (Ollama) gets "none" as no tools at all, which is what it asks, and
    "auto" as nothing (its own behaviour); "required" or a named tool cannot be asked: left out and named."""
    if not request.tools:
        return {}, []
    choice = request.tool_choice
    if compat.tool_choice or choice is None:
        fields: dict[str, Any] = {"tools": [_tool(tool) for tool in request.tools]}
        if choice is not None:
            fields["tool_choice"] = (
                {"type": "function", "function": {"name": choice.name}}
                if isinstance(choice, ToolChoiceName)
                else choice
            )
        return fields, []
    if choice == "none":
        return {}, []
    return {"tools": [_tool(tool) for tool in request.tools]}, [] if choice == "auto" else ["tool_choice"]


def _tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = tool.parameters
    return {"type": "function", "function": function}


def _tool_call(call: ToolCall) -> dict[str, Any]:
    """A tool call of an assistant message: OpenAI carries its arguments as a JSON string."""
    arguments = msgspec.json.encode(call.arguments).decode()
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}}


def _instruct(messages: list[dict], instruction: str) -> None:
    """Add `instruction` to the system message that leads `messages`, or lead them with one (some servers'
    chat templates take a single system message, first)."""
    if messages and messages[0]["role"] == "system":
        messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{instruction}"}
    else:
        messages.insert(0, {"role": "system", "content": instruction})


def parse_response(response: HttpResponse, latency_ms: float, what: str = "openai") -> Completion:
    """A Chat Completions answer (or error) as a Completion (or ProviderError)."""
    limits = openai_rate_limits(response.headers)
    data = answer_json(response, what, limits)
    request_id = response.headers.get("x-request-id") or str(data.get("id") or "")
    return read_completion(data, what, request_id=request_id, latency_ms=latency_ms, rate_limits=limits)


def answer_json(response: HttpResponse, what: str, limits: RateLimitState | None = None) -> dict:
    """The JSON object of a 2xx answer; else the answer's ProviderError (its kind, retry time and limits)."""
    raise_for_error(response, limits)
    return decode_json(response.body, what)


def raise_for_error(response: HttpResponse, limits: RateLimitState | None = None) -> None:
    """The ProviderError of a non-2xx answer, with its retry time and the limits its headers give."""
    if response.status >= 300:
        error_type, code, error_message = _error_fields(response.body)
        retry = retry_after_from_headers(response.headers, datetime.now(UTC))
        if retry is None and response.status == 429:
            hint = _TRY_AGAIN.search(error_message)  # "Please try again in 579ms."
            retry = parse_duration(hint.group(1)) if hint else None
        raise http_error(response.status, error_type, code, error_message, retry, limits)


def read_completion(
    data: dict, what: str, *, request_id: str, latency_ms: float, rate_limits: RateLimitState | None = None
) -> Completion:
    """A chat completion object (a synchronous answer's body, or a batch line's) as a Completion."""
    choices = data.get("choices") or []
    if not choices:
        raise ProviderError("server", f"{what}: the answer has no choices")
    choice = choices[0]
    message = choice.get("message") or {}
    refusal = message.get("refusal")
    tool_calls, tool_call_error = read_tool_calls(message.get("tool_calls") or [])
    finish: FinishReason = "refusal" if refusal else _FINISH.get(choice.get("finish_reason") or "", "other")
    if finish == "stop" and (tool_calls or tool_call_error):
        finish = "tool_calls"  # a forced call (a named tool_choice) ends with "stop" on OpenAI and vLLM
    usage = data.get("usage") or {}
    details = usage.get("completion_tokens_details") or {}
    return Completion(
        text=message.get("content") or refusal or "",
        finish_reason=finish,
        tool_calls=tool_calls,
        tool_call_error=tool_call_error,
        # prompt_tokens already includes cached tokens; completion_tokens includes reasoning tokens.
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or details.get("reasoning_tokens") or 0),
        # OpenAI caches prefixes by itself and bills no writes: only cache reads are reported.
        cached_input_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
        request_id=request_id,
        latency_ms=latency_ms,
        response_model=str(data.get("model") or ""),
        rate_limits=rate_limits,
    )


def read_tool_calls(calls: list[Any]) -> tuple[tuple[ToolCall, ...], str]:
    """An answer's `message.tool_calls` as ToolCalls (their JSON-string arguments decoded), and why one
    could not be read ("" when all were): a call without a name, or arguments that are not a JSON object."""
    read: list[ToolCall] = []
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            return tuple(read), f"tool call {index} names no function"
        name, raw = str(function["name"]), function.get("arguments")
        try:
            # Some servers send "" for a call without arguments.
            arguments = msgspec.json.decode(raw) if isinstance(raw, str) and raw.strip() else raw or {}
        except msgspec.DecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            return tuple(read), f"the arguments of tool call {name!r} are not a JSON object: {str(raw)[:200]}"
        read.append(ToolCall(id=str(call.get("id") or f"call_{index}"), name=name, arguments=arguments))
    return tuple(read), ""


def _error_fields(body: bytes) -> tuple[str, str, str]:
    """(type, code, message) of an error answer's body."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return "", "", body[:300].decode(errors="replace")
    return error_fields(data)


def error_fields(data: Any) -> tuple[str, str, str]:
    """(type, code, message) from OpenAI's `{"error": {...}}` or vLLM's flat `{"object": "error", ...}`."""
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, str):  # some servers (Ollama) send {"error": "message"}
            return "", "", error
        if not isinstance(error, dict):  # vLLM's flat form: the fields are at the top level
            error = data
        return (
            str(error.get("type") or ""),
            str(error.get("code") or ""),
            str(error.get("message") or error.get("detail") or ""),
        )
    return "", "", str(data)[:300]
