"""What every provider adapter takes and returns."""

from __future__ import annotations

from typing import Any, Literal, Protocol

import msgspec
from msgspec import Struct

from worker.config import ModelConfig
from worker.errors import ProviderError, classify_http_error
from worker.messages import ChatMessage, Job, JsonSchemaFormat, Tool, ToolCall, ToolChoiceName
from worker.ratelimit.headers import RateLimitState
from worker.routing.capabilities import seed_dropped
from worker.routing.verify import wants_json

# The result's finish reasons (worker.messages.FinishReason), and "other" for one no wire API documents.
FinishReason = Literal["stop", "length", "tool_calls", "refusal", "content_filter", "other"]


class Sampling(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The job's generation settings (None: not set, the provider's default). Each adapter has a pure
    function that turns them into its wire fields and names the ones it leaves out."""

    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @classmethod
    def of(cls, job: Job) -> Sampling:
        """The settings `job` asks for."""
        return cls(temperature=job.temperature, top_p=job.top_p, stop=tuple(job.stop or ()), seed=job.seed)

    def settings(self) -> dict[str, Any]:
        """The settings that are set, by the job's field names, in the job's order."""
        named = (
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            ("stop", list(self.stop)),
            ("seed", self.seed),
        )
        return {name: value for name, value in named if value is not None and value != []}


class CompletionRequest(Struct, frozen=True, kw_only=True):
    """One call to one model (`model` is the router's model name)."""

    job_id: str
    model: str
    messages: list[ChatMessage]
    max_output_tokens: int
    # The job asks for a JSON answer: each adapter asks for it in its provider's own way, under `schema`
    # when the job gave one (its `response_format` json_schema).
    json_output: bool = False
    schema: JsonSchemaFormat | None = None
    sampling: Sampling = Sampling()
    tools: tuple[Tool, ...] = ()
    tool_choice: Literal["auto", "none", "required"] | ToolChoiceName | None = None
    # The job's settings left out before the adapter saw them (`seed` for a model without the capability).
    left_out: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, job: Job, *, model: str, model_config: ModelConfig, messages: list[ChatMessage], max_output_tokens: int
    ) -> CompletionRequest:
        """The call of `model` that `job` asks for (its messages, as the worker framed them); a model without
        the "seed" capability gets it without the seed, which `left_out` names."""
        sampling, left_out = Sampling.of(job), tuple[str, ...]()
        if seed_dropped(job, model_config):
            sampling, left_out = msgspec.structs.replace(sampling, seed=None), ("seed",)
        return cls(
            job_id=job.id,
            model=model,
            messages=messages,
            max_output_tokens=max_output_tokens,
            json_output=wants_json(job),
            schema=job.schema,
            sampling=sampling,
            tools=tuple(job.tools or ()),
            tool_choice=job.tool_choice,
            left_out=left_out,
        )


class Completion(Struct, frozen=True, kw_only=True):
    """A provider's answer, normalised across wire APIs.

    Token counts follow the OpenTelemetry GenAI conventions: input includes cached tokens (and
    Anthropic's cache reads and writes), output includes reasoning/thinking tokens. Of the input,
    `cached_input_tokens` were read from the provider's prompt cache and `cache_write_input_tokens`
    written to it (each billed at its own rate).
    """

    text: str
    finish_reason: FinishReason
    input_tokens: int
    tool_calls: tuple[ToolCall, ...] = ()
    # Why a tool call of the answer could not be read (its arguments not a JSON object): a format failure.
    tool_call_error: str = ""
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    request_id: str = ""
    latency_ms: float = 0.0
    response_model: str = ""
    rate_limits: RateLimitState | None = None


class Provider(Protocol):
    """A provider client. `complete` raises `worker.errors.ProviderError` on a failed call."""

    name: str

    async def complete(self, request: CompletionRequest) -> Completion: ...

    async def close(self) -> None: ...


def decode_json(body: bytes, what: str) -> dict:
    """A provider's JSON answer, or ProviderError("server") when it is not JSON."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise ProviderError("server", f"{what}: the answer is not JSON: {body[:200]!r}") from None
    if not isinstance(data, dict):
        raise ProviderError("server", f"{what}: the answer is not a JSON object: {body[:200]!r}")
    return data


def http_error(
    status: int,
    error_type: str,
    code: str,
    message: str,
    retry_after_s: float | None,
    rate_limits: RateLimitState | None,
) -> ProviderError:
    """The ProviderError for a non-2xx answer: its kind decided by `worker.errors.classify_http_error`."""
    kind = classify_http_error(status, error_type, code, message, retry_hint=retry_after_s is not None)
    detail = " ".join(
        part for part in (f"HTTP {status}", error_type or "", str(code or "") if code != error_type else "") if part
    )
    return ProviderError(
        kind, f"{detail}: {message}".strip(), retry_after_s=retry_after_s, status=status, rate_limits=rate_limits
    )


# A provider's batch API (OpenAI Batch, Anthropic Message Batches, Gemini Batch Mode): the same requests,
# answered within a day at the provider's batch discount. docs/architecture.md, "Batch APIs".
BatchStatus = Literal["running", "ended", "cancelling"]


class BatchRequest(Struct, frozen=True, kw_only=True):
    """One request of a batch: `custom_id` names it in the results (the job's id)."""

    custom_id: str
    request: CompletionRequest


class BatchState(Struct, frozen=True, kw_only=True):
    """Where a submitted batch is: running (results not all in), cancelling, or ended (every line has its
    result, an answer or an error, to read with `results`)."""

    status: BatchStatus
    # The provider's own word for it ("in_progress", "ended", "JOB_STATE_SUCCEEDED"...), for logs.
    provider_status: str = ""


class BatchLine(Struct, frozen=True, kw_only=True):
    """One line of an ended batch: the answer to the request `custom_id`, or why there is none (kind
    "batch_expired" for a line the batch did not reach in its window, "batch_cancelled" for one cancelled,
    else the kind the same error has on a synchronous call)."""

    custom_id: str
    completion: Completion | None = None
    error_kind: str = ""
    error_message: str = ""


class BatchApi(Protocol):
    """A provider's batch API, for one model a batch. Each call raises `worker.errors.ProviderError` as a
    synchronous call does."""

    async def submit_batch(self, model: str, requests: list[BatchRequest]) -> str:
        """Send the requests (all to `model`, the router's model name) as one batch; its id."""
        ...

    async def batch_state(self, batch_id: str) -> BatchState: ...

    async def batch_results(self, batch_id: str) -> list[BatchLine]:
        """The lines of an ended batch, one per request, in any order."""
        ...

    async def cancel_batch(self, batch_id: str) -> None: ...
