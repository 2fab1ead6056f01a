"""Provider rate-limit headers and retry hints: durations, OpenAI and Anthropic limits, Retry-After, RetryInfo."""

from datetime import UTC, datetime, timedelta

import pytest

from worker.ratelimit.headers import (
    anthropic_rate_limits,
    gemini_retry_delay,
    openai_rate_limits,
    parse_duration,
    retry_after_from_headers,
)

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("6m0s", 360),
        ("1s", 1),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5s", 0.5),
        ("59.1s", 59.1),
        ("5", 5),
        ("", None),
        ("soon", None),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_openai_headers():
    state = openai_rate_limits(
        {
            "x-ratelimit-limit-requests": "3000",
            "x-ratelimit-remaining-requests": "2999",
            "x-ratelimit-reset-requests": "20ms",
            "x-ratelimit-limit-tokens": "250000",
            "x-ratelimit-remaining-tokens": "249000",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    assert (state.requests.limit, state.requests.remaining, state.requests.reset_s) == (3000, 2999, pytest.approx(0.02))
    assert (state.tokens.limit, state.tokens.remaining, state.tokens.reset_s) == (250000, 249000, 360)
    assert openai_rate_limits({}) is None


def test_anthropic_headers_with_rfc3339_resets():
    reset = (NOW + timedelta(seconds=12)).isoformat().replace("+00:00", "Z")
    state = anthropic_rate_limits(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": reset,
            "anthropic-ratelimit-output-tokens-limit": "8000",
            "anthropic-ratelimit-output-tokens-remaining": "7000",
            "anthropic-ratelimit-output-tokens-reset": reset,
        },
        NOW,
    )
    assert (state.requests.limit, state.requests.remaining, state.requests.reset_s) == (50, 49, 12)
    assert state.output_tokens.remaining == 7000 and state.tokens is None


def test_retry_after_forms():
    assert retry_after_from_headers({"retry-after-ms": "1500", "retry-after": "2"}, NOW) == 1.5
    assert retry_after_from_headers({"retry-after": "7"}, NOW) == 7
    assert retry_after_from_headers({"retry-after": "Sat, 28 Nov 2026 12:00:30 GMT"}, NOW) == 30
    assert retry_after_from_headers({}, NOW) is None


def test_gemini_retry_info():
    error = {
        "code": 429,
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "36s"},
        ],
    }
    assert gemini_retry_delay(error) == 36
    assert gemini_retry_delay({"details": []}) is None
