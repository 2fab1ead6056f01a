"""The providers' wire formats as the simulator speaks them: requests in, answers and errors out."""

from __future__ import annotations

import itertools
import math
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from worker.simulator.behaviour import Answer
from worker.simulator.caching import NO_CACHE, CacheUse
from worker.simulator.limits import LimitState

Reply = tuple[int, dict[str, str], bytes]
_json = msgspec.json.Encoder()

_ids = itertools.count()
_prefix = uuid.uuid4().hex[:12]


def _request_id() -> str:
    """24 hex digits, unique in the process: a random prefix and a counter (uuid4 a call cost more than
    the rest of the answer)."""
    return f"{_prefix}{next(_ids) & 0xFFFFFFFFFFFF:012x}"


LIMIT_WORDS = {
    "requests": "requests per min (RPM)",
    "tokens": "tokens per min (TPM)",
    "input_tokens": "input tokens per min",
    "output_tokens": "output tokens per min",
}


def api_key(wire: str, headers: dict[str, str], query: dict[str, str]) -> str:
    """The API key a request carries where its wire API takes it. Anthropic's API takes `x-api-key`; the current
    SDK sends the key as a Bearer token, which it takes too."""
    if wire == "gemini":
        return headers.get("x-goog-api-key") or query.get("key", "")
    bearer = headers.get("authorization", "").removeprefix("Bearer ").strip()
    return (headers.get("x-api-key") or bearer) if wire == "anthropic" else bearer


def go_duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"


def rate_limit_headers(wire: str, limits: list[LimitState]) -> dict[str, str]:
    """The provider's own rate-limit headers for the current state of the limits."""
    headers: dict[str, str] = {}
    if wire in ("openai", "openai_compatible"):
        for state in limits:
            if state.name in ("requests", "tokens"):
                headers[f"x-ratelimit-limit-{state.name}"] = str(state.limit)
                headers[f"x-ratelimit-remaining-{state.name}"] = str(state.remaining)
                headers[f"x-ratelimit-reset-{state.name}"] = go_duration(state.reset_s)
    elif wire == "anthropic":
        now = datetime.now(UTC)
        for state in limits:
            prefix = f"anthropic-ratelimit-{state.name.replace('_', '-')}"
            headers[f"{prefix}-limit"] = str(state.limit)
            headers[f"{prefix}-remaining"] = str(state.remaining)
            headers[f"{prefix}-reset"] = (
                (now + timedelta(seconds=state.reset_s)).isoformat(timespec="seconds").replace("+00:00", "Z")
            )
    return headers


def success(
    wire: str,
    model: str,
    answer: Answer,
    input_tokens: int,
    thinking_tokens: int,
    headers: dict[str, str],
    cache: CacheUse = NO_CACHE,
) -> Reply:
    """A 200 in the wire's shape; `input_tokens` is the whole prompt, `cache` what of it the prompt cache
    served (reported in each wire's own fields, as each counts them)."""
    request_id = _request_id()
    if wire in ("openai", "openai_compatible"):
        refused = answer.finish == "refusal"
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if refused or answer.tool_calls else answer.text,
            "refusal": answer.text if refused else None,
            "annotations": [],
        }
        if answer.tool_calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{request_id}{i:02d}",
                    "type": "function",
                    "function": {"name": call.name, "arguments": _json.encode(call.arguments).decode()},
                }
                for i, call in enumerate(answer.tool_calls)
            ]
        body: dict[str, Any] = {
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": answer.finish if answer.finish in ("length", "tool_calls") else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": input_tokens,
                "completion_tokens": answer.output_tokens + thinking_tokens,
                "total_tokens": input_tokens + answer.output_tokens + thinking_tokens,
                "prompt_tokens_details": {"cached_tokens": cache.read, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": thinking_tokens,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": "fp_simulator",
        }
        headers = headers | {"x-request-id": f"req_{request_id}", "openai-processing-ms": "1"}
    elif wire == "anthropic":
        stop = {"stop": "end_turn", "length": "max_tokens", "refusal": "refusal", "tool_calls": "tool_use"}[
            answer.finish
        ]
        content: list[dict[str, Any]] = [
            {"type": "tool_use", "id": f"toolu_{request_id}{i:02d}", "name": call.name, "input": call.arguments}
            for i, call in enumerate(answer.tool_calls)
        ] or [{"type": "text", "text": answer.text}]
        body = {
            "id": f"msg_{request_id}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                # Anthropic's input_tokens are those after the last cache breakpoint only.
                "input_tokens": input_tokens - cache.read - cache.written,
                "cache_creation_input_tokens": cache.written,
                "cache_read_input_tokens": cache.read,
                "output_tokens": answer.output_tokens + thinking_tokens,
                "service_tier": "standard",
            },
        }
        headers = headers | {"request-id": f"req_{request_id}"}
    else:
        finish = {"stop": "STOP", "length": "MAX_TOKENS", "refusal": "SAFETY", "tool_calls": "STOP"}[answer.finish]
        candidate: dict[str, Any] = {"finishReason": finish, "index": 0}
        if answer.finish != "refusal":
            parts: list[dict[str, Any]] = [
                {"functionCall": {"name": call.name, "args": call.arguments}} for call in answer.tool_calls
            ]
            candidate["content"] = {"parts": parts or [{"text": answer.text}], "role": "model"}
        usage: dict[str, Any] = {
            "promptTokenCount": input_tokens,
            "candidatesTokenCount": answer.output_tokens,
            "totalTokenCount": input_tokens + answer.output_tokens + thinking_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": input_tokens}],
        }
        if thinking_tokens:
            usage["thoughtsTokenCount"] = thinking_tokens
        if cache.read:  # promptTokenCount includes the cached tokens
            usage["cachedContentTokenCount"] = cache.read
            usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cache.read}]
        body = {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": request_id}
    return 200, headers | {"content-type": "application/json"}, _json.encode(body)


def error(
    wire: str,
    flavor: str,
    kind: str,
    model: str,
    detail: str = "",
    retry_after_s: float | None = None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
    code: str | None = None,
) -> Reply:
    """An error in the wire's own status, body and headers (`param`, `code`: an OpenAI bad request's)."""
    headers = dict(headers or {})
    if wire == "anthropic":
        status, body = _anthropic_error(kind, model, detail)
        if retry_after_s is not None:
            headers["retry-after"] = str(max(1, math.ceil(retry_after_s)))
    elif wire == "gemini":
        status, body = _gemini_error(kind, model, detail, retry_after_s)
    else:
        status, body = _openai_error(kind, model, detail, flavor)
        if (param is not None or code is not None) and "error" in body:
            body["error"] |= {"param": param, "code": code}
        if retry_after_s is not None:
            headers["retry-after"] = str(max(1, math.ceil(retry_after_s)))
            headers["retry-after-ms"] = str(max(1, math.ceil(retry_after_s * 1000)))
    headers["content-type"] = "application/json"
    return status, headers, _json.encode(body)


def _openai_error(kind: str, model: str, detail: str, flavor: str) -> tuple[int, dict]:
    table = {
        "rate_limited": (429, detail or f"Rate limit reached for {model}.", "requests", "rate_limit_exceeded"),
        "quota": (
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            "insufficient_quota",
        ),
        "server": (
            500,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        ),
        "unavailable": (503, "The engine is currently overloaded, please try again later.", "server_error", None),
        "overloaded": (503, "The engine is currently overloaded, please try again later.", "server_error", None),
        "timeout": (504, "Gateway timeout.", "server_error", None),
        "context_too_long": (400, detail, "invalid_request_error", "context_length_exceeded"),
        "auth": (
            401,
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        ),
        "not_found": (
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        ),
        "bad_request": (400, detail or "Invalid request.", "invalid_request_error", None),
    }
    status, message, error_type, code = table[kind]
    if kind == "rate_limited" and detail.startswith("tokens:"):
        error_type, message = "tokens", detail[len("tokens:") :]
    elif kind == "rate_limited":
        message = detail.removeprefix("requests:") or message
    if flavor == "vllm":
        vllm_type = {
            400: "BadRequestError",
            401: "AuthenticationError",
            404: "NotFoundError",
            429: "RateLimitError",
        }.get(status, "InternalServerError")
        return status, {"object": "error", "message": message, "type": vllm_type, "param": None, "code": status}
    return status, {
        "error": {
            "message": message,
            "type": error_type,
            "param": "messages" if kind == "context_too_long" else None,
            "code": code,
        }
    }


def _anthropic_error(kind: str, model: str, detail: str) -> tuple[int, dict]:
    table = {
        "rate_limited": (
            429,
            "rate_limit_error",
            detail.split(":", 1)[-1] if detail else "This request would exceed your organization's rate limit.",
        ),
        "quota": (
            400,
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or "
            "purchase credits.",
        ),
        "server": (500, "api_error", "Internal server error"),
        "unavailable": (503, "api_error", "Service unavailable"),
        "overloaded": (529, "overloaded_error", "Overloaded"),
        "timeout": (504, "timeout_error", "Request timed out"),
        "context_too_long": (400, "invalid_request_error", detail),
        "auth": (401, "authentication_error", "invalid x-api-key"),
        "not_found": (404, "not_found_error", f"model: {model}"),
        "bad_request": (400, "invalid_request_error", detail or "Invalid request"),
    }
    status, error_type, message = table[kind]
    return status, {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": f"req_{uuid.uuid4().hex[:24]}",
    }


def _gemini_error(kind: str, model: str, detail: str, retry_after_s: float | None) -> tuple[int, dict]:
    table = {
        "rate_limited": (
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota. Please migrate to a paid tier or retry later.",
        ),
        "quota": (
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
        ),
        "server": (
            500,
            "INTERNAL",
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        ),
        "unavailable": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
        "overloaded": (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
        "timeout": (504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
        "context_too_long": (400, "INVALID_ARGUMENT", detail),
        "auth": (
            403,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key "
            "or other form of API consumer identity to call this API.",
        ),
        "not_found": (
            404,
            "NOT_FOUND",
            f"models/{model} is not found for API version v1beta, or is not supported for generateContent.",
        ),
        "bad_request": (400, "INVALID_ARGUMENT", detail or "Invalid JSON payload received."),
    }
    status, state, message = table[kind]
    error: dict[str, Any] = {"code": status, "message": message, "status": state}
    if kind == "rate_limited":
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                        "quotaDimensions": {"location": "global", "model": model},
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [
                    {
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": f"{round(retry_after_s if retry_after_s is not None else 1.0, 3):g}s",
            },
        ]
    return status, {"error": error}
