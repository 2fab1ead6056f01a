"""What the adapters' batch API clients share: checking a batch before it is sent, and reading its lines.

Each adapter sends a batch's requests with the same bodies as its synchronous calls and reads each line's
answer with the same parsing (docs/architecture.md, "Batch APIs: the adapters").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from worker.errors import ProviderError
from worker.providers.base import BatchLine, BatchRequest, Completion, decode_json

# The line outcomes that are the batch's doing, not the request's: the batch did not reach the line within its
# window, or was cancelled before it did.
EXPIRED = "batch_expired"
CANCELLED = "batch_cancelled"


def check_batch(what: str, model: str, requests: list[BatchRequest], max_requests: int | None) -> None:
    """ProviderError("bad_request") for a batch the API would refuse as a whole: empty, over its request
    count (None: the API counts none), a request to another model than the batch's (one model a batch), or
    two requests of one id."""
    if not requests:
        raise ProviderError("bad_request", f"{what}: a batch needs at least one request")
    if max_requests is not None and len(requests) > max_requests:
        raise ProviderError("bad_request", f"{what}: {len(requests)} requests, more than a batch takes: {max_requests}")
    others = sorted({r.request.model for r in requests} - {model})
    if others:
        raise ProviderError("bad_request", f"{what}: a batch of {model!r} holds requests to {', '.join(others)}")
    if len({r.custom_id for r in requests}) < len(requests):
        raise ProviderError("bad_request", f"{what}: two requests of the batch have the same custom_id")


def check_size(what: str, size: int, max_bytes: int) -> None:
    """ProviderError("bad_request") for a batch larger than the API takes."""
    if size > max_bytes:
        raise ProviderError("bad_request", f"{what}: the batch is {size} bytes, more than the API takes ({max_bytes})")


def jsonl(body: bytes, what: str) -> Iterator[dict]:
    """The JSON objects of a JSONL file (blank lines skipped); ProviderError("server") at a line that is not one."""
    for line in body.splitlines():
        if line.strip():
            yield decode_json(line, what)


def answered(custom_id: str, read: Callable[[], Completion]) -> BatchLine:
    """The line of `custom_id`: the Completion `read` gives, or the error it raises as a synchronous call would."""
    try:
        return BatchLine(custom_id=custom_id, completion=read())
    except ProviderError as exc:
        return BatchLine(custom_id=custom_id, error_kind=exc.kind, error_message=exc.message)


def not_answered(custom_id: str, kind: str, message: str) -> BatchLine:
    """The line of a request the batch gave no answer: expired, cancelled, or failed with `kind`."""
    return BatchLine(custom_id=custom_id, error_kind=kind, error_message=message)
