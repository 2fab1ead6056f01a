"""The contract of every topic: typed messages in and out of the worker.

Every message on `llm.jobs`, `llm.results`, `llm.costs`, `llm.dlq`, `llm.feedback` and `llm.routes` is one
of these Structs, encoded as JSON. `schemas/` holds their JSON Schemas, generated from here (`llm-router schemas`).
"""

from __future__ import annotations

import binascii
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

JobId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=256,
        # No C0/C1 control character or DEL; Job also refuses other non-printable characters (str.isprintable).
        pattern="^[^\\x00-\\x1f\\x7f-\\x9f]+$",
        description="Unique id of the job: printable text, no control characters.",
    ),
]
NonNegInt = Annotated[int, Meta(ge=0)]
Usd = Annotated[float, Meta(ge=0, description="US dollars.")]
DeadLetterKind = Literal["not_json", "invalid_job", "too_large", "invalid_feedback", "unknown_job"]
AttemptRole = Literal["answer", "judge"]
# How an attempt was made: a synchronous call, or a line of a provider's batch (half price, within a day).
Via = Literal["sync", "batch"]


ToolName = Annotated[
    str, Meta(pattern="^[A-Za-z0-9_-]{1,64}$", description="A tool's name: letters, digits, `_` and `-`, at most 64.")
]
FinishReason = Literal["stop", "length", "tool_calls", "refusal", "content_filter"]


def _check_schema(schema: dict[str, Any], where: str) -> None:
    """Raise ValueError naming `where` when `schema` is not a JSON Schema (draft 2020-12)."""
    import jsonschema  # imported on first use: most jobs carry no schema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"{where} is not a valid JSON Schema: {exc.message}") from None


class TextPart(Struct, tag_field="type", tag="text", forbid_unknown_fields=True, kw_only=True):
    """A text part of a message's content."""

    text: str


class ImagePart(Struct, tag_field="type", tag="image", forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """An image part of a message's content: an http(s) `url`, or base64 `data` with its `media_type`."""

    url: Annotated[str, Meta(pattern="^https?://", description="An http or https URL of the image.")] | None = None
    data: Annotated[str, Meta(min_length=1, description="The image's bytes, base64-encoded.")] | None = None
    media_type: Annotated[str, Meta(pattern="^image/", description="The data's media type, e.g. image/png.")] | None = (
        None
    )

    def __post_init__(self) -> None:
        if (self.url is None) == (self.data is None):
            raise ValueError("an image part needs exactly one of `url` or `data`")
        if self.data is not None:
            if self.media_type is None:
                raise ValueError("an image part with `data` needs its `media_type`")
            try:
                binascii.a2b_base64(self.data, strict_mode=True)
            except binascii.Error:
                raise ValueError("an image part's `data` is not base64") from None


ContentPart = TextPart | ImagePart


class ToolCall(Struct, forbid_unknown_fields=True, kw_only=True):
    """A call of a tool a model asked for (in a result, or on an assistant message that continues one)."""

    id: Annotated[str, Meta(min_length=1)]
    name: ToolName
    arguments: dict[str, Any] = {}


class ChatMessage(Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """One message of a chat-form prompt. A `tool` message answers the call `tool_call_id` names; an
    `assistant` message may carry the `tool_calls` it made (its content may then be empty)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[ContentPart] = ""
    tool_calls: list[ToolCall] | None = None
    tool_call_id: Annotated[str, Meta(min_length=1)] | None = None

    def __post_init__(self) -> None:
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a `tool` message needs the `tool_call_id` it answers")
        if self.role != "tool" and self.tool_call_id is not None:
            raise ValueError("only a `tool` message has a `tool_call_id`")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only an `assistant` message has `tool_calls`")
        if self.role == "system" and self.images():
            raise ValueError("a `system` message holds text only")

    def text(self) -> str:
        """The message's text: its content, or its text parts joined."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    def images(self) -> list[ImagePart]:
        """The message's image parts."""
        if isinstance(self.content, str):
            return []
        return [part for part in self.content if isinstance(part, ImagePart)]


class JsonSchemaFormat(Struct, tag_field="type", tag="json_schema", forbid_unknown_fields=True, kw_only=True):
    """`response_format` asking for JSON valid under a JSON Schema."""

    name: ToolName
    schema: dict[str, Any]
    strict: Annotated[
        bool, Meta(description="Ask the provider to enforce the schema (OpenAI strict structured outputs).")
    ] = False

    def __post_init__(self) -> None:
        _check_schema(self.schema, "response_format.schema")


class Tool(Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """A function the model may call; `parameters` is the JSON Schema of its arguments (an object)."""

    name: ToolName
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})

    def __post_init__(self) -> None:
        _check_schema(self.parameters, f"the parameters of tool {self.name!r}")
        if self.parameters.get("type") != "object":
            raise ValueError(f"the parameters of tool {self.name!r} must be a JSON Schema of `type` object")


class ToolChoiceName(Struct, forbid_unknown_fields=True, kw_only=True):
    """`tool_choice` naming the one tool the model must call."""

    name: ToolName


class Checks(Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """What an answer must satisfy to count as correct; a failed check escalates to the next model."""

    expected: (
        Annotated[
            str,
            Meta(
                description="The right answer (evaluation sets): compared ignoring case, surrounding spaces and "
                "final punctuation."
            ),
        ]
        | None
    ) = None
    regex: (
        Annotated[str, Meta(description="A Python regular expression the answer must contain a match of.")] | None
    ) = None
    json_schema: (
        Annotated[dict[str, Any], Meta(description="The answer must be JSON valid under this JSON Schema.")] | None
    ) = None
    judge: Annotated[
        bool, Meta(description="A cheap model grades the answer against the prompt (pass or fail); a fail escalates.")
    ] = False
    rubric: (
        Annotated[str, Meta(min_length=1, description="What the judge grades the answer by (with `judge`).")] | None
    ) = None

    def __post_init__(self) -> None:
        if self.rubric is not None and not self.judge:
            raise ValueError("checks.rubric needs checks.judge")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"checks.regex is not a valid regular expression: {exc}") from None
        if self.json_schema is not None:
            _check_schema(self.json_schema, "checks.json_schema")


class Job(Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """A prompt job, as produced to the jobs topic. Exactly one of `messages` or `prompt` is set."""

    id: JobId
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    task: Annotated[str, Meta(min_length=1, description="Task type; classified when absent.")] | None = None
    accuracy_floor: (
        Annotated[float, Meta(ge=0, le=1, description="Required probability of a correct answer.")] | None
    ) = None
    latency_budget_ms: Annotated[int, Meta(gt=0)] | None = None
    cost_cap_usd: Usd | None = None
    max_output_tokens: Annotated[int, Meta(gt=0)] | None = None
    allowed_providers: list[str] | None = None
    model: Annotated[str, Meta(min_length=1, description="Pin the job to this model.")] | None = None
    tenant: str | None = None
    priority: Annotated[int, Meta(description="Under contention for a rate limit, higher goes first.")] = 0
    checks: Checks | None = None
    response_format: Annotated[
        Literal["text", "json"] | JsonSchemaFormat,
        Meta(description="json: the answer must parse as JSON; json_schema: be valid under the schema too."),
    ] = "text"
    tools: Annotated[list[Tool], Meta(description="Functions the model may call instead of answering.")] | None = None
    tool_choice: (
        Annotated[
            Literal["auto", "none", "required"] | ToolChoiceName,
            Meta(
                description="Whether the model may (auto), must not (none) or must (required, or the named tool) call."
            ),
        ]
        | None
    ) = None
    metadata: dict[str, Any] = {}
    # Generation settings, carried to each provider in its own wire format (left out where it has none).
    temperature: (
        Annotated[float, Meta(ge=0, le=2, description="Sampling temperature (0-2); Anthropic takes 0-1.")] | None
    ) = None
    top_p: Annotated[float, Meta(ge=0, le=1, description="Nucleus sampling: the probability mass kept.")] | None = None
    stop: (
        Annotated[
            list[Annotated[str, Meta(min_length=1)]],
            Meta(max_length=4, description="Up to 4 strings; the answer ends before the first one it would hold."),
        ]
        | None
    ) = None
    seed: Annotated[int, Meta(description="Asks for repeatable sampling, where the provider has it.")] | None = None
    complete_within_s: (
        Annotated[
            float,
            Meta(
                gt=0,
                description="Seconds after the job's Kafka timestamp by which its result is due; a deadline far "
                "enough lets the router use a provider's batch API at its discount. Absent: as soon as possible.",
            ),
        ]
        | None
    ) = None

    def __post_init__(self) -> None:
        if not self.id.isprintable():  # bidi overrides, zero-width and other format characters too
            raise ValueError("`id` must be printable text, without control or format characters")
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a job needs exactly one of `messages` or `prompt`")
        if self.messages is not None and not self.messages:
            raise ValueError("`messages` must not be empty")
        if not self.text().strip() and not self._has_more_than_text():  # nothing to answer: it would bill for nothing
            raise ValueError("the prompt is empty or blank" if self.prompt is not None else "the messages hold no text")
        if self.tools is not None or self.tool_choice is not None:
            self._check_tools()

    def _has_more_than_text(self) -> bool:
        return any(m.tool_calls or m.role == "tool" or m.images() for m in self.messages or ())

    def _check_tools(self) -> None:
        names = [tool.name for tool in self.tools or ()]
        if len(set(names)) != len(names):
            raise ValueError("`tools` names a tool twice")
        if isinstance(self.tool_choice, ToolChoiceName) and self.tool_choice.name not in names:
            raise ValueError(f"`tool_choice` names {self.tool_choice.name!r}, which `tools` does not offer")
        if self.tool_choice == "required" and not names:
            raise ValueError("`tool_choice` required needs `tools`")

    @property
    def verifiable(self) -> bool:
        """Whether a wrong answer can be told from a right one by the worker itself (an expected answer, a regex,
        a JSON Schema, structured output or tools; a judge's grade is a model's opinion, not a check)."""
        checks = self.checks
        checked = checks is not None and (
            checks.expected is not None or checks.regex is not None or checks.json_schema is not None
        )
        return checked or self.response_format != "text" or bool(self.tools)

    @property
    def judged(self) -> bool:
        """Whether the job asks for a judge (`checks.judge`)."""
        return self.checks is not None and self.checks.judge

    @property
    def schema(self) -> JsonSchemaFormat | None:
        """The JSON Schema the answer must be valid under (`response_format` json_schema), or None."""
        return self.response_format if isinstance(self.response_format, JsonSchemaFormat) else None

    def text(self) -> str:
        """The whole prompt's text as one string (for classification and token estimates)."""
        if self.prompt is not None:
            return self.prompt
        return "\n".join(m.text() for m in self.messages or ())


class Usage(Struct, kw_only=True):
    """Tokens summed over every attempt of a job (the cached and cache-write tokens are part of input_tokens)."""

    input_tokens: NonNegInt = 0
    output_tokens: NonNegInt = 0
    cached_input_tokens: NonNegInt = 0
    cache_write_input_tokens: NonNegInt = 0


class ErrorInfo(Struct, kw_only=True):
    """Why a job or an attempt failed: `kind` is machine-readable, `message` is for people."""

    kind: str
    message: str


class Attempt(Struct, omit_defaults=True, kw_only=True):
    """One call to one model for a job."""

    number: Annotated[int, Meta(ge=1)]
    provider: str
    model: str
    outcome: Literal["ok", "failed"]
    input_tokens: NonNegInt
    output_tokens: NonNegInt
    cost_usd: Usd
    latency_ms: Annotated[float, Meta(ge=0)]
    error: ErrorInfo | None = None
    cached_input_tokens: Annotated[
        NonNegInt, Meta(description="Of input_tokens, those read from the provider's prompt cache.")
    ] = 0
    cache_write_input_tokens: Annotated[
        NonNegInt, Meta(description="Of input_tokens, those written to the provider's prompt cache.")
    ] = 0
    rate_limit_wait_ms: Annotated[
        float, Meta(ge=0, description="Time spent waiting for the rate limits before the call.")
    ] = 0.0
    rerouted_from: Annotated[
        str | None,
        Meta(
            description="The model planned first, when too many jobs waited for its allowance and this attempt "
            "went to the next model of the chain with capacity."
        ),
    ] = None
    dropped_params: Annotated[
        list[str],
        Meta(
            description="The job's generation settings left out of this call: the provider has no such setting, or "
            "not the job's value (docs/architecture.md, generation settings)."
        ),
    ] = []
    role: Annotated[
        AttemptRole, Meta(description="answer: the call answers the job; judge: it grades another attempt's answer.")
    ] = "answer"
    via: Annotated[Via, Meta(description="sync: a synchronous call; batch: a line of a provider's batch.")]
    batch_id: Annotated[str | None, Meta(description="The provider's id of the batch (via batch).")] = None


class Result(Struct, omit_defaults=True, kw_only=True):
    """The one result of a job, keyed by job id on the results topic."""

    job_id: JobId
    status: Literal["ok", "failed"]
    attempts: list[Attempt]
    usage: Usage
    cost_usd: Usd
    latency_ms: Annotated[float, Meta(ge=0, description="From the worker taking the job to its result.")]
    finished_at: datetime
    output: str | None = None
    model: str | None = None
    provider: str | None = None
    task: str | None = None
    tenant: str | None = None
    error: ErrorInfo | None = None
    finish_reason: Annotated[
        FinishReason | None, Meta(description="Why the answering model stopped (absent on a failed job).")
    ] = None
    parsed: Annotated[Any, Meta(description="The answer as a JSON value, when the job asked for JSON.")] = None
    tool_calls: Annotated[
        list[ToolCall] | None, Meta(description="The tools the model called, when it called any.")
    ] = None
    via: Annotated[Via, Meta(description="How the answer (else the last attempt) was made: sync or batch.")]
    batch_id: Annotated[str | None, Meta(description="The batch of the answer, when it came by batch.")] = None

    @classmethod
    def failed(cls, *, job_id: str, kind: str, message: str, tenant: str | None = None) -> Result:
        """The result of a job that failed before any attempt (rejected at intake, or a bug in the worker)."""
        return cls(
            job_id=job_id,
            status="failed",
            attempts=[],
            usage=Usage(),
            cost_usd=0.0,
            latency_ms=0.0,
            finished_at=datetime.now(UTC),
            tenant=tenant,
            error=ErrorInfo(kind=kind, message=message),
            via="sync",
        )


class CostEvent(Struct, omit_defaults=True, kw_only=True):
    """What one attempt cost, one event per provider attempt, keyed by job id on the costs topic."""

    job_id: JobId
    attempt: Annotated[int, Meta(ge=1)]
    provider: str
    model: str
    input_tokens: NonNegInt
    output_tokens: NonNegInt
    cost_usd: Usd
    outcome: Literal["ok", "failed"]
    ts: datetime
    tenant: str | None = None
    task: str | None = None
    error_kind: str | None = None
    cached_input_tokens: Annotated[
        NonNegInt, Meta(description="Of input_tokens, those read from the provider's prompt cache.")
    ] = 0
    cache_write_input_tokens: Annotated[
        NonNegInt, Meta(description="Of input_tokens, those written to the provider's prompt cache.")
    ] = 0
    role: Annotated[AttemptRole, Meta(description="The attempt's role: answer, or judge.")] = "answer"
    via: Annotated[Via, Meta(description="sync: a synchronous call; batch: a line of a provider's batch.")]
    batch_id: Annotated[str | None, Meta(description="The provider's id of the batch (via batch).")] = None


class Feedback(Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """What someone found out about a job's answer, at any time after its result: right or wrong (`correct`),
    or a grade (`score`, 0 wrong to 1 right). Produced to the feedback topic, keyed by job id."""

    job_id: JobId
    correct: bool | None = None
    score: Annotated[float, Meta(ge=0, le=1)] | None = None
    source: Annotated[str, Meta(description="Who or what gave the feedback (a user, a later check).")] | None = None

    def __post_init__(self) -> None:
        if (self.correct is None) == (self.score is None):
            raise ValueError("feedback needs exactly one of `correct` or `score`")

    @property
    def grade(self) -> float:
        """The feedback as a grade from 0 (wrong) to 1 (right)."""
        if self.score is not None:
            return self.score
        return 1.0 if self.correct else 0.0


class Route(Struct, omit_defaults=True, kw_only=True):
    """How a job was answered, kept on the routes topic (compacted, keyed by job id) for the feedback that
    may come later: which model's answer stood, for which task type, and on whose word it was accepted."""

    job_id: JobId
    task: str
    model: str
    finished_at: datetime
    agreed: Annotated[list[str], Meta(description="The other models whose answers agreed with it.")] = []
    judge: Annotated[str | None, Meta(description="The model that judged the answer and passed it.")] = None
    overruled: Annotated[
        list[str], Meta(description="Models whose answers the job asked for and did not take (they differed).")
    ] = []
    feedback: Annotated[bool, Meta(description="Feedback on the job has been learned from (it counts once).")] = False


class DeadLetter(Struct, omit_defaults=True, kw_only=True):
    """Why a message went to the dead-letter topic.

    On the wire the dead letter's value is the original message's bytes, unchanged (so it can be
    produced again as it was), its key the original key, and these fields are its headers, each
    named `dlq.<field>` with its value as UTF-8 text.
    """

    error_kind: DeadLetterKind
    error: str
    source_topic: str
    source_partition: NonNegInt
    source_offset: NonNegInt
    original_size: NonNegInt
    failed_at: datetime
    truncated: bool = False

    def to_headers(self) -> list[tuple[str, bytes]]:
        """The Kafka headers that carry this record."""
        raw = msgspec.to_builtins(self)
        return [
            (f"dlq.{k}", (v if isinstance(v, str) else msgspec.json.encode(v).decode()).encode())
            for k, v in raw.items()
        ]

    @classmethod
    def from_headers(cls, headers: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]) -> DeadLetter:
        """Read the record back from a dead letter's headers."""
        fields: dict[str, Any] = {}
        for name, value in headers:
            if name.startswith("dlq."):
                fields[name[4:]] = value.decode()
        return msgspec.convert(fields, cls, strict=False)


class ParkedJob(Struct, tag_field="record", tag="job", omit_defaults=True, kw_only=True):
    """A job waiting for a provider's batch, on the batches topic keyed by its id: what its run needs to go on
    when the batch's answer comes (its plan and attempts so far), and the batch it is in (None: queued)."""

    job: Job
    task: str
    models: list[str]  # the plan's chain
    batch_models: list[str]  # the models of the chain that go by batch while the deadline allows
    max_output_tokens: int
    step: int  # the model of the chain the batch asks
    due: float  # the job's deadline, epoch seconds
    taken_at: float  # when the worker took the job, epoch seconds
    parked_at: float
    attempts: list[Attempt] = []
    batch_id: str | None = None
    # The job's trace context (W3C headers), carried to its outputs when it resumes.
    trace: dict[str, str] = {}

    @property
    def model(self) -> str:
        """The model the batch asks."""
        return self.models[self.step]


class BatchedJob(Struct, array_like=True):
    """A job of an open batch: what a cost event of its line needs when the job is gone (given up)."""

    job_id: str
    tenant: str | None
    task: str
    attempt: int  # the number of the job's attempt the line is


class OpenBatch(Struct, tag_field="record", tag="batch", kw_only=True):
    """A batch submitted to a provider, on the batches topic keyed `batch:{id}`, in the partition of its jobs."""

    batch_id: str
    provider: str
    model: str
    jobs: list[BatchedJob]
    submitted_at: float
    tokens: int  # its prompts' estimates and output caps: what it holds of the provider's batch queue
