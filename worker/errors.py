"""Error kinds, how a provider's HTTP error maps to one, and what the attempt loop does with each.

Everything that decides an error's kind is here, so adapters only extract the status, the error
type/code and message from their wire format and call `classify_http_error`.
"""

from __future__ import annotations

from enum import Enum


class Disposition(Enum):
    """What a failed attempt leads to."""

    RETRY = "retry"  # transient: the same model again, after a backoff
    ESCALATE = "escalate"  # capability: the next model of the plan
    FAIL = "fail"  # the job cannot succeed on this provider (quota, auth, bad request)


TRANSIENT = frozenset({"rate_limited", "overloaded", "server", "timeout"})
# format_failed: the answer is not the JSON the job asked for; verification_failed: it is, or the job asked
# for none, and a check found it wrong. Only the second is evidence about the model's accuracy.
CAPABILITY = frozenset(
    {"verification_failed", "format_failed", "truncated", "refused", "empty_output", "context_too_long"}
)
FATAL = frozenset({"quota", "auth", "bad_request"})


def disposition(kind: str) -> Disposition:
    """The one place that maps an error kind to a decision; unknown kinds escalate."""
    if kind in TRANSIENT:
        return Disposition.RETRY
    if kind in FATAL:
        return Disposition.FAIL
    return Disposition.ESCALATE  # CAPABILITY, and any kind not named here


class ProviderError(Exception):
    """A provider call failed with an error kind from this module."""

    def __init__(
        self,
        kind: str,
        message: str,
        retry_after_s: float | None = None,
        status: int | None = None,
        rate_limits: object | None = None,
        connect_failed: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s
        self.status = status
        self.rate_limits = rate_limits
        # No connection could be made (refused, unknown host): the provider is unreachable, not failing.
        self.connect_failed = connect_failed


_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "prompt is too long",
    "maximum context length",
    "context length",
    "exceeds the maximum number of tokens",
    "input token count",
    "too many tokens",
)
_AUTH_MARKERS = ("api key not valid", "api_key_invalid", "invalid api key", "invalid x-api-key", "incorrect api key")


def classify_http_error(
    status: int, error_type: str = "", code: str = "", message: str = "", retry_hint: bool = False
) -> str:
    """The error kind of a provider's non-2xx answer, from its status, error type/code and message.

    `error_type` and `code` are the provider's own (OpenAI `type`/`code`, Anthropic `error.type`,
    Gemini `status`), compared case-insensitively. `retry_hint`: the answer said when to retry. A
    429 that says when to retry is a rate limit even when its message speaks of quota and billing
    (Gemini's per-minute limits do).
    """
    kind, code_l, text = error_type.lower(), str(code or "").lower(), message.lower()
    if "insufficient_quota" in (kind, code_l) or "credit balance is too low" in text:
        return "quota"
    if "billing" in text and status in (400, 402, 429) and not retry_hint:
        return "quota"
    if status == 429 or kind in ("rate_limit_error", "resource_exhausted") or code_l == "rate_limit_exceeded":
        return "rate_limited"
    if status in (529, 503) or kind in ("overloaded_error", "unavailable"):
        return "overloaded"
    if status in (408, 504) or kind == "deadline_exceeded":
        return "timeout"
    if status >= 500:
        return "server"
    if any(marker in code_l or marker in text for marker in _CONTEXT_MARKERS):
        return "context_too_long"
    if (
        status in (401, 403)
        or kind in ("authentication_error", "permission_error", "unauthenticated", "permission_denied")
        or any(m in text for m in _AUTH_MARKERS)
    ):
        return "auth"
    return "bad_request"
