"""The attempt loop: run a job's plan, model by model, until one answer passes.

A transient error retries the same model after a backoff; a capability failure (refused, truncated,
empty, context too long) escalates to the next model; a fatal one (quota, auth, bad request) skips
the rest of that provider's models. Every attempt is recorded with its tokens and cost.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import anyio
from msgspec import Struct

from worker.classify import Classifier
from worker.config import Config
from worker.errors import Disposition, ProviderError, disposition
from worker.messages import Attempt, ChatMessage, CostEvent, ErrorInfo, Job, Result, Usage
from worker.plan import NoRoute, make_plan
from worker.pricing import attempt_cost, estimate_tokens
from worker.providers.base import Completion, CompletionRequest, Provider


class JobOutcome(Struct):
    """What a job produces: its one result and one cost event per attempt."""

    result: Result
    cost_events: list[CostEvent]


def check_answer(completion: Completion) -> ErrorInfo | None:
    """Why a completed call does not count as an answer, or None when it does."""
    if completion.finish_reason == "length":
        return ErrorInfo("truncated", "the answer was cut off at the output-token cap")
    if completion.finish_reason == "refusal":
        return ErrorInfo("refused", "the model refused or the answer was filtered")
    if not completion.text.strip():
        return ErrorInfo("empty_output", "the model returned no text")
    return None


_RNG = random.Random()


def backoff_s(retry: int, base: float, cap: float, rng: random.Random = _RNG) -> float:
    """Exponential backoff with full jitter for the `retry`-th retry (0-based)."""
    return rng.uniform(0, min(cap, base * 2**retry))


class JobRunner:
    """Classifies, plans and attempts one job at a time; safe to run many jobs concurrently."""

    def __init__(
        self,
        config: Config,
        providers: dict[str, Provider],
        unavailable: dict[str, str] | None = None,
        classifier: Classifier | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self._config = config
        self._providers = providers
        self._unavailable = unavailable or {}
        self._classifier = classifier or Classifier(config.classifier)
        self._sleep = sleep

    async def run(self, job: Job) -> JobOutcome:
        """Run `job` to its result. Never raises for a provider's failure: that is a failed result."""
        started = time.monotonic()
        task = self._classifier.classify(job)
        messages = job.messages if job.messages is not None else [ChatMessage("user", job.prompt or "")]
        input_estimate = sum(estimate_tokens(m.content) for m in messages)
        attempts: list[Attempt] = []
        events: list[CostEvent] = []
        try:
            plan = make_plan(job, task, self._config, input_estimate, self._unavailable)
        except NoRoute as exc:
            return JobOutcome(self._result(job, task, started, attempts, error=ErrorInfo("no_route", str(exc))), events)

        worker = self._config.worker
        retries = 0
        skipped_providers: set[str] = set()
        last_error = ErrorInfo("no_route", "no model of the plan could be tried")
        for model in plan.models:
            provider_name = self._config.models[model].provider
            if provider_name in skipped_providers:
                continue
            provider = self._providers[provider_name]
            request = CompletionRequest(job.id, model, messages, plan.max_output_tokens)
            while True:
                attempt, completion, retry_after = await self._attempt(provider, request, len(attempts) + 1)
                attempts.append(attempt)
                events.append(self._cost_event(job, task, attempt))
                if attempt.error is None:
                    assert completion is not None
                    return JobOutcome(self._result(job, task, started, attempts, output=completion.text), events)
                last_error = attempt.error
                decision = disposition(attempt.error.kind)
                if decision is Disposition.RETRY and retries < worker.max_retries_per_job:
                    # The provider's own retry delay, when it gave one, is the least we wait.
                    await self._sleep(max(backoff_s(retries, worker.retry_base_s, worker.retry_cap_s), retry_after or 0.0))
                    retries += 1
                    continue
                if decision is Disposition.FAIL:
                    skipped_providers.add(provider_name)
                break
        message = f"all {len(attempts)} attempt(s) failed; last: {last_error.message}"
        return JobOutcome(self._result(job, task, started, attempts, error=ErrorInfo(last_error.kind, message)), events)

    async def _attempt(self, provider: Provider, request: CompletionRequest, number: int) -> tuple[Attempt, Completion | None, float | None]:
        model = self._config.models[request.model]
        started = time.monotonic()
        try:
            completion = await provider.complete(request)
        except ProviderError as exc:
            latency = (time.monotonic() - started) * 1000
            error = ErrorInfo(exc.kind, exc.message)
            return Attempt(number, provider.name, request.model, "failed", 0, 0, 0.0, latency, error), None, exc.retry_after_s
        latency = (time.monotonic() - started) * 1000
        cost = attempt_cost(model, completion.input_tokens, completion.output_tokens)
        error = check_answer(completion)
        attempt = Attempt(
            number, provider.name, request.model, "failed" if error else "ok",
            completion.input_tokens, completion.output_tokens, cost, latency, error,
        )
        return attempt, completion, None

    def _cost_event(self, job: Job, task: str, attempt: Attempt) -> CostEvent:
        return CostEvent(
            job_id=job.id,
            attempt=attempt.number,
            provider=attempt.provider,
            model=attempt.model,
            input_tokens=attempt.input_tokens,
            output_tokens=attempt.output_tokens,
            cost_usd=attempt.cost_usd,
            outcome=attempt.outcome,
            ts=datetime.now(UTC),
            tenant=job.tenant,
            task=task,
            error_kind=attempt.error.kind if attempt.error else None,
        )

    def _result(
        self,
        job: Job,
        task: str,
        started: float,
        attempts: list[Attempt],
        output: str | None = None,
        error: ErrorInfo | None = None,
    ) -> Result:
        last = attempts[-1] if attempts else None
        return Result(
            job_id=job.id,
            status="failed" if error else "ok",
            attempts=attempts,
            usage=Usage(sum(a.input_tokens for a in attempts), sum(a.output_tokens for a in attempts)),
            cost_usd=sum(a.cost_usd for a in attempts),
            latency_ms=(time.monotonic() - started) * 1000,
            finished_at=datetime.now(UTC),
            output=output,
            model=last.model if last and not error else None,
            provider=last.provider if last and not error else None,
            task=task,
            tenant=job.tenant,
            error=error,
        )
