"""The plan of a job: the ordered chain of models to try, and the output-token cap.

This is the reference router's plan (the task type's configured models in order) narrowed by the
job's constraints; a job no model can serve gets `NoRoute` naming the constraint that failed.
"""

from __future__ import annotations

from collections.abc import Mapping

from msgspec import Struct

from worker.config import Config
from worker.messages import Job


class NoRoute(Exception):
    """No model can serve the job; the message says which constraint could not be met."""


class Plan(Struct, frozen=True):
    task: str
    models: list[str]
    max_output_tokens: int


def make_plan(job: Job, task: str, config: Config, input_tokens: int, unavailable: Mapping[str, str] | None = None) -> Plan:
    """The models to try for `job`, cheapest route first, each meeting every constraint of the job."""
    task_config = config.tasks.get(task)
    if job.model is not None:
        if job.model not in config.models:
            raise NoRoute(f"pinned model {job.model!r} is not configured (known: {', '.join(sorted(config.models))})")
        candidates = [job.model]
    elif task_config is None:
        raise NoRoute(f"unknown task type {task!r} (known: {', '.join(sorted(config.tasks))})")
    else:
        candidates = list(task_config.models)
    max_output = job.max_output_tokens or (task_config and task_config.max_output_tokens) or config.worker.default_max_output_tokens

    checks = [
        ("allowed_providers", _allowed(job, config)),
        ("available", lambda m: config.models[m].provider not in (unavailable or {})),
        ("context window", lambda m: input_tokens + max_output <= config.models[m].context_window),
        ("accuracy_floor", _meets_floor(job, task_config.quality if task_config else "", config)),
        ("latency_budget_ms", _fits_budget(job, max_output, config)),
        ("cost_cap_usd", _under_cap(job, input_tokens, max_output, config)),
    ]
    for constraint, keep in checks:
        remaining = [m for m in candidates if keep(m)]
        if not remaining:
            raise NoRoute(_explain(constraint, candidates, job, input_tokens, max_output, config, unavailable or {}))
        candidates = remaining
    return Plan(task=task, models=candidates, max_output_tokens=max_output)


def _allowed(job: Job, config: Config):
    allowed = set(job.allowed_providers) if job.allowed_providers is not None else None
    return lambda m: allowed is None or config.models[m].provider in allowed


def _meets_floor(job: Job, quality: str, config: Config):
    floor = job.accuracy_floor
    return lambda m: floor is None or not quality or config.models[m].quality.get(quality, 0.0) >= floor


def _fits_budget(job: Job, max_output: int, config: Config):
    budget = job.latency_budget_ms
    return lambda m: budget is None or config.models[m].latency_ms_per_100_output_tokens * max_output / 100 <= budget


def _under_cap(job: Job, input_tokens: int, max_output: int, config: Config):
    cap = job.cost_cap_usd

    def keep(m: str) -> bool:
        model = config.models[m]
        worst = (input_tokens * model.input_usd_per_mtok + max_output * model.output_usd_per_mtok) / 1_000_000
        return cap is None or worst <= cap

    return keep


def _explain(constraint: str, candidates: list[str], job: Job, input_tokens: int, max_output: int, config: Config, unavailable: Mapping[str, str]) -> str:
    names = ", ".join(candidates)
    if constraint == "available":
        reasons = sorted({f"{config.models[m].provider}: {unavailable[config.models[m].provider]}" for m in candidates})
        return f"no candidate model's provider can be called ({'; '.join(reasons)})"
    if constraint == "allowed_providers":
        return f"allowed_providers {job.allowed_providers} excludes every candidate model ({names})"
    if constraint == "context window":
        return f"about {input_tokens} input + {max_output} output tokens fit no candidate model's context window ({names})"
    if constraint == "accuracy_floor":
        return f"accuracy_floor {job.accuracy_floor} is above every candidate model's quality ({names})"
    if constraint == "latency_budget_ms":
        return f"latency_budget_ms {job.latency_budget_ms} is below every candidate model's latency for {max_output} tokens ({names})"
    return f"cost_cap_usd {job.cost_cap_usd} is below one attempt's cost on every candidate model ({names})"
