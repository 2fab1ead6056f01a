"""What every provider adapter takes and returns."""

from __future__ import annotations

from typing import Literal, Protocol

from msgspec import Struct

from worker.messages import ChatMessage

FinishReason = Literal["stop", "length", "refusal", "other"]


class CompletionRequest(Struct, frozen=True):
    """One call to one model."""

    job_id: str
    model: str
    messages: list[ChatMessage]
    max_output_tokens: int


class Completion(Struct, frozen=True):
    """A provider's answer, normalised across wire APIs."""

    text: str
    finish_reason: FinishReason
    input_tokens: int
    output_tokens: int
    request_id: str = ""


class Provider(Protocol):
    """A provider client. `complete` raises `worker.errors.ProviderError` on a failed call."""

    name: str

    async def complete(self, request: CompletionRequest) -> Completion: ...

    async def close(self) -> None: ...
