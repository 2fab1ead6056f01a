"""The attempt loop: run a job's plan, model by model, until one answer passes.

A transient error (rate limited, overloaded, 5xx, timeout) retries the same model after an
exponential backoff with full jitter, at least the provider's own retry delay, within the job's
retry budget. A capability failure (refused, truncated, empty, failed verification) escalates to the
next model; context too long jumps to the next model whose window is larger. Quota and auth errors
take the provider out of rotation; consecutive failures open its circuit breaker. The job deadline
bounds it all. Every attempt is recorded with its tokens and cost, and verified outcomes teach the
learned success rates.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

import anyio
import orjson
from msgspec import Struct
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from worker.config import Config, ModelConfig
from worker.errors import Disposition, ProviderError, disposition
from worker.execution.breakers import Breakers
from worker.execution.deadlines import Deadlines
from worker.messages import Attempt, ChatMessage, CostEvent, ErrorInfo, Job, Result, Usage
from worker.observability.metrics import Metrics
from worker.observability.telemetry import OFF, PROVIDER_NAMES, Telemetry
from worker.providers.base import Completion, CompletionRequest, Provider
from worker.ratelimit.gates import Usage as Allowance
from worker.ratelimit.limits import RateLimits
from worker.routing.classify import Classifier, TaskClassifier
from worker.routing.learning import QualityModel
from worker.routing.plan import NoRoute, Plan, first_instead, make_plan
from worker.routing.pricing import MESSAGE_OVERHEAD_TOKENS, attempt_cost, content_tokens
from worker.routing.verify import verify

OUT_OF_ROTATION = frozenset({"quota", "auth"})


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
_NOTHING_TRIED = ErrorInfo("no_route", "no model of the plan could be tried")


def _reason(previous: Attempt | None, model: str, rerouted_from: str | None) -> tuple[str, str | None]:
    """Why an attempt is made: planned, rerouted, a retry, or an escalation (and the failure behind it)."""
    if rerouted_from:
        return "rerouted", None
    if previous is None:
        return "planned", None
    kind = previous.error.kind if previous.error else None
    return ("retry" if previous.model == model else "escalation"), kind


def reservation(prompt_tokens: int, max_output_tokens: int) -> Allowance:
    """What a call reserves from the allowance before it is made: the prompt's estimated tokens (with
    each message's overhead) and the whole output cap."""
    return Allowance(1, prompt_tokens, max_output_tokens)


def backoff_s(retry: int, base: float, cap: float, rng: random.Random = _RNG) -> float:
    """Exponential backoff with full jitter for the `retry`-th retry (0-based)."""
    return rng.uniform(0, min(cap, base * 2**retry))


class JobRunner:
    """Classifies, plans and attempts jobs; many run concurrently and share what is learned."""

    def __init__(
        self,
        config: Config,
        providers: dict[str, Provider],
        unavailable: dict[str, str] | None = None,
        classifier: TaskClassifier | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        clock: Callable[[], float] = time.monotonic,
        telemetry: Telemetry = OFF,
    ) -> None:
        self._config = config
        self._telemetry = telemetry
        self.metrics = Metrics(telemetry.meter, telemetry.distributions)
        self._gen_ai = {
            name: (PROVIDER_NAMES.get(p.kind, name), urlsplit(p.base_url).hostname if p.base_url else None)
            for name, p in config.providers.items()
        }
        self._providers = providers
        self._unavailable = dict(unavailable or {})
        self._unavailable_key = frozenset(self._unavailable)  # part of the plan cache's key
        self._classifier = classifier or Classifier(config.classifier)
        self._sleep = sleep
        self._clock = clock
        self.quality = QualityModel(config)
        self.breakers = Breakers(config.routing.breaker_failures, config.routing.breaker_cooldown_s)
        self.limits = RateLimits(config)
        self._plans: dict[tuple, Plan] = {}
        self._deadlines = Deadlines(config.routing.job_deadline_s)
        self.rerouted = 0  # jobs sent to another model of their chain for want of capacity

    async def run(self, job: Job, running: asyncio.Task | None = None) -> JobOutcome:
        """Run `job` to its result. Never raises for a provider's failure: that is a failed result.

        `running` is the task running it (default: the current one), which the job deadline cancels."""
        started = time.monotonic()
        task = self._classifier.classify(job)
        messages = job.messages if job.messages is not None else [ChatMessage("user", job.prompt or "")]
        text_tokens = content_tokens(messages)  # estimated once a job: plan and reservations
        prompt_tokens = text_tokens + MESSAGE_OVERHEAD_TOKENS * len(messages)
        attempts: list[Attempt] = []
        events: list[CostEvent] = []
        job_span = trace.get_current_span() if self._telemetry.tracing else None
        if job_span is not None and not job_span.is_recording():
            job_span = None  # not sampled: no spans of its attempts either (the context still travels)
        spans: list[tuple[Span, int]] | None = [] if job_span is not None else None
        if job_span is not None:
            job_span.set_attribute("llm_router.task", task)
        try:
            plan = self._plan(job, task, text_tokens)
        except NoRoute as exc:
            return self._finish(job, task, started, attempts, events, spans, None, ErrorInfo("no_route", str(exc)))
        if job_span is not None:
            job_span.set_attribute("llm_router.route", plan.models)
        deadline = self._deadlines.start(running)
        try:
            output, error = await self._attempts(job, plan, messages, prompt_tokens, attempts, events, spans)
        except asyncio.CancelledError:
            if not deadline.timed_out():
                self._end_spans(spans, None)
                raise
            output = None
            error = ErrorInfo("deadline_exceeded", f"the job deadline of {self._deadlines.seconds:g} s passed")
            if attempts:
                error = ErrorInfo(
                    "deadline_exceeded",
                    f"{error.message} after {len(attempts)} attempt(s); last: {attempts[-1].error.message if attempts[-1].error else 'ok'}",
                )
        except BaseException:
            self._end_spans(spans, None)
            raise
        else:
            if deadline.expired:  # it fired, and something below swallowed the cancellation: clear the request
                deadline.task.uncancel()
        finally:
            self._deadlines.end(deadline)
        return self._finish(job, task, started, attempts, events, spans, output, None if output is not None else error)

    def _finish(
        self,
        job: Job,
        task: str,
        started: float,
        attempts: list[Attempt],
        events: list[CostEvent],
        spans: list[tuple[Span, int]] | None,
        output: str | None,
        error: ErrorInfo | None,
    ) -> JobOutcome:
        # An answer ends the job with the attempt that gave it, at its cost event's time; a failure ends it now.
        finished_at = events[-1].ts if output is not None and events else datetime.now(UTC)
        result = self._result(job, task, started, attempts, finished_at, output=output, error=error)
        if spans:
            self._end_spans(spans, error)
        if self._telemetry.metering:
            self.metrics.job(result)
        if error is not None and spans is not None:
            span = trace.get_current_span()
            span.set_attribute("error.type", error.kind)
            span.set_status(Status(StatusCode.ERROR, error.message[:500]))
        return JobOutcome(result, events)

    @staticmethod
    def _end_spans(spans: list[tuple[Span, int]] | None, error: ErrorInfo | None) -> None:
        """End the attempt spans at the times their calls ended; only the final failure carries error.type."""
        if not spans:
            return
        for i, (span, end_ns) in enumerate(spans):
            if error is not None and i == len(spans) - 1:
                span.set_attribute("error.type", error.kind)
                span.set_status(Status(StatusCode.ERROR, error.message[:500]))
            span.end(end_time=end_ns)
        spans.clear()

    def _plan(self, job: Job, task: str, input_tokens: int) -> Plan:
        blocked = self.breakers.blocked(self._clock())
        key = (
            task,
            job.model,
            job.accuracy_floor,
            job.latency_budget_ms,
            job.cost_cap_usd,
            tuple(job.allowed_providers or ()) if job.allowed_providers is not None else None,
            job.verifiable,
            job.max_output_tokens,
            input_tokens.bit_length(),
            blocked,
            self._unavailable_key,
            self.quality.version // 16,
        )
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > 4096:
                self._plans.clear()
            plan = self._plans[key] = make_plan(
                job, task, self._config, input_tokens, self._unavailable, self.quality.rate, blocked
            )
        return plan

    async def _attempts(
        self,
        job: Job,
        plan: Plan,
        messages: list[ChatMessage],
        prompt_tokens: int,
        attempts: list[Attempt],
        events: list[CostEvent],
        spans: list[tuple[Span, int]] | None,
        jumped: bool = False,
    ) -> tuple[str | None, ErrorInfo]:
        worker = self._config.worker
        models = self._config.models
        retries = 0
        last_error = _NOTHING_TRIED
        too_long_window = 0
        reserved = reservation(prompt_tokens, plan.max_output_tokens)
        chain, rerouted_from = self._chain(plan, reserved)
        for model in chain:
            provider_name = models[model].provider
            if provider_name in self._unavailable or models[model].context_window <= too_long_window:
                continue
            provider = self._providers[provider_name]
            breaker = self.breakers.of(provider_name)
            request = CompletionRequest(job.id, model, messages, plan.max_output_tokens)
            while True:
                if breaker.opened_at is not None:  # not closed: the call may be its probe
                    breaker.start_call(self._clock())
                attempt, completion, retry_after = await self._attempt(
                    job, plan.task, provider, request, reserved, attempts, events, rerouted_from, spans
                )
                rerouted_from = None
                attempts.append(attempt)
                if attempt.error is None:
                    breaker.succeeded()
                    return completion.text if completion else "", last_error
                last_error = attempt.error
                decision = disposition(attempt.error.kind)
                if decision is Disposition.RETRY:
                    breaker.failed(self._clock())
                    if retries < worker.max_retries_per_job and breaker.allows(self._clock()):
                        # The provider's own retry delay, when it gave one, is the least we wait.
                        await self._sleep(
                            max(backoff_s(retries, worker.retry_base_s, worker.retry_cap_s), retry_after or 0.0)
                        )
                        retries += 1
                        continue
                else:
                    breaker.succeeded()  # the provider answered; the model could not
                if attempt.error.kind in OUT_OF_ROTATION:
                    self._unavailable[provider_name] = (
                        f"out of rotation after {attempt.error.kind}: {attempt.error.message}"
                    )
                    self._unavailable_key = frozenset(self._unavailable)
                if attempt.error.kind == "context_too_long":
                    too_long_window = max(too_long_window, models[model].context_window)
                break
        if last_error.kind == "context_too_long" and not jumped:
            # No model of the chain has a larger window: jump to the cheapest one that has.
            wider = self._cheapest_wider(plan, too_long_window)
            if wider is not None:
                return await self._attempts(
                    job,
                    Plan(plan.task, [wider], plan.max_output_tokens),
                    messages,
                    prompt_tokens,
                    attempts,
                    events,
                    spans,
                    jumped=True,
                )
        return None, ErrorInfo(last_error.kind, f"all {len(attempts)} attempt(s) failed; last: {last_error.message}")

    def _cheapest_wider(self, plan: Plan, window: int) -> str | None:
        """The cheapest available model outside the plan whose context window is larger than `window`."""
        models = self._config.models
        wider = [
            n
            for n, m in models.items()
            if m.context_window > window and m.provider not in self._unavailable and n not in plan.models
        ]
        return min(wider, key=lambda n: models[n].input_usd_per_mtok) if wider else None

    def _chain(self, plan: Plan, reserved: Allowance) -> tuple[list[str], str | None]:
        """The plan's chain, or, when too many jobs wait for its first model's allowance, the chain led
        by the first alternate that has capacity now (and the model it replaces)."""
        threshold = self._config.rate_limits.reroute_waiting
        first = plan.models[0]
        if not threshold or not plan.alternates or self.limits.waiting(first) < threshold:
            return plan.models, None
        now = self._clock()
        for model in plan.alternates:
            provider = self._config.models[model].provider
            if (
                provider not in self._unavailable
                and self.breakers.of(provider).allows(now)
                and self.limits.has_capacity(model, reserved)
            ):
                self.rerouted += 1
                return first_instead(plan.models, model), first
        return plan.models, None

    async def _attempt(
        self,
        job: Job,
        task: str,
        provider: Provider,
        request: CompletionRequest,
        reserved: Allowance,
        earlier: list[Attempt],
        events: list[CostEvent],
        rerouted_from: str | None = None,
        spans: list[tuple[Span, int]] | None = None,
    ) -> tuple[Attempt, Completion | None, float | None]:
        """The next attempt of the job (after those `earlier`) on `request.model`."""
        model = self._config.models[request.model]
        gates = self.limits.gates(request.model)
        number = len(earlier) + 1
        span = None
        if spans is not None:
            span = self._attempt_span(
                provider.name, request, number, _reason(earlier[-1] if earlier else None, request.model, rerouted_from)
            )

        waited = 0.0
        try:
            for gate in gates:
                if not gate.take_now(reserved):
                    waited += await gate.queue_for(reserved, job.priority)
        except ValueError as exc:  # more tokens than a whole minute's limit: this model can never take it
            attempt = Attempt(
                number,
                provider.name,
                request.model,
                "failed",
                0,
                0,
                0.0,
                0.0,
                ErrorInfo("bad_request", str(exc)),
                rerouted_from=rerouted_from,
            )
            self._record(job, task, provider, model, request, events, span, spans, attempt)
            return attempt, None, None
        started = time.monotonic()
        try:
            completion = await provider.complete(request)
        except ProviderError as exc:
            for gate in gates:
                gate.correct(reserved, Allowance(1, 0, 0))
                gate.observe(exc.rate_limits)  # type: ignore[arg-type]
                if exc.kind == "rate_limited":
                    gate.throttle(
                        exc.retry_after_s if exc.retry_after_s is not None else self._config.worker.retry_base_s
                    )
            attempt = Attempt(
                number,
                provider.name,
                request.model,
                "failed",
                0,
                0,
                0.0,
                (time.monotonic() - started) * 1000,
                ErrorInfo(exc.kind, exc.message),
                waited * 1000,
                rerouted_from,
            )
            self._record(job, task, provider, model, request, events, span, spans, attempt)
            return attempt, None, exc.retry_after_s
        except (asyncio.CancelledError, anyio.get_cancelled_exc_class()):
            # The job deadline cut the call: it is recorded, with what it cost (unknown: nothing billed).
            for gate in gates:
                gate.correct(reserved, Allowance(1, 0, 0))
            attempt = Attempt(
                number,
                provider.name,
                request.model,
                "failed",
                0,
                0,
                0.0,
                (time.monotonic() - started) * 1000,
                ErrorInfo("deadline_exceeded", "the job deadline passed during the call"),
                waited * 1000,
                rerouted_from,
            )
            self._record(job, task, provider, model, request, events, span, spans, attempt)
            raise
        latency = (time.monotonic() - started) * 1000
        used = Allowance(1, completion.input_tokens, completion.output_tokens)
        for gate in gates:
            gate.correct(reserved, used)
            if completion.rate_limits is not None:
                gate.observe(completion.rate_limits)
        cost = attempt_cost(model, completion.input_tokens, completion.output_tokens)
        error = check_answer(completion)
        if error is None:
            if job.verifiable:  # only a job with checks or structured output can fail them
                error = verify(job, completion.text)
                self.quality.record(task, request.model, error is None)
        elif error.kind in ("refused", "truncated", "empty_output"):
            self.quality.record(task, request.model, False)
        attempt = Attempt(
            number,
            provider.name,
            request.model,
            "failed" if error else "ok",
            completion.input_tokens,
            completion.output_tokens,
            cost,
            latency,
            error,
            waited * 1000,
            rerouted_from,
        )
        self._record(job, task, provider, model, request, events, span, spans, attempt, completion)
        return attempt, completion, None

    def _record(
        self,
        job: Job,
        task: str,
        provider: Provider,
        model: ModelConfig,
        request: CompletionRequest,
        events: list[CostEvent],
        span: Span | None,
        spans: list[tuple[Span, int]] | None,
        attempt: Attempt,
        completion: Completion | None = None,
    ) -> None:
        """An attempt is over: its cost event, its metrics, and its span's outcome (ended with the job)."""
        events.append(self._cost_event(job, task, attempt))
        if self._telemetry.metering:
            gen_ai_provider, server = self._gen_ai[provider.name]
            self.metrics.attempt(attempt, model.api_model or request.model, gen_ai_provider, server, task, job.tenant)
        if span is not None and spans is not None:
            self._describe(span, request, attempt, completion)
            spans.append((span, time.time_ns()))

    def _attempt_span(
        self, provider: str, request: CompletionRequest, number: int, reason: tuple[str, str | None]
    ) -> Span:
        """The attempt's span (`chat {model}`, CLIENT), a child of the job's process span; ended by the job."""
        gen_ai_provider, server = self._gen_ai[provider]
        api_model = self._config.models[request.model].api_model or request.model
        attributes: dict[str, object] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": gen_ai_provider,
            "gen_ai.request.model": api_model,
            "gen_ai.request.max_tokens": request.max_output_tokens,
            "llm_router.provider": provider,
            "llm_router.model": request.model,
            "llm_router.attempt": number,
            "llm_router.attempt.reason": reason[0],
        }
        if server:
            attributes["server.address"] = server
        if reason[1]:
            attributes["llm_router.escalation.reason"] = reason[1]
        if self._telemetry.capture_content:
            attributes["gen_ai.input.messages"] = orjson.dumps(
                [{"role": m.role, "parts": [{"type": "text", "content": m.content}]} for m in request.messages]
            ).decode()
        return self._telemetry.tracer.start_span(f"chat {api_model}", kind=SpanKind.CLIENT, attributes=attributes)  # type: ignore[arg-type]

    def _describe(
        self, span: Span, request: CompletionRequest, attempt: Attempt, completion: Completion | None
    ) -> None:
        """What the attempt came to: the response, its tokens, cost and wait (error.type only on the job's final failure)."""
        attributes: dict[str, object] = {
            "llm_router.outcome": attempt.outcome,
            "llm_router.cost_usd": attempt.cost_usd,
            "llm_router.rate_limit_wait_ms": attempt.rate_limit_wait_ms,
        }
        if attempt.rerouted_from:
            attributes["llm_router.rerouted_from"] = attempt.rerouted_from
        if attempt.error is not None:
            attributes["llm_router.error.kind"] = attempt.error.kind
        if completion is not None:
            attributes["gen_ai.response.model"] = (
                completion.response_model or self._config.models[request.model].api_model or request.model
            )
            if completion.request_id:
                attributes["gen_ai.response.id"] = completion.request_id
            attributes["gen_ai.response.finish_reasons"] = (completion.finish_reason,)
            attributes["gen_ai.usage.input_tokens"] = completion.input_tokens
            attributes["gen_ai.usage.output_tokens"] = completion.output_tokens
            if self._telemetry.capture_content:
                attributes["gen_ai.output.messages"] = orjson.dumps(
                    [
                        {
                            "role": "assistant",
                            "parts": [{"type": "text", "content": completion.text}],
                            "finish_reason": completion.finish_reason,
                        }
                    ]
                ).decode()
        span.set_attributes(attributes)  # type: ignore[arg-type]

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
        finished_at: datetime,
        output: str | None = None,
        error: ErrorInfo | None = None,
    ) -> Result:
        last = attempts[-1] if attempts else None
        return Result(
            job_id=job.id,
            status="failed" if error else "ok",
            attempts=attempts,
            usage=Usage(sum(a.input_tokens for a in attempts), sum(a.output_tokens for a in attempts))
            if len(attempts) != 1
            else Usage(last.input_tokens, last.output_tokens),  # type: ignore[union-attr]
            cost_usd=sum(a.cost_usd for a in attempts) if len(attempts) != 1 else last.cost_usd,  # type: ignore[union-attr]
            latency_ms=(time.monotonic() - started) * 1000,
            finished_at=finished_at,
            output=output,
            model=last.model if last and not error else None,
            provider=last.provider if last and not error else None,
            task=task,
            tenant=job.tenant,
            error=error,
        )
