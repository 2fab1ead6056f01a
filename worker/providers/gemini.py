"""Google Gemini `generateContent`: `POST {base_url}/models/{model}:generateContent` with `x-goog-api-key`."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from worker.config import ModelConfig, ProviderConfig
from worker.http.transport import HttpResponse, Transport
from worker.providers.base import Completion, CompletionRequest, FinishReason, Sampling, decode_json, http_error
from worker.ratelimit.headers import gemini_retry_delay, retry_after_from_headers

# generationConfig's names for the job's generation settings.
_SAMPLING_NAMES = {"temperature": "temperature", "top_p": "topP", "stop": "stopSequences", "seed": "seed"}
_REFUSED = {"SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY"}


def _finish(reason: str) -> FinishReason:
    if reason == "STOP":
        return "stop"
    if reason == "MAX_TOKENS":
        return "length"
    return "refusal" if reason in _REFUSED else "other"


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
        self._base = base
        self._headers = {"content-type": "application/json"}
        if api_key:
            self._headers["x-goog-api-key"] = api_key
        self._transport = transport
        self._encoder = msgspec.json.Encoder()

    def request_body(self, request: CompletionRequest) -> dict:
        """`contents` with roles user/model, system messages as `systemInstruction`."""
        system = [m.text() for m in request.messages if m.role == "system"]
        body: dict = {
            "contents": [
                {"role": "model" if m.role == "assistant" else "user", "parts": [{"text": m.content}]}
                for m in request.messages
                if m.role != "system"
            ],
            "generationConfig": {"maxOutputTokens": request.max_output_tokens},
        }
        if system:
            body["systemInstruction"] = {"parts": [{"text": text} for text in system]}
        if request.json_output:  # JSON mode: the answer is constrained to JSON
            body["generationConfig"]["responseMimeType"] = "application/json"
        body["generationConfig"].update(sampling_fields(request.sampling)[0])
        return body

    async def complete(self, request: CompletionRequest) -> Completion:
        url = self._urls.get(request.model) or f"{self._base}/models/{request.model}:generateContent"
        started = time.monotonic()
        response = await self._transport.post(url, self._headers, self._encoder.encode(self.request_body(request)))
        return parse_response(response, (time.monotonic() - started) * 1000, self.name)

    async def close(self) -> None:
        await self._transport.close()


def sampling_fields(sampling: Sampling, api_version: str = "") -> tuple[dict[str, Any], list[str]]:
    """The generation settings as `generationConfig` fields, and the ones left out (none: Gemini takes all
    four, temperature 0-2 and up to 5 stop sequences, in every API version: `api_version` is not used)."""
    return {_SAMPLING_NAMES[name]: value for name, value in sampling.settings().items()}, []


def parse_response(response: HttpResponse, latency_ms: float, what: str = "gemini") -> Completion:
    """A generateContent answer (or error) as a Completion (or ProviderError)."""
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
    data = decode_json(response.body, what)
    usage = data.get("usageMetadata") or {}
    candidates = data.get("candidates") or []
    finish: FinishReason
    if not candidates:
        block = (data.get("promptFeedback") or {}).get("blockReason") or ""
        text, finish = "", ("refusal" if block else "other")
    else:
        candidate = candidates[0]
        parts = (candidate.get("content") or {}).get("parts") or ()
        text = "".join(p.get("text", "") for p in parts if not p.get("thought"))
        finish = _finish(candidate.get("finishReason") or "")
    return Completion(
        text=text,
        finish_reason=finish,
        # promptTokenCount includes cached content; thinking tokens count as output.
        input_tokens=int(usage.get("promptTokenCount") or 0) + int(usage.get("toolUsePromptTokenCount") or 0),
        output_tokens=int(usage.get("candidatesTokenCount") or 0) + int(usage.get("thoughtsTokenCount") or 0),
        # Implicit (and explicit) cache hits, part of promptTokenCount; Gemini bills no cache writes.
        cached_input_tokens=int(usage.get("cachedContentTokenCount") or 0),
        request_id=str(data.get("responseId") or ""),
        latency_ms=latency_ms,
        response_model=str(data.get("modelVersion") or ""),
    )
