"""One job while it runs: the state the attempt loop carries from the job's task to its result."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from msgspec import Struct
from opentelemetry.trace import Span

from worker.messages import Attempt, ChatMessage, CostEvent, ErrorInfo, Job, Result, Route, Usage
from worker.providers.base import Completion
from worker.routing.verify import parsed_answer, wants_json

_NOTHING_TRIED = ErrorInfo(kind="no_route", message="no model of the plan could be tried")


class JobRun(Struct, kw_only=True):
    """A job from the moment the worker takes it to its result: what its attempts need, what they leave
    behind. Built once a job (a Struct: made in C), and only by the runner of that job."""

    job: Job
    task: str
    messages: list[ChatMessage]
    text_tokens: int  # the prompt's estimated tokens: what the plan is made for
    prompt_tokens: int  # the same with each message's overhead: what a call reserves for its prompt
    started: float  # time.monotonic() when the worker took the job
    span: Span | None  # the job's span when it is sampled; then its attempts get spans too
    spans: list[tuple[Span, int]] | None  # the attempts' spans, each with the time its call ended
    needs: frozenset[str] = frozenset()  # the capabilities a model must have to serve the job
    attempts: list[Attempt] = []
    cost_events: list[CostEvent] = []
    rerouted_from: str | None = None  # the model planned first, when the job went to another model first
    last_error: ErrorInfo | None = None  # of the latest failed attempt
    too_long_window: int = 0  # the largest context window a model found the prompt too long for
    raised_cap: int = 0  # the output-token cap after an answer cut at the worker's cap raised it (0: the plan's)
    probe: str | None = None  # the provider out of rotation this job may try again
    probe_answered: bool | None = None  # whether it answered the probe (None: not tried, or not conclusively)
    answer: Completion | None = None  # the completion whose answer passed: the result's finish reason, tool calls
    answer_model: str | None = None  # the model whose answer the job took
    retries: int = 0  # transient failures retried: the job's retry budget, spent across its models
    agreed: list[str] = []  # the models whose answers agreed with the one taken (an agreement plan)
    judged_by: str | None = None  # the judge that passed the answer taken
    disputed: dict[str, Completion] = {}  # answers not taken yet: they disagreed, or the judge failed one
    judge_failed: str | None = None  # the judge whose fail sent the job on
    overruled: list[str] = []  # the models whose answers the answer taken differs from
    due: float | None = None  # the job's deadline (complete_within_s after its Kafka timestamp), epoch seconds

    def reason(self, model: str) -> tuple[str, str | None]:
        """Why the next attempt, on `model`, is made: planned, rerouted, a retry or an escalation (and the
        failure behind it)."""
        if self.rerouted_from and not self.attempts:
            return "rerouted", None
        if not self.attempts:
            return "planned", None
        previous = self.attempts[-1]
        kind = previous.error.kind if previous.error else None
        return ("retry" if previous.model == model else "escalation"), kind

    def attempt(
        self,
        provider: str,
        model: str,
        error: ErrorInfo | None,
        *,
        completion: Completion | None = None,
        cost_usd: float = 0.0,
        latency_ms: float = 0.0,
        waited_ms: float = 0.0,
        dropped: list[str] | None = None,
        role: str = "answer",
        batch_id: str | None = None,
    ) -> Attempt:
        """The job's next attempt as it ended: failed with `error`, or not; `completion` when the model
        answered (a call that got no answer billed nothing); `dropped`: the settings the call left out; `batch_id`:
        the provider's batch it was a line of (None: a synchronous call)."""
        return Attempt(
            number=len(self.attempts) + 1,
            provider=provider,
            model=model,
            outcome="failed" if error else "ok",
            input_tokens=completion.input_tokens if completion else 0,
            output_tokens=completion.output_tokens if completion else 0,
            cached_input_tokens=completion.cached_input_tokens if completion else 0,
            cache_write_input_tokens=completion.cache_write_input_tokens if completion else 0,
            cost_usd=cost_usd,
            latency_ms=latency_ms,
            error=error,
            rate_limit_wait_ms=waited_ms,
            rerouted_from=None if self.attempts else self.rerouted_from,  # only a job's first attempt went elsewhere
            dropped_params=dropped or [],
            role="judge" if role == "judge" else "answer",
            via="sync" if batch_id is None else "batch",
            batch_id=batch_id,
        )

    def cost_event(self, attempt: Attempt) -> CostEvent:
        """What `attempt` cost, for the costs topic."""
        return cost_event(attempt, job_id=self.job.id, tenant=self.job.tenant, task=self.task)

    def _answered_by(self) -> Attempt | None:
        """The attempt whose answer the job took: the last one that answered (not a judge's) on the model of
        `answer_model` (any model, when unset)."""
        for attempt in reversed(self.attempts):
            if attempt.error is None and attempt.role == "answer" and self.answer_model in (None, attempt.model):
                return attempt
        return None

    def route(self, result: Result) -> Route | None:
        """How the job was answered, for the feedback that may come (None for a job with no answer)."""
        if result.model is None:
            return None
        return Route(
            job_id=self.job.id,
            task=self.task,
            model=result.model,
            finished_at=result.finished_at,
            agreed=self.agreed,
            judge=self.judged_by,
            overruled=self.overruled,
        )

    def failure(self) -> ErrorInfo:
        """Why the job failed when no attempt gave an answer: the last failure, and how many there were."""
        last = self.last_error or _NOTHING_TRIED
        return ErrorInfo(kind=last.kind, message=f"all {len(self.attempts)} attempt(s) failed; last: {last.message}")

    def deadline_passed(self, seconds: float) -> ErrorInfo:
        """Why the job failed when its deadline of `seconds` cut it short."""
        message = f"the job deadline of {seconds:g} s passed"
        if self.attempts:
            last = self.attempts[-1].error
            message += f" after {len(self.attempts)} attempt(s); last: {last.message if last else 'ok'}"
        return ErrorInfo(kind="deadline_exceeded", message=message)

    def result(self, output: str | None, error: ErrorInfo | None) -> Result:
        """The job's one result. An answer ends the job with the attempt that gave it, at its cost event's
        time, with its finish reason, its tool calls and, when the job asked for JSON, its JSON value
        (`parsed`); a failure ends it now."""
        attempts = self.attempts
        finished_at = self.cost_events[-1].ts if output is not None and self.cost_events else datetime.now(UTC)
        last = attempts[-1] if attempts else None
        if last is not None and len(attempts) == 1:  # most jobs: no sums to make
            usage = Usage(
                input_tokens=last.input_tokens,
                output_tokens=last.output_tokens,
                cached_input_tokens=last.cached_input_tokens,
                cache_write_input_tokens=last.cache_write_input_tokens,
            )
            cost_usd = last.cost_usd
        else:
            usage = Usage(
                input_tokens=sum(a.input_tokens for a in attempts),
                output_tokens=sum(a.output_tokens for a in attempts),
                cached_input_tokens=sum(a.cached_input_tokens for a in attempts),
                cache_write_input_tokens=sum(a.cache_write_input_tokens for a in attempts),
            )
            cost_usd = sum(a.cost_usd for a in attempts)
        answered_by = self._answered_by() if error is None else None
        answer = self.answer if error is None else None
        made_by = answered_by or last
        return Result(
            job_id=self.job.id,
            status="failed" if error else "ok",
            attempts=attempts,
            usage=usage,
            cost_usd=cost_usd,
            latency_ms=(time.monotonic() - self.started) * 1000,
            finished_at=finished_at,
            output=output,
            model=answered_by.model if answered_by else None,
            provider=answered_by.provider if answered_by else None,
            task=self.task,
            tenant=self.job.tenant,
            error=error,
            finish_reason=None if answer is None or answer.finish_reason == "other" else answer.finish_reason,
            parsed=parsed_answer(output) if output and wants_json(self.job) else None,
            tool_calls=list(answer.tool_calls) if answer is not None and answer.tool_calls else None,
            via=made_by.via if made_by else "sync",
            batch_id=made_by.batch_id if made_by else None,
        )


def cost_event(attempt: Attempt, *, job_id: str, tenant: str | None, task: str) -> CostEvent:
    """What `attempt` of the job `job_id` cost, for the costs topic."""
    return CostEvent(
        job_id=job_id,
        attempt=attempt.number,
        provider=attempt.provider,
        model=attempt.model,
        input_tokens=attempt.input_tokens,
        output_tokens=attempt.output_tokens,
        cost_usd=attempt.cost_usd,
        outcome=attempt.outcome,
        ts=datetime.now(UTC),
        tenant=tenant,
        task=task,
        error_kind=attempt.error.kind if attempt.error else None,
        cached_input_tokens=attempt.cached_input_tokens,
        cache_write_input_tokens=attempt.cache_write_input_tokens,
        role=attempt.role,
        via=attempt.via,
        batch_id=attempt.batch_id,
    )
