"""The plan of a job: the ordered chain of models to try, and the output-token cap. Pure.

The `cheapest_correct` policy picks, among the chains of up to `routing.max_chain` models that meet
the job's constraints, the one with the lowest expected cost per correct answer, counting that a
failed attempt is paid for and followed by the next model:

    E[cost]    = c1 + (1-p1)(c2 + (1-p2)(c3 + ...))
    P(success) = 1 - (1-p1)(1-p2)(1-p3)...
    E[latency] = l1 + (1-p1)(l2 + (1-p2)(l3 + ...))

where c is one attempt's expected cost, p the learned probability of a correct answer for the
task type and l the expected latency. A wrong answer is only caught when the job can be verified
(checks or JSON output), so for other jobs the chain's success is its first model's p and the rest
of the chain only serves refusals and errors. The job's `accuracy_floor` is hard (no chain: a failed
result saying so); the defaults (`routing.default_accuracy_floor`, `default_verified_floor` for
verifiable jobs) are soft (no chain: the most reliable one). A job is routed only to models that have
the capabilities it needs (`worker.routing.capabilities`: tools, vision, a strict JSON Schema).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from itertools import combinations, permutations
from math import prod

from msgspec import Struct
from msgspec.structs import replace

from worker.config import Config
from worker.messages import Job
from worker.routing.capabilities import needs
from worker.routing.judge import JUDGE_MAX_OUTPUT_TOKENS, JUDGE_PROMPT_TOKENS


class NoRoute(Exception):
    """No model can serve the job; the message says which constraint could not be met."""


class Plan(Struct, frozen=True, kw_only=True):
    task: str
    models: list[str]
    max_output_tokens: int
    expected_cost_usd: float = 0.0
    success_probability: float = 0.0
    # Models of the chain that may go first instead when the first one has no capacity now: the chain
    # reordered still clears the floor and the latency budget (the cost cap holds for any order).
    alternates: tuple[str, ...] = ()
    # An agreement plan: these models are asked in parallel first and their answer taken when they all
    # agree; on disagreement the chain follows, and its first answer stands.
    agree: tuple[str, ...] = ()
    # A judge plan: this model grades the chain's first answer; a fail goes on to the next model.
    judge: str | None = None
    # A batch plan: these models of the chain are asked through their provider's batch API (priced at its
    # discount) while the job's deadline leaves room for a batch.
    batch: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """agreement, judge, chain (several models, each tried when the one before failed) or single."""
        if self.agree:
            return "agreement"
        if self.judge is not None:
            return "judge"
        return "chain" if len(self.models) > 1 else "single"


Rate = Callable[[str, str], float]


def make_plan(
    job: Job,
    task: str,
    config: Config,
    input_tokens: int,
    unavailable: Mapping[str, str] | None = None,
    rate: Rate | None = None,
    blocked: Collection[str] = (),
    needed: frozenset[str] | None = None,
    judge_rate: Rate | None = None,
    wrong_agreement: float = 0.2,
    batch_discount: Mapping[str, float] | None = None,
) -> Plan:
    """The plan for `job` under the routing policy and every constraint of the job. `rate`: the learned
    probability of a correct answer per task type and model (default: the priors); `judge_rate`: a judge's
    (default: `rate`); `wrong_agreement`: how often two wrong answers agree; `needed`: the capabilities the
    job needs (`capabilities.needs(job)`, computed when not given); `batch_discount`: for a job that can wait for a
    batch, the models whose provider has a batch API, with the share of the price a batch line costs (chains
    of them priced so are weighed against the synchronous plans)."""
    task_config = config.tasks.get(task)
    routing = config.routing
    needed = needs(job) if needed is None else needed
    if job.model is not None:
        if job.model not in config.models:
            raise NoRoute(f"pinned model {job.model!r} is not configured (known: {', '.join(sorted(config.models))})")
        candidates = [job.model]
    elif task_config is None:
        raise NoRoute(f"unknown task type {task!r} (known: {', '.join(sorted(config.tasks))})")
    elif routing.policy == "fixed":  # the task's first model that can serve the job (else its first: no route)
        candidates = [next((m for m in task_config.models if _can(config, m, needed)), task_config.models[0])]
    elif routing.policy == "single":
        candidates = [routing.single_model]
    else:
        candidates = list(config.models)
    max_output = (
        job.max_output_tokens
        or (task_config and task_config.max_output_tokens)
        or config.worker.default_max_output_tokens
    )
    unavailable = unavailable or {}
    rate = rate or (
        lambda t, m: config.models[m].quality.get(task_config.quality if task_config else "", routing.unknown_quality)
    )

    allowed = set(job.allowed_providers) if job.allowed_providers is not None else None
    filters = [
        ("allowed_providers", lambda m: allowed is None or config.models[m].provider in allowed),
        ("capabilities", lambda m: not needed or _can(config, m, needed)),
        ("available", lambda m: config.models[m].provider not in unavailable),
        ("context window", lambda m: input_tokens + max_output <= config.models[m].context_window),
    ]
    for constraint, keep in filters:
        remaining = [m for m in candidates if keep(m)]
        if not remaining and constraint == "capabilities":
            raise NoRoute(_lacking(needed, candidates, job, task, config))
        if not remaining:
            raise NoRoute(_explain(constraint, candidates, job, input_tokens, max_output, config, unavailable))
        candidates = remaining
    # Providers whose circuit is open are routed around, unless nothing else is left.
    candidates = [m for m in candidates if config.models[m].provider not in blocked] or candidates

    expected_output = max(1, int(max_output * routing.expected_output_share))
    estimates = _Estimates(
        cost={m: _call_usd(config, m, input_tokens, expected_output) for m in candidates},
        worst={m: _call_usd(config, m, input_tokens, max_output) for m in candidates},
        latency={m: config.models[m].latency_ms_per_100_output_tokens * expected_output / 100 for m in candidates},
        p={m: _clip(rate(task, m)) for m in candidates},
    )
    default_floor = routing.default_verified_floor if job.verifiable else routing.default_accuracy_floor
    if not job.verifiable and task_config is not None and task_config.accuracy_floor is not None:
        default_floor = task_config.accuracy_floor
    floor = job.accuracy_floor if job.accuracy_floor is not None else default_floor
    budget = job.latency_budget_ms
    cap = job.cost_cap_usd

    judge = _judge_model(job, task, config, candidates, unavailable, input_tokens + expected_output)
    if judge is not None:
        judged = judge_rate or (lambda t, m: rate(t, m))
        options = _judge_options(
            candidates,
            estimates,
            judge,
            _clip(judged(task, judge)),
            _judge_usd(config, judge, input_tokens, expected_output),
        )
    elif job.verifiable:
        options = _chains(candidates, estimates, routing.max_chain)
    else:
        options = _chains(candidates, estimates, 1)
        if job.model is None:
            options += _agreements(candidates, estimates, routing.max_agreement, wrong_agreement)
    if batch_discount:
        options += _batch_chains(candidates, estimates, batch_discount, routing.max_chain if job.verifiable else 1)

    fits_budget = [o for o in options if budget is None or o.latency <= budget]
    if not fits_budget:
        raise NoRoute(_explain("latency_budget_ms", candidates, job, input_tokens, max_output, config, unavailable))
    fits_cap = [o for o in fits_budget if cap is None or o.worst <= cap]
    if not fits_cap:
        raise NoRoute(_explain("cost_cap_usd", candidates, job, input_tokens, max_output, config, unavailable))
    clears = [o for o in fits_cap if o.success >= floor]
    if clears:
        best = min(clears, key=lambda o: (o.cost / o.success, len(o.agree) + len(o.models)))
    elif job.accuracy_floor is not None:
        top = max(o.success for o in fits_cap)
        raise NoRoute(
            f"accuracy_floor {job.accuracy_floor} is above what any plan of {', '.join(candidates)} reaches"
            f" within the other constraints (best {top:.3f})"
        )
    else:
        best = max(fits_cap, key=lambda o: (o.success, -o.cost))
    chain = list(best.models)
    p = estimates.p
    if not job.verifiable:
        # Fallbacks for refusals and errors, by cost per correct answer.
        answerers = best.agree or chain[:1]
        least = min(floor, *(p[m] for m in answerers))
        fallbacks = [m for m in candidates if m not in chain and m not in best.agree and p[m] >= least]
        chain += sorted(fallbacks, key=lambda m: estimates.cost[m] / p[m])[: max(0, routing.max_chain - len(chain))]
    plain = not best.agree and best.judge is None and not best.batch
    alternates = (
        tuple(m for m in chain[1:] if _may_go_first(m, chain, job.verifiable, p, estimates.latency, floor, budget))
        if plain
        else ()
    )
    return Plan(
        task=task,
        models=chain,
        max_output_tokens=max_output,
        expected_cost_usd=best.cost,
        success_probability=best.success,
        alternates=alternates,
        agree=best.agree,
        judge=best.judge,
        batch=tuple(m for m in chain if m in (batch_discount or {})) if best.batch else (),
    )


class _Estimates(Struct, frozen=True, kw_only=True):
    """Per candidate model: one call's expected and worst cost, its expected latency, its success rate."""

    cost: dict[str, float]
    worst: dict[str, float]
    latency: dict[str, float]
    p: dict[str, float]


class _Option(Struct, frozen=True, kw_only=True):
    """A plan under consideration, priced: expected cost, probability of a correct answer, expected latency
    and the worst cost (every call made, each to the output cap)."""

    models: tuple[str, ...]
    agree: tuple[str, ...] = ()
    judge: str | None = None
    batch: bool = False
    cost: float
    success: float
    latency: float
    worst: float


def _clip(p: float) -> float:
    return min(max(p, 1e-6), 1 - 1e-6)


def _call_usd(config: Config, model: str, input_tokens: int, output_tokens: int) -> float:
    m = config.models[model]
    return (input_tokens * m.input_usd_per_mtok + output_tokens * m.output_usd_per_mtok) / 1e6


def _judge_usd(config: Config, judge: str, input_tokens: int, answer_tokens: int) -> float:
    """One judge call: the prompt, the answer and the judge's instructions in; a one-word verdict out."""
    return _call_usd(config, judge, input_tokens + answer_tokens + JUDGE_PROMPT_TOKENS, JUDGE_MAX_OUTPUT_TOKENS)


def _chains(candidates: list[str], e: _Estimates, longest: int) -> list[_Option]:
    """Escalation chains of up to `longest` models: each next model is tried when the one before failed."""
    options = []
    for length in range(1, min(longest, len(candidates)) + 1):
        for ordering in permutations(candidates, length):
            cost = latency = 0.0
            reach = 1.0  # probability that the chain gets this far
            for m in ordering:
                cost += reach * e.cost[m]
                latency += reach * e.latency[m]
                reach *= 1 - e.p[m]
            worst = sum(e.worst[m] for m in ordering)
            options.append(_Option(models=ordering, cost=cost, success=1 - reach, latency=latency, worst=worst))
    return options


def _batch_chains(candidates: list[str], e: _Estimates, discount: Mapping[str, float], longest: int) -> list[_Option]:
    """Escalation chains whose models with a batch API are asked by batch, each such call at its discount."""
    batched = _Estimates(
        cost={m: c * discount.get(m, 1.0) for m, c in e.cost.items()},
        worst={m: c * discount.get(m, 1.0) for m, c in e.worst.items()},
        latency=e.latency,
        p=e.p,
    )
    chains = _chains(candidates, batched, longest)
    return [replace(option, batch=True) for option in chains if any(m in discount for m in option.models)]


def _agreements(candidates: list[str], e: _Estimates, largest: int, wrong_agreement: float) -> list[_Option]:
    """Agreement plans: a group of models asked in parallel, their answer taken when they all agree; on
    disagreement the next model, whose answer stands. All of the group's wrong answers agree with
    probability `wrong_agreement` for each model beyond the first."""
    options = []
    for size in range(2, min(largest, len(candidates) - 1) + 1):
        for group in combinations(candidates, size):
            right = prod(e.p[m] for m in group)
            wrong_together = prod(1 - e.p[m] for m in group) * wrong_agreement ** (size - 1)
            disagree = 1 - right - wrong_together
            for then in candidates:
                if then in group:
                    continue
                options.append(
                    _Option(
                        models=(then,),
                        agree=group,
                        cost=sum(e.cost[m] for m in group) + disagree * e.cost[then],
                        success=right + disagree * e.p[then],
                        latency=max(e.latency[m] for m in group) + disagree * e.latency[then],
                        worst=sum(e.worst[m] for m in group) + e.worst[then],
                    )
                )
    return options


def _judge_options(
    candidates: list[str], e: _Estimates, judge: str, reliability: float, judge_usd: float
) -> list[_Option]:
    """Judge plans: a model answers, the judge grades the answer (rightly with probability `reliability`);
    a fail goes to the next model, whose answer stands."""
    options = []
    for first in candidates:
        p = e.p[first]
        failed = p * (1 - reliability) + (1 - p) * reliability
        for then in candidates:
            if then == first:
                continue
            options.append(
                _Option(
                    models=(first, then),
                    judge=judge,
                    cost=e.cost[first] + judge_usd + failed * e.cost[then],
                    success=p * reliability + failed * e.p[then],
                    latency=e.latency[first] + failed * e.latency[then],
                    worst=e.worst[first] + judge_usd + e.worst[then],
                )
            )
    return options


def _judge_model(
    job: Job, task: str, config: Config, candidates: list[str], unavailable: Mapping[str, str], answer_tokens: int
) -> str | None:
    """The model that judges the job's answers, or None when the job is not judged: a job with `checks.judge`,
    or an unverifiable job of `routing.judge_tasks` when `routing.judge_model` is set. The judge is
    `routing.judge_model` while its provider can be called, else the cheapest candidate."""
    routing = config.routing
    wanted = job.judged or (bool(routing.judge_model) and (not routing.judge_tasks or task in routing.judge_tasks))
    if not wanted or job.verifiable or job.model is not None or len(candidates) < 2:
        return None
    configured = routing.judge_model
    if configured and config.models[configured].provider not in unavailable:
        return configured
    return min(candidates, key=lambda m: _judge_usd(config, m, answer_tokens, 0))


def _can(config: Config, model: str, needed: frozenset[str]) -> bool:
    """Whether `model` has every capability in `needed`."""
    return needed.issubset(config.models[model].capabilities)


def _lacking(needed: frozenset[str], candidates: list[str], job: Job, task: str, config: Config) -> str:
    """Why no candidate can serve a job that needs `needed`: the capabilities none of them has (or, when
    each one is somewhere, all of them, which no model has together)."""
    missing = sorted(c for c in needed if not any(c in config.models[m].capabilities for m in candidates))
    what = " and ".join(missing or sorted(needed))
    if job.model is not None:
        held = ", ".join(config.models[job.model].capabilities) or "none"
        return f"pinned model {job.model!r} cannot serve a job that needs {what} (its capabilities: {held})"
    have = "has it" if len(missing) == 1 else "has them all" if not missing else "has them"
    return f"no model of task {task} can serve a job that needs {what}: none of {', '.join(candidates)} {have}"


def first_instead(chain: list[str], model: str) -> list[str]:
    """The chain with `model` moved to the front."""
    return [model, *(m for m in chain if m != model)]


def _may_go_first(
    model: str,
    chain: list[str],
    verifiable: bool,
    p: Mapping[str, float],
    latency: Mapping[str, float],
    floor: float,
    budget: float | None,
) -> bool:
    """Whether the chain led by `model` still clears the floor and the latency budget."""
    reordered = first_instead(chain, model)
    if not verifiable and p[model] < floor:  # unverifiable: the first answer is the answer
        return False
    expected_latency, reach = 0.0, 1.0
    for m in reordered:
        expected_latency += reach * latency[m]
        reach *= 1 - p[m]
    return budget is None or expected_latency <= budget


def _explain(
    constraint: str,
    candidates: list[str],
    job: Job,
    input_tokens: int,
    max_output: int,
    config: Config,
    unavailable: Mapping[str, str],
) -> str:
    names = ", ".join(candidates)
    if constraint == "available":
        reasons = sorted({f"{config.models[m].provider}: {unavailable[config.models[m].provider]}" for m in candidates})
        return f"no candidate model's provider can be called ({'; '.join(reasons)})"
    if constraint == "allowed_providers":
        return f"allowed_providers {job.allowed_providers} excludes every candidate model ({names})"
    if constraint == "context window":
        return (
            f"about {input_tokens} input + {max_output} output tokens fit no candidate model's context window ({names})"
        )
    if constraint == "latency_budget_ms":
        return f"latency_budget_ms {job.latency_budget_ms} is below every candidate model's expected latency ({names})"
    return f"cost_cap_usd {job.cost_cap_usd} is below one attempt's cost on every candidate model ({names})"
