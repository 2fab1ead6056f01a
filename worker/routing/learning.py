"""Learned success rates per task type and model: Beta counts started from the config priors.

Each verified outcome adds to the counts after every count is multiplied by `decay`, so recent
outcomes weigh more and a model whose quality drops is noticed within a few hundred jobs. Pure:
the worker publishes snapshots to a compacted topic and restores them at start.

Only evidence about correctness moves a model's accuracy: a wrong answer (a check failed on it),
a refusal, an empty answer. An answer that is not the JSON the job asked for moves the model's
JSON format reliability instead (per model, whatever the task), and a truncated answer moves
nothing: the cap, not the model, cut it.
"""

from __future__ import annotations

import time

from msgspec import Struct

from worker.config import Config


class RateState(Struct, frozen=True, kw_only=True):
    """The counts behind one task type and model (what the state topic carries, keyed `task|model`); a
    model's JSON format reliability travels as the pseudo task type `JSON_FORMAT`."""

    task: str
    model: str
    successes: float
    failures: float
    updated_at: float


# The pseudo task type the JSON format reliability travels under on the state topic (key `response_format:json|MODEL`).
JSON_FORMAT = "response_format:json"
# What a model's JSON format reliability starts from: the providers' JSON modes rarely fail.
FORMAT_PRIOR = 0.98


class FormatReliability:
    """Beta(parsed, unparsable) per model: how often its answers to JSON jobs are JSON."""

    def __init__(self, strength: float, decay: float) -> None:
        self._strength = strength
        self._decay = decay
        self._counts: dict[str, list[float]] = {}
        self._dirty: set[str] = set()

    def rate(self, model: str) -> float:
        """The expected probability that `model`'s answer to a JSON job parses as JSON."""
        counts = self._counts.get(model)
        return FORMAT_PRIOR if counts is None else counts[0] / (counts[0] + counts[1])

    def record(self, model: str, parsed: bool) -> None:
        """One answer to a JSON job: JSON, or not."""
        counts = self._counts.get(model)
        if counts is None:
            counts = self._counts[model] = [FORMAT_PRIOR * self._strength, (1 - FORMAT_PRIOR) * self._strength]
        counts[0] *= self._decay
        counts[1] *= self._decay
        counts[0 if parsed else 1] += 1.0
        self._dirty.add(model)

    def take_changes(self, now: float) -> list[RateState]:
        """The states changed since the last call, keyed as the pseudo task type `JSON_FORMAT`."""
        changed = [
            RateState(
                task=JSON_FORMAT, model=m, successes=self._counts[m][0], failures=self._counts[m][1], updated_at=now
            )
            for m in sorted(self._dirty)
        ]
        self._dirty.clear()
        return changed

    def restore(self, state: RateState) -> None:
        """Load one published state."""
        self._counts[state.model] = [state.successes, state.failures]

    def snapshot(self) -> dict[str, float]:
        """model -> learned format reliability, for every model with counts."""
        return {model: round(self.rate(model), 4) for model in self._counts}


class QualityModel:
    """Beta(successes, failures) per (task, model); the prior comes from the model's quality table."""

    def __init__(self, config: Config) -> None:
        routing = config.routing
        self._strength = routing.prior_strength
        self._decay = routing.decay
        self._counts: dict[tuple[str, str], list[float]] = {}
        self._priors: dict[tuple[str, str], float] = {}
        self._dirty: set[tuple[str, str]] = set()
        for task, task_config in config.tasks.items():
            for model, model_config in config.models.items():
                self._priors[(task, model)] = model_config.quality.get(task_config.quality, routing.unknown_quality)
        self._default_prior = routing.unknown_quality
        self.json_format = FormatReliability(routing.prior_strength, routing.decay)
        self.version = 0

    def prior(self, task: str, model: str) -> float:
        return self._priors.get((task, model), self._default_prior)

    def _counts_of(self, task: str, model: str) -> list[float]:
        counts = self._counts.get((task, model))
        if counts is None:
            p = self.prior(task, model)
            counts = self._counts[(task, model)] = [p * self._strength, (1 - p) * self._strength]
        return counts

    def rate(self, task: str, model: str) -> float:
        """The expected probability that `model` answers a `task` job correctly."""
        counts = self._counts.get((task, model))
        if counts is None:
            return self.prior(task, model)
        return counts[0] / (counts[0] + counts[1])

    def json_rate(self, task: str, model: str) -> float:
        """The expected probability that `model` answers a `task` job that asks for JSON with correct JSON."""
        return self.rate(task, model) * self.json_format.rate(model)

    def record(self, task: str, model: str, success: bool) -> None:
        """One outcome that says whether the model can do the task: correct, or wrong / refused / empty."""
        counts = self._counts_of(task, model)
        counts[0] *= self._decay
        counts[1] *= self._decay
        counts[0 if success else 1] += 1.0
        self._dirty.add((task, model))
        self.version += 1

    def record_format(self, model: str, parsed: bool) -> None:
        """One answer to a JSON job: whether it was JSON (its correctness is `record`'s)."""
        self.json_format.record(model, parsed)
        self.version += 1

    def take_changes(self) -> list[RateState]:
        """The states changed since the last call (to publish)."""
        now = time.time()
        changed = []
        for task, model in sorted(self._dirty):
            successes, failures = self._counts[(task, model)]
            changed.append(RateState(task=task, model=model, successes=successes, failures=failures, updated_at=now))
        self._dirty.clear()
        return changed + self.json_format.take_changes(now)

    def restore(self, states: list[RateState]) -> None:
        """Load published states (the latest per key wins)."""
        for state in sorted(states, key=lambda s: s.updated_at):
            if state.task == JSON_FORMAT:
                self.json_format.restore(state)
            else:
                self._counts[(state.task, state.model)] = [state.successes, state.failures]
        self.version += 1

    def snapshot(self) -> dict[str, dict[str, float]]:
        """task -> model -> learned rate, for every pair with counts."""
        out: dict[str, dict[str, float]] = {}
        for task, model in self._counts:
            out.setdefault(task, {})[model] = round(self.rate(task, model), 4)
        return out
