"""The error taxonomy: a provider's HTTP error to a kind, and each kind to retry, escalate or fail."""

import pytest

from worker.errors import classify_http_error, disposition


@pytest.mark.parametrize(
    "status, error_type, code, message, kind",
    [
        (429, "requests", "rate_limit_exceeded", "Rate limit reached for gpt-4o", "rate_limited"),
        (429, "insufficient_quota", "insufficient_quota", "You exceeded your current quota", "quota"),
        (429, "rate_limit_error", "", "This request would exceed the rate limit", "rate_limited"),
        (
            429,
            "RESOURCE_EXHAUSTED",
            "",
            "You exceeded your current quota, please check your plan and billing details.",
            "quota",
        ),
        (429, "RESOURCE_EXHAUSTED", "", "Resource has been exhausted (e.g. check quota).", "rate_limited"),
        (529, "overloaded_error", "", "Overloaded", "overloaded"),
        (503, "UNAVAILABLE", "", "The model is overloaded.", "overloaded"),
        (500, "server_error", "", "The server had an error", "server"),
        (502, "", "", "Bad gateway", "server"),
        (504, "DEADLINE_EXCEEDED", "", "Deadline expired", "timeout"),
        (408, "", "", "Request timeout", "timeout"),
        (
            400,
            "invalid_request_error",
            "context_length_exceeded",
            "This model's maximum context length is 128000 tokens.",
            "context_too_long",
        ),
        (400, "invalid_request_error", "", "prompt is too long: 210000 tokens > 200000 maximum", "context_too_long"),
        (
            400,
            "BadRequestError",
            "400",
            "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens",
            "context_too_long",
        ),
        (
            400,
            "INVALID_ARGUMENT",
            "",
            "The input token count (1100000) exceeds the maximum number of tokens allowed (1048576).",
            "context_too_long",
        ),
        (400, "INVALID_ARGUMENT", "", "API key not valid. Please pass a valid API key.", "auth"),
        (400, "invalid_request_error", "", "Your credit balance is too low to access the Anthropic API.", "quota"),
        (401, "authentication_error", "", "invalid x-api-key", "auth"),
        (403, "PERMISSION_DENIED", "", "Method doesn't allow unregistered callers", "auth"),
        (404, "not_found_error", "", "model: claude-9", "bad_request"),
        (422, "", "", "unprocessable", "bad_request"),
    ],
)
def test_error_taxonomy(status, error_type, code, message, kind):
    assert classify_http_error(status, error_type, code, message) == kind


def test_a_429_that_says_when_to_retry_is_a_rate_limit_whatever_its_wording():
    message = "You exceeded your current quota, please check your plan and billing details."
    assert classify_http_error(429, "RESOURCE_EXHAUSTED", "", message, retry_hint=True) == "rate_limited"
    assert classify_http_error(429, "RESOURCE_EXHAUSTED", "", message) == "quota"
    assert classify_http_error(429, "insufficient_quota", "insufficient_quota", message, retry_hint=True) == "quota"


@pytest.mark.parametrize(
    "kind, decision",
    [
        ("rate_limited", "retry"),
        ("overloaded", "retry"),
        ("server", "retry"),
        ("timeout", "retry"),
        ("verification_failed", "escalate"),
        ("truncated", "escalate"),
        ("refused", "escalate"),
        ("empty_output", "escalate"),
        ("context_too_long", "escalate"),
        ("quota", "fail"),
        ("auth", "fail"),
        ("bad_request", "fail"),
    ],
)
def test_retry_or_escalate_for_every_error_kind(kind, decision):
    assert disposition(kind).value == decision
