"""Learned rates: Beta counts started from priors, moved by evidence. Pure.

What is learned, each a Beta(successes, failures) worth `routing.prior_strength` observations at first:
- a model's success rate per task type (prior: the model's quality table), from verified outcomes
  (a check passed or failed, a refusal, an empty answer), from feedback, and, as weaker evidence,
  from agreement (two answers agreeing, an answer that the escalation's answer overruled) and from a
  judge's grade;
- a model's JSON format reliability (per model, whatever the task);
- a judge's reliability per task type and judge model (prior: its success rate prior), from feedback
  on the answers it passed;
- per task type, how often two models' wrong answers agree (prior: `routing.wrong_agreement_prior`),
  from feedback on answers taken on agreement.

Every record first multiplies the counts by `decay` to the power of its weight, so recent evidence weighs
more and a model whose quality drops is noticed within a few hundred jobs. A truncated answer teaches
nothing (the cap, not the model, cut it), and an answer that is not the JSON asked for moves the format
reliability, not the accuracy.

Every replica learns the same: what one records is also kept as evidence (`take_evidence`) that the
worker sends to the others, which add it with `apply_evidence`. Snapshots of the counts (`take_changes`)
go to the compacted state topic and are read back at start (`restore`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from msgspec import Struct

from worker.config import Config
from worker.messages import Route


class RateState(Struct, frozen=True, kw_only=True):
    """The counts behind one learned rate (what the state topic carries, keyed `task|model`). Besides task
    types, `task` names the pseudo task types of the other rates: `JSON_FORMAT`, `judge:TASK` (the judge's
    reliability for TASK) and `wrong_agreement:TASK` (its model `*`)."""

    task: str
    model: str
    successes: float
    failures: float
    updated_at: float


class Evidence(Struct, frozen=True, kw_only=True):
    """What one replica learned since it last sent evidence: weights added to one rate's counts."""

    task: str
    model: str
    successes: float
    failures: float


class EvidenceBatch(Struct, kw_only=True):
    """One message on the evidence topic: a replica's evidence, which every other replica adds to its rates."""

    replica: str
    evidence: list[Evidence]
    sent_at: float


# The pseudo task type the JSON format reliability travels under on the state topic (key `response_format:json|MODEL`).
JSON_FORMAT = "response_format:json"
JUDGE = "judge:"
WRONG_AGREEMENT = "wrong_agreement:"
ANY_MODEL = "*"
# What a model's JSON format reliability starts from: the providers' JSON modes rarely fail.
FORMAT_PRIOR = 0.98

Key = tuple[str, str]


class _Rates:
    """Beta counts per key (task, model), each started from `prior(key)` worth `strength` observations."""

    def __init__(self, prior: Callable[[Key], float], strength: float, decay: float) -> None:
        self._prior = prior
        self._strength = strength
        self._decay = decay
        self.counts: dict[Key, list[float]] = {}
        self.dirty: set[Key] = set()

    def rate(self, key: Key) -> float:
        counts = self.counts.get(key)
        return self._prior(key) if counts is None else counts[0] / (counts[0] + counts[1])

    def add(self, key: Key, successes: float, failures: float) -> None:
        counts = self.counts.get(key)
        if counts is None:
            p = self._prior(key)
            counts = self.counts[key] = [p * self._strength, (1 - p) * self._strength]
        fade = self._decay ** (successes + failures)
        counts[0] = counts[0] * fade + successes
        counts[1] = counts[1] * fade + failures
        self.dirty.add(key)


class FormatReliability:
    """Beta(parsed, unparsable) per model: how often its answers to JSON jobs are JSON."""

    def __init__(self, rates: _Rates) -> None:
        self._rates = rates

    def rate(self, model: str) -> float:
        """The expected probability that `model`'s answer to a JSON job parses as JSON."""
        return self._rates.rate((JSON_FORMAT, model))

    def snapshot(self) -> dict[str, float]:
        """model -> learned format reliability, for every model with counts."""
        return {model: round(self._rates.rate((task, model)), 4) for task, model in self._rates.counts}


class QualityModel:
    """Every learned rate of a replica (the module's docstring)."""

    def __init__(self, config: Config) -> None:
        routing = config.routing
        self._priors: dict[Key, float] = {}
        for task, task_config in config.tasks.items():
            for model, model_config in config.models.items():
                self._priors[(task, model)] = model_config.quality.get(task_config.quality, routing.unknown_quality)
        self._default_prior = routing.unknown_quality
        strength, decay = routing.prior_strength, routing.decay
        self._accuracy = _Rates(lambda key: self._priors.get(key, self._default_prior), strength, decay)
        self._format = _Rates(lambda key: FORMAT_PRIOR, strength, decay)
        self._judges = _Rates(lambda key: self.prior(key[0][len(JUDGE) :], key[1]), strength, decay)
        self._wrong_agreement = _Rates(lambda key: routing.wrong_agreement_prior, strength, decay)
        self.json_format = FormatReliability(self._format)
        self._evidence: dict[Key, list[float]] = {}
        self.version = 0

    def _table(self, task: str) -> _Rates:
        if task == JSON_FORMAT:
            return self._format
        if task.startswith(JUDGE):
            return self._judges
        if task.startswith(WRONG_AGREEMENT):
            return self._wrong_agreement
        return self._accuracy

    def prior(self, task: str, model: str) -> float:
        return self._priors.get((task, model), self._default_prior)

    def rate(self, task: str, model: str) -> float:
        """The expected probability that `model` answers a `task` job correctly."""
        return self._accuracy.rate((task, model))

    def json_rate(self, task: str, model: str) -> float:
        """The expected probability that `model` answers a `task` job that asks for JSON with correct JSON."""
        return self.rate(task, model) * self.json_format.rate(model)

    def judge_rate(self, task: str, model: str) -> float:
        """The expected probability that `model`, judging an answer to a `task` job, grades it rightly."""
        return self._judges.rate((JUDGE + task, model))

    def wrong_agreement(self, task: str) -> float:
        """The expected probability that two models' wrong answers to a `task` job agree."""
        return self._wrong_agreement.rate((WRONG_AGREEMENT + task, ANY_MODEL))

    def _learn(self, key: Key, success: bool, weight: float) -> None:
        if weight <= 0:
            return
        successes, failures = (weight, 0.0) if success else (0.0, weight)
        self._table(key[0]).add(key, successes, failures)
        pending = self._evidence.setdefault(key, [0.0, 0.0])
        pending[0] += successes
        pending[1] += failures
        self.version += 1

    def record(self, task: str, model: str, success: bool, weight: float = 1.0) -> None:
        """One outcome that says whether the model can do the task (correct, or wrong / refused / empty), worth
        `weight` observations (less than 1 for indirect evidence)."""
        self._learn((task, model), success, weight)

    def record_format(self, model: str, parsed: bool) -> None:
        """One answer to a JSON job: whether it was JSON (its correctness is `record`'s)."""
        self._learn((JSON_FORMAT, model), parsed, 1.0)

    def record_judge(self, task: str, model: str, right: bool, weight: float = 1.0) -> None:
        """One grade of `model` as a judge of a `task` answer, found right or wrong."""
        self._learn((JUDGE + task, model), right, weight)

    def record_wrong_agreement(self, task: str, agreed: bool) -> None:
        """Two wrong answers to a `task` job: whether they agreed."""
        self._learn((WRONG_AGREEMENT + task, ANY_MODEL), agreed, 1.0)

    def learn_feedback(self, route: Route, grade: float) -> None:
        """Feedback on a job answered by `route` (grade 0 wrong to 1 right): the answering model and the
        models that agreed with it learn the grade; a judge that passed the answer learns whether it was
        right to; a wrong answer that agreed with another says that wrong answers agree, and a right answer
        that overruled two differing ones that they did not."""
        for model in (route.model, *route.agreed):
            self.record(route.task, model, True, grade)
            self.record(route.task, model, False, 1 - grade)
        if route.judge is not None:
            self.record_judge(route.task, route.judge, True, grade)
            self.record_judge(route.task, route.judge, False, 1 - grade)
        if grade <= 0.5 and route.agreed:
            self.record_wrong_agreement(route.task, True)
        if grade > 0.5:
            for model in route.overruled:
                self.record(route.task, model, False, grade)
            if len(route.overruled) >= 2:
                self.record_wrong_agreement(route.task, False)

    def take_evidence(self) -> list[Evidence]:
        """What this replica learned since the last call, for the other replicas."""
        evidence = [Evidence(task=k[0], model=k[1], successes=s, failures=f) for k, (s, f) in self._evidence.items()]
        self._evidence.clear()
        return evidence

    def apply_evidence(self, evidence: list[Evidence]) -> None:
        """Add what another replica learned (not sent on again)."""
        for item in evidence:
            self._table(item.task).add((item.task, item.model), item.successes, item.failures)
        if evidence:
            self.version += 1

    def take_changes(self) -> list[RateState]:
        """The states changed since the last call (to publish)."""
        now = time.time()
        changed = []
        for table in (self._accuracy, self._format, self._judges, self._wrong_agreement):
            for key in sorted(table.dirty):
                successes, failures = table.counts[key]
                changed.append(
                    RateState(task=key[0], model=key[1], successes=successes, failures=failures, updated_at=now)
                )
            table.dirty.clear()
        return changed

    def restore(self, states: list[RateState]) -> None:
        """Load published states (the latest per key wins)."""
        for state in sorted(states, key=lambda s: s.updated_at):
            self._table(state.task).counts[(state.task, state.model)] = [state.successes, state.failures]
        self.version += 1

    def snapshot(self) -> dict[str, dict[str, float]]:
        """task -> model -> learned success rate, for every pair with counts."""
        out: dict[str, dict[str, float]] = {}
        for task, model in self._accuracy.counts:
            out.setdefault(task, {})[model] = round(self.rate(task, model), 4)
        return out
