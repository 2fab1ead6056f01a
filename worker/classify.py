"""Classifier: the task type of a job, from its own `task` or the configured rules.

Any object with `classify(job) -> str` can take its place (a learned classifier, say): the job
runner takes it as an argument.
"""

from __future__ import annotations

import re
from typing import Protocol

from worker.config import ClassifierConfig
from worker.messages import Job


class TaskClassifier(Protocol):
    def classify(self, job: Job) -> str: ...


class Classifier:
    """The reference rules: the first rule (in order) whose keyword the lower-cased prompt contains or
    whose pattern matches, then prompt length (long context), then the default. Deterministic."""

    def __init__(self, config: ClassifierConfig) -> None:
        # A rule's keywords as one alternation, searched in the lower-cased text: one scan in C, not one per keyword.
        self._rules = [
            (
                rule.task,
                re.compile("|".join(re.escape(k.lower()) for k in rule.keywords)) if rule.keywords else None,
                tuple(re.compile(p, re.IGNORECASE) for p in rule.patterns),
            )
            for rule in config.rules
        ]
        # Without patterns, one search for every rule's keywords tells whether any rule can match at all
        # (most prompts match none and take the default).
        keywords = [re.escape(k.lower()) for rule in config.rules for k in rule.keywords]
        self._any_keyword = re.compile("|".join(keywords)) if keywords and not any(rule.patterns for rule in config.rules) else None
        self._default = config.default_task
        self._long_task = config.long_context_task
        self._long_chars = config.long_context_chars

    def classify(self, job: Job) -> str:
        """The task type of `job`."""
        if job.task:
            return job.task
        return self.classify_text(job.text())

    def classify_text(self, text: str) -> str:
        lowered = text.lower()
        if self._any_keyword is None or self._any_keyword.search(lowered):
            for task, keywords, patterns in self._rules:
                if keywords is not None and keywords.search(lowered):
                    return task
                for pattern in patterns:
                    if pattern.search(text):
                        return task
        if self._long_task and len(text) > self._long_chars:
            return self._long_task
        return self._default
