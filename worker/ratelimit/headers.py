"""Rate-limit state and retry delays read from providers' headers and bodies (pure parsing)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

from msgspec import Struct

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


class Window(Struct, frozen=True, omit_defaults=True, kw_only=True):
    """One limit: its size, what remains, and seconds until it is whole again."""

    limit: int | None = None
    remaining: int | None = None
    reset_s: float | None = None


class RateLimitState(Struct, frozen=True, omit_defaults=True, kw_only=True):
    """A provider's view of our limits, as its last answer's headers told it."""

    requests: Window | None = None
    tokens: Window | None = None
    input_tokens: Window | None = None
    output_tokens: Window | None = None


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations: `6m0s`, `1s`, `20ms`, `1h2m3.5s`, `0.5s`; Gemini's `5s`. Seconds."""
    text = text.strip()
    if not text:
        return None
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        try:
            return float(text)
        except ValueError:
            return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def _seconds_until(value: str | None, now: datetime) -> float | None:
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (when - now).total_seconds())


# Header names, made once (every answer is read for them): (window, limit, remaining, reset).
_OPENAI_HEADERS = tuple(
    (name, f"x-ratelimit-limit-{name}", f"x-ratelimit-remaining-{name}", f"x-ratelimit-reset-{name}")
    for name in ("requests", "tokens")
)
_ANTHROPIC_HEADERS = tuple(
    (
        name.replace("-", "_"),
        f"anthropic-ratelimit-{name}-limit",
        f"anthropic-ratelimit-{name}-remaining",
        f"anthropic-ratelimit-{name}-reset",
    )
    for name in ("requests", "tokens", "input-tokens", "output-tokens")
)


def openai_rate_limits(headers: Mapping[str, str]) -> RateLimitState | None:
    """`x-ratelimit-{limit,remaining,reset}-{requests,tokens}`."""
    windows = {}
    for name, limit_header, remaining_header, reset_header in _OPENAI_HEADERS:
        limit, remaining, reset = headers.get(limit_header), headers.get(remaining_header), headers.get(reset_header)
        if limit or remaining or reset:
            windows[name] = Window(
                limit=_int(limit), remaining=_int(remaining), reset_s=parse_duration(reset) if reset else None
            )
    return RateLimitState(**windows) if windows else None


def anthropic_rate_limits(headers: Mapping[str, str], now: datetime) -> RateLimitState | None:
    """`anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}` (RFC 3339 resets)."""
    windows = {}
    for name, limit_header, remaining_header, reset_header in _ANTHROPIC_HEADERS:
        limit, remaining, reset = headers.get(limit_header), headers.get(remaining_header), headers.get(reset_header)
        if limit or remaining or reset:
            windows[name] = Window(limit=_int(limit), remaining=_int(remaining), reset_s=_seconds_until(reset, now))
    return RateLimitState(**windows) if windows else None


def retry_after_from_headers(headers: Mapping[str, str], now: datetime) -> float | None:
    """`retry-after-ms` (milliseconds), else `retry-after` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - now).total_seconds())
    except (TypeError, ValueError):
        return None


def gemini_retry_delay(error: Mapping) -> float | None:
    """`RetryInfo.retryDelay` from a Gemini error's `details`."""
    for detail in error.get("details") or ():
        if isinstance(detail, Mapping) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, str):
                return parse_duration(delay)
    return None
