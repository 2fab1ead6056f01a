"""Google Gemini `generateContent`: `POST {base_url}/models/{model}:generateContent` with `x-goog-api-key`."""

from __future__ import annotations

import posixpath
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, NoReturn
from urllib.parse import urlsplit

import msgspec

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
from worker.providers.batches import CANCELLED, EXPIRED, answered, check_batch, check_size, not_answered
from worker.ratelimit.headers import gemini_retry_delay, retry_after_from_headers

# generationConfig's names for the job's generation settings.
_SAMPLING_NAMES = {"temperature": "temperature", "top_p": "topP", "stop": "stopSequences", "seed": "seed"}
# Finish reasons of an answer stopped by a filter (RECITATION too: it flags output that reproduces training
# data, a filter on the answer rather than the model declining the request).
_FILTERED = {
    "SAFETY",
    "RECITATION",
    "PROHIBITED_CONTENT",
    "BLOCKLIST",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
}
# Finish reasons of a function call the answer holds but that cannot be used: a format failure of the attempt.
_BAD_TOOL_CALL = {
    "MALFORMED_FUNCTION_CALL": "the model's function call is malformed",
    "UNEXPECTED_TOOL_CALL": "the model called a function the request does not enable",
}
# The JSON Schema keywords that `responseJsonSchema` and `parametersJsonSchema` take (ai.google.dev structured
# output; GenerationConfig.responseJsonSchema in the API reference); any other is dropped.
_SCHEMA_KEYWORDS = frozenset(
    {
        "$id",
        "$defs",
        "$ref",
        "$anchor",
        "type",
        "format",
        "title",
        "description",
        "enum",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "minimum",
        "maximum",
        "anyOf",
        "properties",
        "additionalProperties",
        "required",
        "propertyOrdering",
    }
)
# Function calling and a JSON response MIME type cannot be combined (Gemini 2.x answers 400 "Function calling
# with a response mime type: 'application/json' is unsupported"): a JSON answer beside tools is asked for so.
JSON_INSTRUCTION = "Answer with one JSON object only (when you answer with text rather than a function call)."
# An image URL's media type, by its extension (Gemini's fileData needs one); image/jpeg when it has none of these.
_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".gif": "image/gif",
}
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
# Batch Mode: inline requests up to this size ("20 MB"; larger batches go through an uploaded file).
MAX_INLINE_BYTES = 20_000_000
_BATCH_STATUS: dict[str, BatchStatus] = {
    "PENDING": "running",
    "RUNNING": "running",
    "SUCCEEDED": "ended",
    "FAILED": "ended",
    "CANCELLED": "ended",
    "EXPIRED": "ended",
}
# The submitted batches whose custom_ids are kept, the oldest forgotten first.
MAX_REMEMBERED_BATCHES = 10_000
# The batch states whose requests without a response were not reached.
_NOT_REACHED = {"CANCELLED": CANCELLED, "EXPIRED": EXPIRED}
# google.rpc.Code: the HTTP status and name of each (google.rpc.code.proto's mapping).
_RPC_CODES: dict[Any, tuple[int, str]] = {
    1: (499, "CANCELLED"),
    2: (500, "UNKNOWN"),
    3: (400, "INVALID_ARGUMENT"),
    4: (504, "DEADLINE_EXCEEDED"),
    5: (404, "NOT_FOUND"),
    7: (403, "PERMISSION_DENIED"),
    8: (429, "RESOURCE_EXHAUSTED"),
    9: (400, "FAILED_PRECONDITION"),
    13: (500, "INTERNAL"),
    14: (503, "UNAVAILABLE"),
    16: (401, "UNAUTHENTICATED"),
}


def _finish(reason: str, tool_calls: bool) -> FinishReason:
    if reason == "STOP":
        return "tool_calls" if tool_calls else "stop"
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if reason in _BAD_TOOL_CALL else "other"


class GeminiProvider:
    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        models: dict[str, ModelConfig],
        api_key: str | None,
        transport: Transport,
    ) -> None:
        self.name = name
        base = config.base_url.rstrip("/")
        self._urls = {m: f"{base}/models/{c.api_model or m}:generateContent" for m, c in models.items()}
        self._api_models = {m: c.api_model or m for m, c in models.items()}
        # The custom_ids of each batch submitted (the oldest forgotten first): a cancelled or expired batch has
        # no response for the requests it did not reach, and does not name them.
        self._keys: dict[str, list[str]] = {}
        self._base = base
        # The models that take a schema natively (`responseJsonSchema`); the others get JSON mode with the schema
        # in the instructions.
        self._native_schema = {m for m, c in models.items() if "json_schema" in c.capabilities}
        # The batch API's GETs and body-less POSTs: the key alone.
        self._get_headers = {"x-goog-api-key": api_key} if api_key else {}
        self._headers = {"content-type": "application/json"} | self._get_headers
        self._transport = transport
        self._encoder = msgspec.json.Encoder()

    def request_body(self, request: CompletionRequest) -> dict:
        """`contents` with roles user/model, system messages as `systemInstruction`, the schema as
        `responseJsonSchema`, tools as `functionDeclarations` and the tool choice as `toolConfig`."""
        system = [m.text() for m in request.messages if m.role == "system"]
        config: dict[str, Any] = {"maxOutputTokens": request.max_output_tokens}
        body: dict = {"contents": contents(request.messages), "generationConfig": config}
        native = request.model in self._native_schema
        if request.json_output and request.tools:
            system.append(json_instruction(request))
        elif request.json_output:  # the answer is constrained to JSON, and to the schema where the model takes one
            config["responseMimeType"] = "application/json"
            if request.schema is not None and native:
                config["responseJsonSchema"] = gemini_schema(request.schema.schema)
            elif request.schema is not None:
                system.append(json_instruction(request))
        if system:
            body["systemInstruction"] = {"parts": [{"text": text} for text in system]}
        config.update(sampling_fields(request.sampling)[0])
        if request.tools:
            body["tools"] = [{"functionDeclarations": [function_declaration(tool) for tool in request.tools]}]
        if request.tool_choice is not None:
            body["toolConfig"] = {"functionCallingConfig": function_calling_config(request.tool_choice)}
        return body

    async def complete(self, request: CompletionRequest) -> Completion:
        url = self._urls.get(request.model) or f"{self._base}/models/{request.model}:generateContent"
        started = time.monotonic()
        response = await self._transport.post(url, self._headers, self._encoder.encode(self.request_body(request)))
        return parse_response(response, (time.monotonic() - started) * 1000, self.name)

    async def submit_batch(self, model: str, requests: list[BatchRequest]) -> str:
        """Create a batch of inline requests (each the synchronous call's body, `metadata.key` its custom_id);
        its id, the name the API gives it (`batches/...`)."""
        check_batch(self.name, model, requests, None)
        inlined = [{"request": self.request_body(r.request), "metadata": {"key": r.custom_id}} for r in requests]
        batch = {"displayName": f"llm-router {model}", "inputConfig": {"requests": {"requests": inlined}}}
        body = self._encoder.encode({"batch": batch})
        check_size(self.name, len(body), MAX_INLINE_BYTES)
        url = f"{self._base}/models/{self._api_models.get(model, model)}:batchGenerateContent"
        operation = answer_json(await self._transport.post(url, self._headers, body), self.name)
        if not operation.get("name"):
            raise ProviderError("server", f"{self.name}: the batch created has no name: {str(operation)[:200]}")
        batch_id = str(operation["name"])
        self._keys[batch_id] = [r.custom_id for r in requests]
        while len(self._keys) > MAX_REMEMBERED_BATCHES:
            del self._keys[next(iter(self._keys))]
        return batch_id

    async def batch_state(self, batch_id: str) -> BatchState:
        state = batch_job_state(await self._batch(batch_id))
        return BatchState(status=_BATCH_STATUS.get(state, "running"), provider_status=state)

    async def batch_results(self, batch_id: str) -> list[BatchLine]:
        """The batch's inlined responses, each read as a synchronous answer (or its error), and for a cancelled
        or expired batch its requests without a response. ProviderError("bad_request") for a batch that failed
        as a whole or has not ended."""
        batch = await self._batch(batch_id)
        state = batch_job_state(batch)
        if state == "FAILED" or _BATCH_STATUS.get(state) != "ended":
            detail = (batch.get("error") or {}).get("message") or state
            raise ProviderError("bad_request", f"{self.name}: batch {batch_id} has not ended with results: {detail}")
        lines = [self.batch_line(inlined, state) for inlined in _inlined_responses(batch)]
        if state in _NOT_REACHED:
            answered_ids = {line.custom_id for line in lines}
            lines.extend(
                not_answered(key, _NOT_REACHED[state], f"{self.name}: the batch ended {state.lower()}")
                for key in self._keys.get(batch_id, ())
                if key not in answered_ids
            )
        return lines

    def batch_line(self, inlined: dict, state: str) -> BatchLine:
        """An inlined response: its `response` read as a synchronous answer, or its `error` (a Status) read as
        the same error's HTTP answer; in an expired batch, a request that ran out of time expired."""
        custom_id = str((inlined.get("metadata") or {}).get("key") or "")
        response, error = inlined.get("response"), inlined.get("error")
        if isinstance(response, dict):
            return answered(custom_id, lambda: read_completion(response, 0.0))
        status = error if isinstance(error, dict) else {}
        if state == "EXPIRED" and _status_of(status)[1] == "DEADLINE_EXCEEDED":
            return not_answered(custom_id, EXPIRED, f"{self.name}: {status.get('message') or 'the batch expired'}")
        return answered(custom_id, lambda: raise_status(status))

    async def cancel_batch(self, batch_id: str) -> None:
        raise_for_error(await self._transport.post(f"{self._base}/{batch_id}:cancel", self._get_headers, b""))

    async def _batch(self, batch_id: str) -> dict:
        return answer_json(await self._transport.get(f"{self._base}/{batch_id}", self._get_headers), self.name)

    async def close(self) -> None:
        await self._transport.close()


def batch_job_state(batch: dict) -> str:
    """A batch's state without its prefix (PENDING, RUNNING, SUCCEEDED...): the API names it BATCH_STATE_*
    in the operation's `metadata` (the SDK, the docs and Vertex say JOB_STATE_*)."""
    state = str((batch.get("metadata") or batch).get("state") or "")
    return state.removeprefix("BATCH_STATE_").removeprefix("JOB_STATE_")


def _inlined_responses(batch: dict) -> list[dict]:
    """The inlined responses of a batch: in the operation's `response` once done, or its metadata's `output`."""
    for output in (batch.get("response"), (batch.get("metadata") or {}).get("output"), batch.get("output")):
        if isinstance(output, dict):
            responses = (output.get("inlinedResponses") or {}).get("inlinedResponses")
            if isinstance(responses, list):
                return [r for r in responses if isinstance(r, dict)]
    return []


def raise_status(status: dict) -> NoReturn:
    """The ProviderError of a batch line's error, as the same error's HTTP answer would give it."""
    http_status, name = _status_of(status)
    raise http_error(http_status, name, "", str(status.get("message") or ""), None, None)


def _status_of(status: dict) -> tuple[int, str]:
    """A line error's HTTP status and status name: its `code` is a google.rpc.Code (a Status) or an HTTP
    status (an error body's form), its `status` the name where given."""
    code = status.get("code")
    http_status, name = _RPC_CODES.get(code, (code if isinstance(code, int) and 400 <= code < 600 else 500, ""))
    return http_status, str(status.get("status") or name)


def sampling_fields(sampling: Sampling, api_version: str = "") -> tuple[dict[str, Any], list[str]]:
    """The generation settings as `generationConfig` fields, and the ones left out (none: Gemini takes all
    four, temperature 0-2 and up to 5 stop sequences, in every API version: `api_version` is not used)."""
    return {_SAMPLING_NAMES[name]: value for name, value in sampling.settings().items()}, []


def json_instruction(request: CompletionRequest) -> str:
    """The instruction that asks for a JSON answer, with its schema, where the request cannot ask for it (beside
    tools, or a schema to a model without the `json_schema` capability)."""
    if request.schema is None:
        return JSON_INSTRUCTION
    schema = msgspec.json.encode(request.schema.schema).decode()
    return f"{JSON_INSTRUCTION} It must be valid under this JSON Schema: {schema}"


def gemini_schema(schema: Any) -> Any:
    """A JSON Schema as `responseJsonSchema` and `parametersJsonSchema` take it: the keywords they do not take
    are dropped (the worker still validates the answer against the whole schema), `oneOf` is sent as `anyOf`
    (the API reads it so), `const` as a one-value `enum`, and beside a `$ref` only `$` keywords are kept."""
    if not isinstance(schema, dict):
        return schema  # a boolean schema
    kept: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "oneOf" and "anyOf" not in schema:
            key = "anyOf"
        elif key == "const" and "enum" not in schema:
            key, value = "enum", [value]
        if key not in _SCHEMA_KEYWORDS or ("$ref" in schema and not key.startswith("$")):
            continue
        if key == "enum" and not all(isinstance(v, int | float | str) and not isinstance(v, bool) for v in value):
            continue  # the API takes enums of strings and numbers
        kept[key] = _subschemas(key, value)
    return kept


def _subschemas(key: str, value: Any) -> Any:
    """The value of keyword `key` with the schemas it holds converted."""
    if key in ("properties", "$defs") and isinstance(value, dict):
        return {name: gemini_schema(sub) for name, sub in value.items()}
    if key in ("items", "additionalProperties"):
        return gemini_schema(value)
    if key in ("anyOf", "prefixItems") and isinstance(value, list):
        return [gemini_schema(sub) for sub in value]
    return value


def function_declaration(tool: Tool) -> dict[str, Any]:
    """A tool as a `functionDeclarations` entry, its parameters as JSON Schema (`parametersJsonSchema`)."""
    declaration: dict[str, Any] = {"name": tool.name}
    if tool.description:
        declaration["description"] = tool.description
    declaration["parametersJsonSchema"] = gemini_schema(tool.parameters)
    return declaration


def function_calling_config(choice: str | ToolChoiceName) -> dict[str, Any]:
    """`tool_choice` as `toolConfig.functionCallingConfig`: AUTO, NONE, ANY, or ANY of the one named function."""
    if isinstance(choice, ToolChoiceName):
        return {"mode": "ANY", "allowedFunctionNames": [choice.name]}
    return {"mode": _TOOL_MODES[choice]}


def contents(messages: Iterable[ChatMessage]) -> list[dict[str, Any]]:
    """The conversation as `contents`: the assistant's turns as role `model` (its tool calls as
    `functionCall` parts), tool results as `functionResponse` parts of a user turn (consecutive results in
    one turn, as the answers to one turn's parallel calls), system messages left to `systemInstruction`."""
    names: dict[str, str] = {}  # a tool call's id -> its function's name, as of the latest call with that id
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        if message.role == "tool":
            part = {"functionResponse": function_response(message, names)}
            last = turns[-1] if turns else None
            if last is not None and last["role"] == "user" and all("functionResponse" in p for p in last["parts"]):
                last["parts"].append(part)
            else:
                turns.append({"role": "user", "parts": [part]})
            continue
        for call in message.tool_calls or ():
            names[call.id] = call.name
        turns.append({"role": "model" if message.role == "assistant" else "user", "parts": list(parts(message))})
    return turns


def parts(message: ChatMessage) -> Iterator[dict[str, Any]]:
    """A user or assistant message's parts: text, images (`inlineData` or `fileData`), function calls."""
    if isinstance(message.content, str):
        if message.content or not message.tool_calls:
            yield {"text": message.content}
    else:
        for part in message.content:
            yield {"text": part.text} if isinstance(part, TextPart) else image_part(part)
    for call in message.tool_calls or ():
        yield {"functionCall": {"id": call.id, "name": call.name, "args": call.arguments}}


def image_part(image: ImagePart) -> dict[str, Any]:
    """An image as `inlineData` (base64 data) or `fileData` (a URL, its media type guessed from its extension)."""
    if image.data is not None:
        return {"inlineData": {"mimeType": image.media_type, "data": image.data}}
    extension = posixpath.splitext(urlsplit(image.url or "").path)[1].lower()
    return {"fileData": {"mimeType": _IMAGE_TYPES.get(extension, "image/jpeg"), "fileUri": image.url}}


def function_response(message: ChatMessage, names: dict[str, str]) -> dict[str, Any]:
    """A tool message as `functionResponse`: Gemini needs the function's name, found from the earlier call
    with the message's `tool_call_id`; the result is its JSON object, or the text under `output` (the key
    the API reads as the function's output)."""
    call_id = message.tool_call_id or ""
    name = names.get(call_id)
    if name is None:
        raise ProviderError("bad_request", f"gemini: no earlier tool call has the id {call_id!r} a tool result answers")
    text = message.text()
    try:
        result = msgspec.json.decode(text)
    except msgspec.DecodeError:
        result = None
    response = result if isinstance(result, dict) else {"output": text}
    return {"id": call_id, "name": name, "response": response}


def tool_calls(parts: Iterable[dict[str, Any]]) -> tuple[tuple[ToolCall, ...], str]:
    """The answer's `functionCall` parts as tool calls (the part's id, else `call_<n>`), and why one could not be
    read ("" when every one could)."""
    calls: list[ToolCall] = []
    error = ""
    for number, call in enumerate((p["functionCall"] for p in parts if isinstance(p.get("functionCall"), dict)), 1):
        name, arguments = call.get("name"), call.get("args", {})  # no args: a function without parameters
        if not isinstance(name, str) or not name:
            error = error or f"function call {number} has no name"
        elif not isinstance(arguments, dict):
            error = error or f"the arguments of the call of {name!r} are not a JSON object"
        else:
            calls.append(ToolCall(id=str(call.get("id") or f"call_{number}"), name=name, arguments=arguments))
    return tuple(calls), error


def parse_response(response: HttpResponse, latency_ms: float, what: str = "gemini") -> Completion:
    """A generateContent answer (or error) as a Completion (or ProviderError)."""
    return read_completion(answer_json(response, what), latency_ms)


def answer_json(response: HttpResponse, what: str) -> dict:
    """The JSON object of a 2xx answer; else the answer's ProviderError (its kind and retry time)."""
    raise_for_error(response)
    return decode_json(response.body, what)


def raise_for_error(response: HttpResponse) -> None:
    """The ProviderError of a non-2xx answer, with the retry time its error details or headers give."""
    if response.status >= 300:
        status, message, retry = "", response.body[:300].decode(errors="replace"), None
        try:
            error = msgspec.json.decode(response.body).get("error") or {}
            status, message = str(error.get("status") or ""), str(error.get("message") or message)
            retry = gemini_retry_delay(error)
        except (msgspec.DecodeError, AttributeError):
            pass
        if retry is None:
            retry = retry_after_from_headers(response.headers, datetime.now(UTC))
        raise http_error(response.status, status, "", message, retry, None)


def read_completion(data: dict, latency_ms: float) -> Completion:
    """A GenerateContentResponse (a synchronous answer's body, or a batch's inlined response) as a Completion."""
    usage = data.get("usageMetadata") or {}
    candidates = data.get("candidates") or []
    finish: FinishReason
    calls: tuple[ToolCall, ...] = ()
    call_error = ""
    if not candidates:  # the prompt was blocked (promptFeedback.blockReason) by a filter
        block = (data.get("promptFeedback") or {}).get("blockReason") or ""
        text, finish = "", ("content_filter" if block else "other")
    else:
        candidate = candidates[0]
        parts = (candidate.get("content") or {}).get("parts") or ()
        text = "".join(p.get("text", "") for p in parts if not p.get("thought"))
        calls, call_error = tool_calls(parts)
        reason = candidate.get("finishReason") or ""
        if reason in _BAD_TOOL_CALL and not call_error:
            detail = candidate.get("finishMessage")
            call_error = f"{_BAD_TOOL_CALL[reason]} ({reason})" + (f" {detail}" if detail else "")
        finish = _finish(reason, bool(calls) or bool(call_error))
    return Completion(
        text=text,
        finish_reason=finish,
        tool_calls=calls,
        tool_call_error=call_error,
        # promptTokenCount includes cached content; thinking tokens count as output.
        input_tokens=int(usage.get("promptTokenCount") or 0) + int(usage.get("toolUsePromptTokenCount") or 0),
        output_tokens=int(usage.get("candidatesTokenCount") or 0) + int(usage.get("thoughtsTokenCount") or 0),
        # Implicit (and explicit) cache hits, part of promptTokenCount; Gemini bills no cache writes.
        cached_input_tokens=int(usage.get("cachedContentTokenCount") or 0),
        request_id=str(data.get("responseId") or ""),
        latency_ms=latency_ms,
        response_model=str(data.get("modelVersion") or ""),
    )
