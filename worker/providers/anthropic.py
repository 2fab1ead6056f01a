"""Anthropic Messages: `POST {base_url}/v1/messages` with `x-api-key` and `anthropic-version`."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from msgspec.structs import replace

from worker.config import ModelConfig, ProviderConfig
from worker.http.transport import HttpResponse, Transport
from worker.providers.base import Completion, CompletionRequest, FinishReason, Sampling, decode_json, http_error
from worker.ratelimit.headers import anthropic_rate_limits, retry_after_from_headers
from worker.routing.pricing import text_tokens

# The Messages API has no JSON mode: a JSON answer is asked for in the system prompt, and the answer is
# started with "{" (a prefill: the final assistant message, which the model continues).
JSON_INSTRUCTION = "Answer with one JSON object only, no other text."
JSON_PREFILL = "{"

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

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "refusal": "refusal",
}


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
        self._version = config.anthropic_version
        self._headers = {"content-type": "application/json", "anthropic-version": config.anthropic_version}
        self._prompt_cache = config.prompt_cache
        if api_key:
            self._headers["x-api-key"] = api_key
        self._transport = transport
        self._encoder = msgspec.json.Encoder()

    def request_body(self, request: CompletionRequest) -> dict:
        """System messages go to the top-level `system`; the rest stay in order. A JSON answer is asked for
        by an instruction and a prefill (when the conversation ends with the user's turn)."""
        system = [m.text() for m in request.messages if m.role == "system"]
        messages = [{"role": m.role, "content": m.content} for m in request.messages if m.role != "system"]
        if request.json_output:
            system.append(JSON_INSTRUCTION)
            if prefills(request):
                messages.append({"role": "assistant", "content": JSON_PREFILL})
        body: dict = {
            "model": self._models.get(request.model, request.model),
            "max_tokens": request.max_output_tokens,
            "messages": messages,
        }
        if system:
            body["system"] = self.system(system, sum(1 for m in request.messages if m.role == "system"))
        body.update(sampling_fields(request.sampling, self._version)[0])
        return body

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
        completion = parse_response(response, (time.monotonic() - started) * 1000, self.name)
        if prefills(request) and completion.text and completion.finish_reason != "refusal":
            # The answer continues the prefill, which the API does not repeat: the model's whole answer.
            completion = replace(completion, text=JSON_PREFILL + completion.text)
        return completion

    async def close(self) -> None:
        await self._transport.close()


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


def prefills(request: CompletionRequest) -> bool:
    """Whether the call starts the answer with the JSON prefill: a JSON job whose last message is the user's."""
    return request.json_output and bool(request.messages) and request.messages[-1].role == "user"


def parse_response(response: HttpResponse, latency_ms: float, what: str = "anthropic") -> Completion:
    """A Messages answer (or error) as a Completion (or ProviderError)."""
    now = datetime.now(UTC)
    limits = anthropic_rate_limits(response.headers, now)
    if response.status >= 300:
        error_type, message = "", response.body[:300].decode(errors="replace")
        try:
            data = msgspec.json.decode(response.body)
            error = data.get("error") or {}
            error_type, message = str(error.get("type") or ""), str(error.get("message") or message)
        except (msgspec.DecodeError, AttributeError):
            pass
        raise http_error(
            response.status, error_type, "", message, retry_after_from_headers(response.headers, now), limits
        )
    data = decode_json(response.body, what)
    text = "".join(block.get("text", "") for block in data.get("content") or () if block.get("type") == "text")
    usage = data.get("usage") or {}
    # `input_tokens` excludes the cache reads and writes: the whole input is the sum of the three.
    cache_read = int(usage.get("cache_read_input_tokens") or 0)
    cache_write = int(usage.get("cache_creation_input_tokens") or 0)
    return Completion(
        text=text,
        finish_reason=_FINISH.get(data.get("stop_reason") or "", "other"),
        input_tokens=int(usage.get("input_tokens") or 0) + cache_read + cache_write,
        output_tokens=int(usage.get("output_tokens") or 0),
        cached_input_tokens=cache_read,
        cache_write_input_tokens=cache_write,
        request_id=response.headers.get("request-id") or str(data.get("id") or ""),
        latency_ms=latency_ms,
        response_model=str(data.get("model") or ""),
        rate_limits=limits,
    )
