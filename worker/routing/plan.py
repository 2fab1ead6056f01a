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
from itertools import permutations

from msgspec import Struct

from worker.config import Config
from worker.messages import Job
from worker.routing.capabilities import needs


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
) -> Plan:
    """The chain of models to try for `job` under the routing policy and every constraint of the job.
    `needed`: the capabilities the job needs (`capabilities.needs(job)`, computed when not given)."""
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
    costs = {
        m: (input_tokens * config.models[m].input_usd_per_mtok + expected_output * config.models[m].output_usd_per_mtok)
        / 1e6
        for m in candidates
    }
    worst = {
        m: (input_tokens * config.models[m].input_usd_per_mtok + max_output * config.models[m].output_usd_per_mtok)
        / 1e6
        for m in candidates
    }
    latency = {m: config.models[m].latency_ms_per_100_output_tokens * expected_output / 100 for m in candidates}
    p = {m: min(max(rate(task, m), 1e-6), 1 - 1e-6) for m in candidates}
    default_floor = routing.default_verified_floor if job.verifiable else routing.default_accuracy_floor
    floor = job.accuracy_floor if job.accuracy_floor is not None else default_floor
    budget = job.latency_budget_ms
    cap = job.cost_cap_usd

    chains = []
    longest = routing.max_chain if job.verifiable else 1
    for length in range(1, min(longest, len(candidates)) + 1):
        for ordering in permutations(candidates, length):
            expected_cost = expected_latency = 0.0
            reach = 1.0  # probability that the chain gets this far
            for m in ordering:
                expected_cost += reach * costs[m]
                expected_latency += reach * latency[m]
                reach *= 1 - p[m]
            chains.append((ordering, expected_cost, 1 - reach, expected_latency, sum(worst[m] for m in ordering)))

    fits_budget = [c for c in chains if budget is None or c[3] <= budget]
    if not fits_budget:
        raise NoRoute(_explain("latency_budget_ms", candidates, job, input_tokens, max_output, config, unavailable))
    fits_cap = [c for c in fits_budget if cap is None or c[4] <= cap]
    if not fits_cap:
        raise NoRoute(_explain("cost_cap_usd", candidates, job, input_tokens, max_output, config, unavailable))
    clears = [c for c in fits_cap if c[2] >= floor]
    if clears:
        best = min(clears, key=lambda c: (c[1] / c[2], len(c[0])))
    elif job.accuracy_floor is not None:
        top = max(c[2] for c in fits_cap)
        raise NoRoute(
            f"accuracy_floor {job.accuracy_floor} is above what any chain of {', '.join(candidates)} reaches"
            f" within the other constraints (best {top:.3f})"
        )
    else:
        best = max(fits_cap, key=lambda c: (c[2], -c[1]))
    chain = list(best[0])
    if not job.verifiable:
        # Fallbacks for refusals and errors, by cost per correct answer.
        fallbacks = [m for m in candidates if m not in chain and p[m] >= min(floor, p[chain[0]])]
        chain += sorted(fallbacks, key=lambda m: costs[m] / p[m])[: routing.max_chain - 1]
    alternates = tuple(m for m in chain[1:] if _may_go_first(m, chain, job.verifiable, p, latency, floor, budget))
    return Plan(
        task=task,
        models=chain,
        max_output_tokens=max_output,
        expected_cost_usd=best[1],
        success_probability=best[2],
        alternates=alternates,
    )


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
