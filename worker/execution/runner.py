"""The attempt loop: run a job's plan, model by model, until one answer passes.

A transient error (rate limited, overloaded, 5xx, timeout) retries the same model after an
exponential backoff with full jitter, at least the provider's own retry delay, within the job's
retry budget. A capability failure (refused, truncated, empty, not the JSON asked for, failed
verification) escalates to the next model; context too long jumps to the next model whose window is
larger; an answer cut at the worker's own output cap (the job set none) first tries the same model
once more with a larger cap. Quota and auth errors
take the provider out of rotation; consecutive failures open its circuit breaker. The job deadline
bounds it all. Every attempt is recorded with its tokens and cost; outcomes that show whether the model
can do the task (a checked answer, a refusal, an empty answer) teach the learned success rates, an
answer to a JSON job teaches the model's JSON format reliability, and a truncation teaches nothing.

The way of a job through `JobRunner`: `run` takes it (`_start`: its task, prompt estimate and span),
plans it (`_plan`), tries the plan's models (`_attempts`, each attempt in `_attempt`, recorded by
`_record`) within its deadline, and makes its result (`_finish`). What the job carries from one step
to the next is one `JobRun`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from math import prod
from urllib.parse import urlsplit

import anyio
import msgspec
import orjson
from msgspec import Struct
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from worker.config import Config
from worker.errors import TRANSIENT, Disposition, ProviderError, disposition
from worker.execution.breakers import Breaker, Breakers, BreakerState
from worker.execution.health import BREAKER_GAUGE, ProviderHealth
from worker.execution.job_run import JobRun
from worker.messages import (
    Attempt,
    ChatMessage,
    CostEvent,
    ErrorInfo,
    ImagePart,
    Job,
    ParkedJob,
    Result,
    Route,
    TextPart,
    ToolCall,
)
from worker.observability.metrics import Metrics
from worker.observability.telemetry import OFF, PROVIDER_NAMES, Telemetry
from worker.providers import dropped_params
from worker.providers.base import BatchLine, Completion, CompletionRequest, Provider
from worker.ratelimit.gates import Gate
from worker.ratelimit.gates import Usage as Allowance
from worker.ratelimit.headers import RateLimitState
from worker.ratelimit.limits import RateLimits
from worker.routing.agreement import agree, answer_key
from worker.routing.capabilities import needs
from worker.routing.classify import Classifier, TaskClassifier
from worker.routing.judge import JUDGE_MAX_OUTPUT_TOKENS, judge_messages, passed
from worker.routing.learning import QualityModel
from worker.routing.plan import NoRoute, Plan, first_instead, make_plan
from worker.routing.pricing import MESSAGE_OVERHEAD_TOKENS, attempt_cost, content_tokens, extra_input_tokens
from worker.routing.verify import has_answer_checks, verify, wants_json
from worker.timers import Deadlines

OUT_OF_ROTATION = frozenset({"quota", "auth"})
_ONE_REQUEST = Allowance(requests=1, input_tokens=0, output_tokens=0)  # what a call that billed nothing used


class JobOutcome(Struct, kw_only=True):
    """What a job produces: its one result, one cost event per attempt and, for an answered job, its route
    (kept for the feedback that may come later)."""

    result: Result
    cost_events: list[CostEvent]
    route: Route | None = None


class Parked(Struct, kw_only=True):
    """A job handed to a provider's batch: its record for the batches topic, and the cost events of the
    attempts it made before."""

    job: ParkedJob
    cost_events: list[CostEvent]


class _Park(Exception):
    """The chain's next model goes by batch: the job parks at this step of its chain."""

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


def check_answer(completion: Completion) -> ErrorInfo | None:
    """Why a completed call does not count as an answer, or None when it does (tool calls are an answer,
    and a tool call that could not be read is judged by `verify`, as a format failure)."""
    if completion.finish_reason == "length":
        return ErrorInfo(kind="truncated", message="the answer was cut off at the output-token cap")
    if completion.finish_reason in ("refusal", "content_filter"):
        return ErrorInfo(kind="refused", message="the model refused or the answer was filtered")
    if not completion.text.strip() and not completion.tool_calls and not completion.tool_call_error:
        return ErrorInfo(kind="empty_output", message="the model returned no text")
    return None


_RNG = random.Random()


def reservation(prompt_tokens: int, max_output_tokens: int) -> Allowance:
    """What a call reserves from the allowance before it is made: the prompt's estimated tokens (with
    each message's overhead) and the whole output cap."""
    return Allowance(requests=1, input_tokens=prompt_tokens, output_tokens=max_output_tokens)


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
        batch_discounts: dict[str, float] | None = None,
    ) -> None:
        self._config = config
        # The providers whose batch API jobs that can wait may use, each with the share of the price it bills.
        self._batch_discounts = dict(batch_discounts or {}) if config.batch.enabled else {}
        self._telemetry = telemetry
        self.metrics = Metrics(telemetry.meter, telemetry.distributions)
        self._gen_ai = {
            name: (PROVIDER_NAMES.get(p.kind, name), urlsplit(p.base_url).hostname if p.base_url else None)
            for name, p in config.providers.items()
        }
        self._providers = providers
        self._wires = tuple(sorted({p.kind for p in config.providers.values()}))  # for image token estimates
        self._unavailable = dict(unavailable or {})
        self._unavailable_key = frozenset(self._unavailable)  # part of the plan cache's key
        self._out_of_rotation_key: frozenset[str] = frozenset()  # empty: no job needs to ask for a probe
        self._classifier = classifier or Classifier(config.classifier)
        self._sleep = sleep
        self._clock = clock
        self.quality = QualityModel(config)
        self.health = ProviderHealth(config.routing.rotation_retry_s, clock)
        self.breakers = Breakers(
            config.routing.breaker_failures, config.routing.breaker_cooldown_s, self.health.breaker_changed
        )
        self.limits = RateLimits(config)
        self._plans: dict[tuple, Plan] = {}
        self._deadlines = Deadlines(config.routing.job_deadline_s)
        self.rerouted = 0  # jobs sent to another model of their chain for want of capacity
        self._observe_providers()

    def _observe_providers(self) -> None:
        """Gauges of the providers' states: in rotation, reachable, the breaker's state."""
        names = list(self._providers)
        self.metrics.gauge(
            "llm_router.provider.available",
            "1",
            "1 while the provider is in rotation, 0 while a quota or auth error keeps it out",
            lambda: self.health.availability(names),
        )
        self.metrics.gauge(
            "llm_router.provider.reachable",
            "1",
            "0 while calls to the provider cannot connect, else 1",
            lambda: [(0 if p in self.health.unreachable() else 1, {"llm_router.provider": p}) for p in names],
        )
        self.metrics.gauge(
            "llm_router.breaker.state",
            "1",
            "Each provider's circuit breaker: 0 closed, 1 half-open, 2 open",
            lambda: [
                (BREAKER_GAUGE[state], {"llm_router.provider": p})
                for p, state in self.breakers.states(self._clock()).items()
            ],
        )

    def healthy(self) -> bool:
        """Whether some provider in rotation has its breaker closed: jobs flow, not only probes."""
        now = self._clock()
        return any(
            name not in self._unavailable and self.breakers.of(name).state(now) is BreakerState.CLOSED
            for name in self._providers
        )

    def serving(self) -> bool:
        """Whether some provider can take a job now: in rotation (or its rotation retry due) and its breaker
        letting a call through."""
        now = self._clock()
        retry_due = self.health.retry_due()
        return any(
            (name not in self._unavailable or (retry_due and name in self.health.out_of_rotation()))
            and self.breakers.of(name).allows(now)
            for name in self._providers
        )

    async def run(self, job: Job, running: asyncio.Task | None = None, due: float | None = None) -> JobOutcome | Parked:
        """Run `job` to its result, or until it parks for a provider's batch. Never raises for a provider's
        failure: that is a failed result.

        `running` is the task running it (default: the current one), which the job deadline cancels; `due`:
        the job's deadline (epoch seconds), when it has one."""
        run = self._start(job)
        run.due = due
        if self._out_of_rotation_key:
            run.probe = self.health.take_probe()
        try:
            try:
                plan = self._plan(run)
            except NoRoute as exc:
                return self._finish(run, None, ErrorInfo(kind="no_route", message=str(exc)))
            if run.span is not None:
                run.span.set_attribute("llm_router.route", plan.models)
            return await self._run(run, plan, running)
        finally:
            if run.probe is not None:
                self._probe_ended(run)

    def batch_request(self, parked: ParkedJob) -> CompletionRequest:
        """The call a parked job's batch line makes: to the model of its step, as a synchronous call would."""
        model = parked.model
        messages = parked.job.messages or [ChatMessage(role="user", content=parked.job.prompt or "")]
        return CompletionRequest.of(
            parked.job,
            model=model,
            model_config=self._config.models[model],
            messages=messages,
            max_output_tokens=parked.max_output_tokens,
        )

    async def resume(self, parked: ParkedJob, line: BatchLine | None) -> JobOutcome | Parked:
        """Go on with a parked job: its batch line's answer (`line`), or, None, the batch given up at the
        job's give-up time. An answer that passes ends the job; a failed answer goes on to the next model
        (by batch again while the deadline leaves room); a line without an answer, or none, asks the same
        model synchronously."""
        run = self._start(parked.job, task=parked.task)
        run.due, run.attempts = parked.due, list(parked.attempts)
        run.started -= time.time() - parked.taken_at  # the result's latency counts from when the job was taken
        plan = Plan(
            task=parked.task,
            models=parked.models,
            max_output_tokens=parked.max_output_tokens,
            batch=tuple(parked.batch_models),
        )
        model, step = parked.model, parked.step
        if line is None and parked.batch_id is None:  # never submitted: nothing was asked
            return await self._run(run, plan, None, start=step, batch_from=step + 1)
        if line is None:
            late = BatchLine(
                custom_id=parked.job.id,
                error_kind="batch_late",
                error_message="the batch had not answered by the job's give-up time",
            )
            self._batch_answer(run, parked, late)
            return await self._run(run, plan, None, start=step, batch_from=step + 1)
        completion = self._batch_answer(run, parked, line)
        if completion is None:  # no answer in the line: the same model, synchronously
            return await self._run(run, plan, None, start=step, batch_from=step + 1)
        if run.attempts[-1].error is None:
            run.answer, run.answer_model = completion, model
            return self._finish(run, completion.text, None)
        return await self._run(run, plan, None, start=step + 1)

    def _batch_answer(self, run: JobRun, parked: ParkedJob, line: BatchLine) -> Completion | None:
        """Record the attempt a batch line was: its answer assessed as a synchronous one, at the batch price;
        the answer, or None when the line has none."""
        model = parked.model
        provider = self._provider_of(model)
        latency_ms = max(0.0, time.time() - parked.parked_at) * 1000
        completion = line.completion
        if completion is None:
            error = ErrorInfo(kind=line.error_kind or "server", message=line.error_message or "the batch line failed")
            attempt = run.attempt(provider, model, error, latency_ms=latency_ms, batch_id=parked.batch_id)
            run.attempts.append(attempt)
            run.last_error = error
            self._record(run, attempt, None)
            return None
        attempt = run.attempt(
            provider,
            model,
            self._assess(run, model, completion),
            completion=completion,
            cost_usd=self.batch_cost(model, completion),
            latency_ms=latency_ms,
            batch_id=parked.batch_id,
        )
        run.attempts.append(attempt)
        if attempt.error is not None:
            run.last_error = attempt.error
        self._record(run, attempt, None, completion)
        return completion

    def batch_cost(self, model: str, completion: Completion) -> float:
        """What a batch line's answer costs: the synchronous price at the provider's batch discount."""
        config = self._config.models[model]
        full = attempt_cost(
            config,
            completion.input_tokens,
            completion.output_tokens,
            completion.cached_input_tokens,
            completion.cache_write_input_tokens,
        )
        return full * self._batch_discounts.get(config.provider, 1.0)

    def _provider_of(self, model: str) -> str:
        return self._config.models[model].provider

    def _batchable(self, run: JobRun) -> bool:
        """Whether the job's deadline leaves room for a batch now (and a provider has a batch API)."""
        return (
            bool(self._batch_discounts)
            and run.due is not None
            and run.due - time.time() >= self._config.batch.min_window_s
        )

    def _park(self, run: JobRun, plan: Plan, step: int) -> Parked:
        """The job parks for a batch of its chain's model at `step`."""
        self._end_spans(run.spans, None)
        now = time.time()
        assert run.due is not None
        record = ParkedJob(
            job=run.job,
            task=run.task,
            models=plan.models,
            batch_models=list(plan.batch),
            max_output_tokens=plan.max_output_tokens,
            step=step,
            due=run.due,
            taken_at=now - (time.monotonic() - run.started),
            parked_at=now,
            attempts=run.attempts,
        )
        return Parked(job=record, cost_events=run.cost_events)

    async def _run(
        self, run: JobRun, plan: Plan, running: asyncio.Task | None, start: int = 0, batch_from: int = 0
    ) -> JobOutcome | Parked:
        """Run the plan from the chain's model at `start` (the models before `batch_from` synchronously) within
        the job deadline: the result, or the job parked for a batch."""
        error: ErrorInfo | None
        deadline = self._deadlines.start(running)
        try:
            output = await self._attempts(run, plan, start=start, batch_from=batch_from)
        except _Park as park:
            return self._park(run, plan, park.step)  # the deadline ends below
        except asyncio.CancelledError:
            if not deadline.timed_out():
                self._end_spans(run.spans, None)
                raise
            output, error = None, run.deadline_passed(self._deadlines.seconds)
        except BaseException:
            self._end_spans(run.spans, None)
            raise
        else:
            error = None if output is not None else run.failure()
            if deadline.expired:  # it fired, and something below swallowed the cancellation: clear the request
                deadline.task.uncancel()
        finally:
            self._deadlines.end(deadline)
        return self._finish(run, output, error)

    def _start(self, job: Job, task: str | None = None) -> JobRun:
        """The job taken: its task (classified unless given), its prompt's token estimate (made once a job, for
        the plan and the reservations: its text, and its tools, schema and images, `pricing.extra_input_tokens`),
        the capabilities it needs and its span."""
        started = time.monotonic()
        task = task or self._classifier.classify(job)
        messages = job.messages if job.messages is not None else [ChatMessage(role="user", content=job.prompt or "")]
        text_tokens = content_tokens(messages) + extra_input_tokens(job, messages, self._wires)
        span = trace.get_current_span() if self._telemetry.tracing else None
        if span is not None and not span.is_recording():
            span = None  # not sampled: no spans of its attempts either (the context still travels)
        if span is not None:
            span.set_attribute("llm_router.task", task)
        return JobRun(
            job=job,
            task=task,
            messages=messages,
            text_tokens=text_tokens,
            prompt_tokens=text_tokens + MESSAGE_OVERHEAD_TOKENS * len(messages),
            started=started,
            span=span,
            spans=[] if span is not None else None,
            needs=needs(job),
        )

    def _plan(self, run: JobRun) -> Plan:
        """The job's plan, cached by everything that decides it. Raises NoRoute."""
        job = run.job
        blocked = self.breakers.blocked(self._clock())
        unavailable, unavailable_key = self._unavailable, self._unavailable_key
        if run.probe is not None:  # the probe job may plan with the provider out of rotation
            unavailable = {p: why for p, why in unavailable.items() if p != run.probe}
            unavailable_key = frozenset(unavailable)
        key = (
            run.task,
            job.model,
            job.accuracy_floor,
            job.latency_budget_ms,
            job.cost_cap_usd,
            tuple(job.allowed_providers or ()) if job.allowed_providers is not None else None,
            job.verifiable,
            job.judged,
            wants_json(job),
            job.max_output_tokens,
            run.needs,
            run.text_tokens.bit_length(),
            blocked,
            unavailable_key,
            self.quality.version // 16,
            self._batchable(run),
        )
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > 4096:
                self._plans.clear()
            # A JSON job needs a correct answer that is JSON too: the model's format reliability counts.
            rate = self.quality.json_rate if wants_json(job) else self.quality.rate
            plan = self._plans[key] = make_plan(
                job,
                run.task,
                self._config,
                run.text_tokens,
                unavailable,
                rate,
                blocked,
                run.needs,
                judge_rate=self.quality.judge_rate,
                wrong_agreement=self.quality.wrong_agreement(run.task),
                batch_discount=self._batch_discount() if self._batchable(run) else None,
            )
        return plan

    def _batch_discount(self) -> dict[str, float]:
        """Each model whose provider has a batch API, with the share of the price a batch line bills."""
        discounts = self._batch_discounts
        return {m: discounts[c.provider] for m, c in self._config.models.items() if c.provider in discounts}

    async def _attempts(
        self, run: JobRun, plan: Plan, jumped: bool = False, start: int = 0, batch_from: int = 0
    ) -> str | None:
        """Run the plan: its agreement group first, if any; then its chain in order from `start`, each model
        again after a transient failure, the first answer judged when the plan has a judge. The answer, or
        None when no model gave one. A model the plan asks by batch (from `batch_from` on), while the job's
        deadline leaves room, parks the job (raises _Park)."""
        planned = reservation(run.prompt_tokens, plan.max_output_tokens)
        if plan.agree:
            agreed = await self._agreement(run, plan, planned)
            if agreed is not None:
                return agreed
        judge = plan.judge
        chain = self._chain(run, plan, planned) if start == 0 else plan.models
        for step in range(start, len(chain)):
            model = chain[step]
            if step >= batch_from and model in plan.batch and self._batchable(run):
                raise _Park(step)
            completion = await self._answer(run, plan, model, planned)
            if completion is None:
                continue
            if judge is not None:
                passed = await self._judged(run, judge, model, completion)
                judge = None  # one judgement a job: after a fail, the next answer stands
                if not passed:
                    continue
            self._settle_disputes(run, model, completion)
            run.answer, run.answer_model = completion, model
            return completion.text
        if run.last_error is not None and run.last_error.kind == "context_too_long" and not jumped:
            # No model of the chain has a larger window: jump to the cheapest one that has.
            wider = self._cheapest_wider(plan, run.too_long_window)
            if wider is not None:
                jump = Plan(task=plan.task, models=[wider], max_output_tokens=plan.max_output_tokens)
                return await self._attempts(run, jump, jumped=True)
        return None

    async def _answer(
        self, run: JobRun, plan: Plan, model: str, planned: Allowance, request: CompletionRequest | None = None
    ) -> Completion | None:
        """`model`'s answer to the job (or, given `request` with role judge, its grade): its attempts until
        one passes, the job's retry budget runs out or the model is left; None when it gave no answer."""
        models = self._config.models
        provider_name = models[model].provider
        if provider_name in self._unavailable and provider_name != run.probe:
            return None
        if models[model].context_window <= run.too_long_window:
            return None
        provider = self._providers[provider_name]
        breaker = self.breakers.of(provider_name)
        role = "answer" if request is None else "judge"
        if request is None:
            cap = self._output_cap(run, plan, model)
            reserved = planned if cap == plan.max_output_tokens else reservation(run.prompt_tokens, cap)
            request = CompletionRequest.of(
                run.job, model=model, model_config=models[model], messages=run.messages, max_output_tokens=cap
            )
        else:
            cap, reserved = request.max_output_tokens, planned
        while True:
            if breaker.opened_at is not None:  # not closed: the call may be its probe
                breaker.start_call(self._clock())
            attempt, completion, retry_after_s = await self._attempt(run, provider, request, reserved, role)
            run.attempts.append(attempt)
            if provider_name == run.probe and (attempt.error is None or attempt.error.kind not in TRANSIENT):
                run.probe_answered = attempt.error is None or attempt.error.kind not in OUT_OF_ROTATION
            if attempt.error is None:
                breaker.succeeded()
                return completion
            run.last_error = attempt.error
            delay_s = self._retry_delay(breaker, attempt.error, run.retries, retry_after_s)
            if delay_s is None:
                larger = self._larger_cap(run, model, attempt.error, cap) if role == "answer" else None
                if larger is not None:  # cut at the worker's own cap: the same model once, with room to finish
                    cap = run.raised_cap = larger
                    reserved = reservation(run.prompt_tokens, cap)
                    request = msgspec.structs.replace(request, max_output_tokens=cap)
                    continue
                self._leave(run, provider_name, model, attempt.error)
                return None
            await self._sleep(delay_s)
            run.retries += 1

    async def _agreement(self, run: JobRun, plan: Plan, planned: Allowance) -> str | None:
        """Ask the plan's agreement group in parallel: their answer when they all answered and agree (each
        model learns from it, weighed by how often wrong answers agree), else None, the answers kept to be
        compared with the one that stands."""
        group = plan.agree
        completions = await asyncio.gather(*(self._answer(run, plan, m, planned) for m in group))
        answered = {m: c for m, c in zip(group, completions, strict=True) if c is not None}
        if len(answered) == len(group) and agree([c.text for c in answered.values()]):
            rates = [self.quality.rate(run.task, m) for m in group]
            right = prod(rates)
            wrong = prod(1 - p for p in rates) * self.quality.wrong_agreement(run.task) ** (len(group) - 1)
            for m in group:  # P(all right | all agree): what the agreement says of each
                self.quality.record(run.task, m, True, right / (right + wrong))
            run.answer, run.answer_model = answered[group[0]], group[0]
            run.agreed = list(group[1:])
            return run.answer.text
        run.disputed = answered
        return None

    async def _judged(self, run: JobRun, judge: str, model: str, completion: Completion) -> bool:
        """Whether `judge` passes `model`'s answer (a judge that cannot be called has not passed it). A pass
        teaches the model, weighed by the judge's reliability; a fail leaves the answer to be compared with
        the one that stands."""
        messages = judge_messages(run.job, run.messages, completion.text)
        request = CompletionRequest(
            job_id=run.job.id, model=judge, messages=messages, max_output_tokens=JUDGE_MAX_OUTPUT_TOKENS
        )
        prompt_tokens = content_tokens(messages) + MESSAGE_OVERHEAD_TOKENS * len(messages)
        reserved = reservation(prompt_tokens, JUDGE_MAX_OUTPUT_TOKENS)
        plan = Plan(task=run.task, models=[judge], max_output_tokens=JUDGE_MAX_OUTPUT_TOKENS)
        if await self._answer(run, plan, judge, reserved, request) is not None:
            reliability = self.quality.judge_rate(run.task, judge)
            self.quality.record(run.task, model, True, max(0.0, 2 * reliability - 1))
            run.judged_by = judge
            return True
        verdict = run.attempts[-1]
        run.disputed = {model: completion}
        run.judge_failed = judge if verdict.error is not None and verdict.error.kind == "judge_failed" else None
        return False

    def _settle_disputes(self, run: JobRun, model: str, completion: Completion) -> None:
        """`model`'s answer stands over the answers that disagreed with it (or that the judge failed): each of
        them learns whether it agreed, weighed by the standing model's success rate, as the judge learns
        whether its fail was right."""
        if not run.disputed:
            return
        weight = self.quality.rate(run.task, model)
        standing = answer_key(completion.text)
        for other, answer in run.disputed.items():
            same = answer_key(answer.text) == standing
            self.quality.record(run.task, other, same, weight)
            if not same:
                run.overruled.append(other)
            if run.judge_failed is not None:
                self.quality.record_judge(run.task, run.judge_failed, not same, weight)
        run.disputed = {}

    def _output_cap(self, run: JobRun, plan: Plan, model: str) -> int:
        """The output-token cap of a call to `model`: the plan's, or the larger one a truncated answer led
        to, within the model's context window."""
        if not run.raised_cap:
            return plan.max_output_tokens
        room = self._config.models[model].context_window - run.prompt_tokens
        return max(plan.max_output_tokens, min(run.raised_cap, room))

    def _larger_cap(self, run: JobRun, model: str, error: ErrorInfo, cap: int) -> int | None:
        """After `model`'s answer was cut at `cap`: the larger cap to try it again with (double, within its
        context window), or None. Only once a job, and only when the cap was the worker's: a job's own
        `max_output_tokens` is a hard limit."""
        if error.kind != "truncated" or run.job.max_output_tokens is not None or run.raised_cap:
            return None
        larger = min(2 * cap, self._config.models[model].context_window - run.prompt_tokens)
        return larger if larger > cap else None

    def _chain(self, run: JobRun, plan: Plan, reserved: Allowance) -> list[str]:
        """The plan's chain, or, when too many jobs wait for its first model's allowance, the chain led
        by the first alternate that has capacity now (`run.rerouted_from` then names the model it replaces)."""
        threshold = self._config.rate_limits.reroute_waiting
        first = plan.models[0]
        if not threshold or not plan.alternates or self.limits.waiting(first) < threshold:
            return plan.models
        now = self._clock()
        for model in plan.alternates:
            provider = self._config.models[model].provider
            if (
                provider not in self._unavailable
                and self.breakers.of(provider).allows(now)
                and self.limits.has_capacity(model, reserved)
            ):
                self.rerouted += 1
                run.rerouted_from = first
                return first_instead(plan.models, model)
        return plan.models

    def _retry_delay(
        self, breaker: Breaker, error: ErrorInfo, retries: int, retry_after_s: float | None
    ) -> float | None:
        """After a failed attempt, the seconds to wait before the same model again, or None to leave it.

        A transient failure counts against the provider's breaker, and is retried while the job's retry
        budget and the breaker allow; any other failure means the provider answered and the model could not."""
        if disposition(error.kind) is not Disposition.RETRY:
            breaker.succeeded()
            return None
        breaker.failed(self._clock())
        worker = self._config.worker
        if retries >= worker.max_retries_per_job or not breaker.allows(self._clock()):
            return None
        # The provider's own retry delay, when it gave one, is the least we wait.
        return max(backoff_s(retries, worker.retry_base_s, worker.retry_cap_s), retry_after_s or 0.0)

    def _leave(self, run: JobRun, provider_name: str, model: str, error: ErrorInfo) -> None:
        """The job leaves `model` after `error`: a quota or auth error takes its provider out of rotation
        (for every job); a prompt too long for it is too long for every window as small."""
        if error.kind in OUT_OF_ROTATION:
            self._unavailable[provider_name] = f"out of rotation after {error.kind}: {error.message}"
            self._unavailable_key = frozenset(self._unavailable)
            self.health.take_out(provider_name, error.kind, error.message)
            self._out_of_rotation_key = self.health.out_of_rotation()
        if error.kind == "context_too_long":
            run.too_long_window = max(run.too_long_window, self._config.models[model].context_window)

    def _probe_ended(self, run: JobRun) -> None:
        """The probe job is over: its provider back in rotation when it answered (not with quota or auth)."""
        assert run.probe is not None
        self.health.probe_ended(run.probe, run.probe_answered is True)
        if run.probe_answered is True:
            self._unavailable.pop(run.probe, None)
            self._unavailable_key = frozenset(self._unavailable)
            self._out_of_rotation_key = self.health.out_of_rotation()

    def _cheapest_wider(self, plan: Plan, window: int) -> str | None:
        """The cheapest available model outside the plan whose context window is larger than `window`."""
        models = self._config.models
        wider = [
            n
            for n, m in models.items()
            if m.context_window > window and m.provider not in self._unavailable and n not in plan.models
        ]
        return min(wider, key=lambda n: models[n].input_usd_per_mtok) if wider else None

    async def _attempt(
        self, run: JobRun, provider: Provider, request: CompletionRequest, reserved: Allowance, role: str = "answer"
    ) -> tuple[Attempt, Completion | None, float | None]:
        """The job's next attempt, on `request.model`: wait for the allowance, call, assess the answer (or, for
        a judge, read its grade), record it. Returns the attempt, the completion and the provider's retry delay."""
        span = self._attempt_span(run, provider.name, request) if run.spans is not None else None
        gates = self.limits.gates(request.model)
        waited_s = 0.0
        try:
            for gate in gates:
                if not gate.take_now(reserved):
                    waited_s += await gate.queue_for(reserved, run.job.priority)
        except ValueError as exc:  # more tokens than a whole minute's limit: this model can never take it
            error = ErrorInfo(kind="bad_request", message=str(exc))
            attempt = run.attempt(provider.name, request.model, error, role=role)
            self._record(run, attempt, span)
            return attempt, None, None
        dropped = dropped_params(self._config.providers[provider.name], request)

        def failed(error: ErrorInfo, latency_ms: float) -> Attempt:
            """The attempt of a call that got no answer (it billed nothing), recorded."""
            attempt = run.attempt(
                provider.name,
                request.model,
                error,
                latency_ms=latency_ms,
                waited_ms=waited_s * 1000,
                dropped=dropped,
                role=role,
            )
            self._record(run, attempt, span)
            return attempt

        started = time.monotonic()
        try:
            completion = await provider.complete(request)
        except ProviderError as exc:
            latency_ms = (time.monotonic() - started) * 1000
            if exc.connect_failed:
                self.health.call_failed_to_connect(provider.name, exc.message)
            elif exc.status is not None:
                self.health.answered(provider.name)
            self._refused_call(gates, reserved, exc)
            attempt = failed(ErrorInfo(kind=exc.kind, message=exc.message), latency_ms)
            return attempt, None, exc.retry_after_s
        except (asyncio.CancelledError, anyio.get_cancelled_exc_class()):
            # The job deadline cut the call: it is recorded, with what it cost (unknown: nothing billed).
            latency_ms = (time.monotonic() - started) * 1000
            for gate in gates:
                gate.correct(reserved, _ONE_REQUEST)
            failed(ErrorInfo(kind="deadline_exceeded", message="the job deadline passed during the call"), latency_ms)
            raise
        latency_ms = (time.monotonic() - started) * 1000
        self.health.answered(provider.name)
        used = Allowance(requests=1, input_tokens=completion.input_tokens, output_tokens=completion.output_tokens)
        for gate in gates:
            gate.correct(reserved, used)
            if completion.rate_limits is not None:
                gate.observe(completion.rate_limits)
        attempt = run.attempt(
            provider.name,
            request.model,
            self._assess(run, request.model, completion) if role == "answer" else _grade(request.model, completion),
            completion=completion,
            cost_usd=attempt_cost(
                self._config.models[request.model],
                completion.input_tokens,
                completion.output_tokens,
                completion.cached_input_tokens,
                completion.cache_write_input_tokens,
            ),
            latency_ms=latency_ms,
            waited_ms=waited_s * 1000,
            dropped=dropped,
            role=role,
        )
        self._record(run, attempt, span, completion)
        return attempt, completion, None

    def _refused_call(self, gates: Sequence[Gate], reserved: Allowance, exc: ProviderError) -> None:
        """A call the provider refused: it billed nothing; what it said of the limits tightens the gates,
        and a rate limit closes them for its retry delay."""
        rate_limits = exc.rate_limits if isinstance(exc.rate_limits, RateLimitState) else None
        for gate in gates:
            gate.correct(reserved, _ONE_REQUEST)
            gate.observe(rate_limits)
            if exc.kind == "rate_limited":
                gate.throttle(exc.retry_after_s if exc.retry_after_s is not None else self._config.worker.retry_base_s)

    def _assess(self, run: JobRun, model: str, completion: Completion) -> ErrorInfo | None:
        """Why `model`'s answer does not count, or None when it does. What the outcome shows is learned:
        a refusal, an empty or a checked answer teach the model's accuracy for the task type; an answer to
        a JSON job teaches its JSON format reliability; a truncation teaches nothing (the cap cut it)."""
        error = check_answer(completion)
        if error is not None:
            if error.kind != "truncated":  # refused or empty: the model failed the task
                self.quality.record(run.task, model, False)
            return error
        called = bool(completion.tool_calls or completion.tool_call_error)
        if not run.job.verifiable and not called:  # only a job with checks, structured output or tools can fail
            return None
        error = verify(run.job, completion.text, completion.tool_calls, completion.tool_call_error)
        formatted = error is None or error.kind != "format_failed"
        if called:  # the answer is its tool calls: neither its JSON nor its checks were judged
            return error
        if wants_json(run.job):
            self.quality.record_format(model, formatted)
        if formatted and has_answer_checks(run.job):  # a check judged the answer: right or wrong
            self.quality.record(run.task, model, error is None)
        return error

    def _record(self, run: JobRun, attempt: Attempt, span: Span | None, completion: Completion | None = None) -> None:
        """An attempt is over: its cost event, its metrics, and its span's outcome (ended with the job)."""
        run.cost_events.append(run.cost_event(attempt))
        if self._telemetry.metering:
            gen_ai_provider, server = self._gen_ai[attempt.provider]
            api_model = self._config.models[attempt.model].api_model or attempt.model
            self.metrics.attempt(attempt, api_model, gen_ai_provider, server, run.task, run.job.tenant)
        if span is not None and run.spans is not None:
            self._describe(span, attempt, completion)
            run.spans.append((span, time.time_ns()))

    def _finish(self, run: JobRun, output: str | None, error: ErrorInfo | None) -> JobOutcome:
        """The job is over: its result, its spans ended, its metrics."""
        result = run.result(output, error)
        if run.spans:
            self._end_spans(run.spans, error)
        if self._telemetry.metering:
            self.metrics.job(result)
        if error is not None and run.span is not None:
            run.span.set_attribute("error.type", error.kind)
            run.span.set_status(Status(StatusCode.ERROR, error.message[:500]))
        return JobOutcome(result=result, cost_events=run.cost_events, route=run.route(result))

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

    def _attempt_span(self, run: JobRun, provider: str, request: CompletionRequest) -> Span:
        """The span of the job's next attempt (`chat {model}`, CLIENT), a child of the job's process span;
        ended by the job."""
        gen_ai_provider, server = self._gen_ai[provider]
        api_model = self._config.models[request.model].api_model or request.model
        reason, escalated_by = run.reason(request.model)
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": gen_ai_provider,
            "gen_ai.request.model": api_model,
            "gen_ai.request.max_tokens": request.max_output_tokens,
            "llm_router.provider": provider,
            "llm_router.model": request.model,
            "llm_router.attempt": len(run.attempts) + 1,
            "llm_router.attempt.reason": reason,
        }
        if server:
            attributes["server.address"] = server
        if escalated_by:
            attributes["llm_router.escalation.reason"] = escalated_by
        if self._telemetry.capture_content:
            attributes["gen_ai.input.messages"] = orjson.dumps([_traced(m) for m in request.messages]).decode()
        return self._telemetry.tracer.start_span(f"chat {api_model}", kind=SpanKind.CLIENT, attributes=attributes)

    def _describe(self, span: Span, attempt: Attempt, completion: Completion | None) -> None:
        """What the attempt came to: the response, its tokens, cost and wait (error.type only on the job's
        final failure)."""
        attributes: dict[str, AttributeValue] = {
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
                completion.response_model or self._config.models[attempt.model].api_model or attempt.model
            )
            if completion.request_id:
                attributes["gen_ai.response.id"] = completion.request_id
            attributes["gen_ai.response.finish_reasons"] = (completion.finish_reason,)
            attributes["gen_ai.usage.input_tokens"] = completion.input_tokens
            attributes["gen_ai.usage.output_tokens"] = completion.output_tokens
            if self._telemetry.capture_content:
                parts: list[dict] = [{"type": "text", "content": completion.text}] if completion.text else []
                parts += [_traced_call(call) for call in completion.tool_calls]
                attributes["gen_ai.output.messages"] = orjson.dumps(
                    [{"role": "assistant", "parts": parts, "finish_reason": completion.finish_reason}]
                ).decode()
        span.set_attributes(attributes)


def _grade(judge: str, completion: Completion) -> ErrorInfo | None:
    """A judge's attempt: None when it passed the answer, else why not (kind `judge_failed`)."""
    if passed(completion.text):
        return None
    reply = completion.text.strip()[:80] or "nothing"
    return ErrorInfo(kind="judge_failed", message=f"the judge {judge} did not pass the answer (it replied {reply!r})")


def _traced(message: ChatMessage) -> dict:
    """A message as the GenAI semantic conventions' `gen_ai.input.messages` hold it: its parts (text, image
    as `uri` or `blob`, tool calls), and a tool message's content as the `tool_call_response` it is."""
    if message.role == "tool":
        return {
            "role": "tool",
            "parts": [{"type": "tool_call_response", "id": message.tool_call_id, "response": message.text()}],
        }
    parts: list[dict]
    if isinstance(message.content, str):
        parts = [{"type": "text", "content": message.content}] if message.content or not message.tool_calls else []
    else:
        parts = [_traced_part(part) for part in message.content]
    parts += [_traced_call(call) for call in message.tool_calls or ()]
    return {"role": message.role, "parts": parts}


def _traced_part(part: TextPart | ImagePart) -> dict:
    if isinstance(part, TextPart):
        return {"type": "text", "content": part.text}
    if part.url is not None:
        return {"type": "uri", "modality": "image", "uri": part.url}
    return {"type": "blob", "modality": "image", "mime_type": part.media_type, "content": part.data}


def _traced_call(call: ToolCall) -> dict:
    return {"type": "tool_call", "id": call.id, "name": call.name, "arguments": call.arguments}
