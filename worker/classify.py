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
        # The rules in order, flattened: each keyword, then each pattern, with its rule's task.
        self._tests: list[tuple[str | re.Pattern[str], str]] = []
        for rule in config.rules:
            self._tests += [(k.lower(), rule.task) for k in rule.keywords]
            self._tests += [(re.compile(p, re.IGNORECASE), rule.task) for p in rule.patterns]
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
        for test, task in self._tests:
            if (test in lowered) if type(test) is str else test.search(text):  # a keyword, else a pattern
                return task
        if self._long_task and len(text) > self._long_chars:
            return self._long_task
        return self._default
