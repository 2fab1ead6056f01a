"""OpenAI Chat Completions, and OpenAI-compatible servers (vLLM, Ollama, Together, Groq)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from worker.config import ModelConfig, ProviderConfig
from worker.errors import ProviderError
from worker.http.transport import HttpResponse, Transport
from worker.providers.base import Completion, CompletionRequest, FinishReason, Sampling, decode_json, http_error
from worker.ratelimit.headers import openai_rate_limits, parse_duration, retry_after_from_headers

_TRY_AGAIN = re.compile(r"try again in ((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)")
_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "content_filter": "refusal"}
# JSON mode (`response_format: json_object`) is refused unless a message asks for JSON in words.
JSON_INSTRUCTION = "Answer with one JSON object only, no other text."
# Servers that take the older `max_tokens` rather than `max_completion_tokens`.
_MAX_TOKENS_FIELD = {
    "": "max_completion_tokens",
    "groq": "max_completion_tokens",
    "vllm": "max_tokens",
    "ollama": "max_tokens",
    "together": "max_tokens",
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
        self._max_tokens_field = _MAX_TOKENS_FIELD[config.compat]
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        self._transport = transport
        self._encoder = msgspec.json.Encoder()

    def request_body(self, request: CompletionRequest) -> dict:
        """The JSON body: only fields every OpenAI-compatible server accepts (Groq rejects `n`, `logprobs`...)."""
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        body = {
            "model": self._models.get(request.model, request.model),
            "messages": messages,
            self._max_tokens_field: request.max_output_tokens,
        }
        if request.json_output:
            body["response_format"] = {"type": "json_object"}
            if not any("json" in m.text().lower() for m in request.messages):
                _instruct(messages, JSON_INSTRUCTION)
        body.update(sampling_fields(request.sampling)[0])
        return body

    async def complete(self, request: CompletionRequest) -> Completion:
        started = time.monotonic()
        response = await self._transport.post(
            self._url, self._headers, self._encoder.encode(self.request_body(request))
        )
        latency = (time.monotonic() - started) * 1000
        return parse_response(response, latency, self.name)

    async def close(self) -> None:
        await self._transport.close()


def sampling_fields(sampling: Sampling, api_version: str = "") -> tuple[dict[str, Any], list[str]]:
    """The generation settings as Chat Completions fields, and the ones left out. OpenAI and the compat
    servers (vLLM, Ollama, Together, Groq) take all four under OpenAI's names: none is left out (and the
    API has no version that changes this: `api_version` is not used)."""
    return sampling.settings(), []


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
    if response.status >= 300:
        error_type, code, error_message = _error_fields(response.body)
        retry = retry_after_from_headers(response.headers, datetime.now(UTC))
        if retry is None and response.status == 429:
            hint = _TRY_AGAIN.search(error_message)  # "Please try again in 579ms."
            retry = parse_duration(hint.group(1)) if hint else None
        raise http_error(response.status, error_type, code, error_message, retry, limits)
    data = decode_json(response.body, what)
    choices = data.get("choices") or []
    if not choices:
        raise ProviderError("server", f"{what}: the answer has no choices")
    choice = choices[0]
    message = choice.get("message") or {}
    refusal = message.get("refusal")
    finish: FinishReason = "refusal" if refusal else _FINISH.get(choice.get("finish_reason") or "", "other")
    usage = data.get("usage") or {}
    details = usage.get("completion_tokens_details") or {}
    return Completion(
        text=message.get("content") or refusal or "",
        finish_reason=finish,
        # prompt_tokens already includes cached tokens; completion_tokens includes reasoning tokens.
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or details.get("reasoning_tokens") or 0),
        # OpenAI caches prefixes by itself and bills no writes: only cache reads are reported.
        cached_input_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
        request_id=response.headers.get("x-request-id") or str(data.get("id") or ""),
        latency_ms=latency_ms,
        response_model=str(data.get("model") or ""),
        rate_limits=limits,
    )


def _error_fields(body: bytes) -> tuple[str, str, str]:
    """(type, code, message) from OpenAI's `{"error": {...}}` or vLLM's flat `{"object": "error", ...}`."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return "", "", body[:300].decode(errors="replace")
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
