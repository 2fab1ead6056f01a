"""Error kinds and what the attempt loop does with each, decided in one place."""

from __future__ import annotations

from enum import Enum


class Disposition(Enum):
    """What a failed attempt leads to."""

    RETRY = "retry"  # transient: the same model again, after a backoff
    ESCALATE = "escalate"  # capability: the next model of the plan
    FAIL = "fail"  # the job cannot succeed on this provider (quota, auth, bad request)


TRANSIENT = frozenset({"rate_limited", "overloaded", "server", "timeout"})
CAPABILITY = frozenset({"verification_failed", "truncated", "refused", "empty_output", "context_too_long"})
FATAL = frozenset({"quota", "auth", "bad_request"})


def disposition(kind: str) -> Disposition:
    """The one place that maps an error kind to a decision; unknown kinds escalate."""
    if kind in TRANSIENT:
        return Disposition.RETRY
    if kind in FATAL:
        return Disposition.FAIL
    return Disposition.ESCALATE


class ProviderError(Exception):
    """A provider call failed with an error kind from this module."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
