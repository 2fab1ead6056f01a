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
        # The rules' tests in order, each keyword then each pattern with its rule's task, in runs: the
        # keywords up to a pattern (tried with `in` on the lower-cased prompt), then that pattern.
        self._runs: list[tuple[list[tuple[str, str]], tuple[re.Pattern[str], str] | None]] = []
        keywords: list[tuple[str, str]] = []
        for rule in config.rules:
            keywords += [(k.lower(), rule.task) for k in rule.keywords]
            for pattern in rule.patterns:
                self._runs.append((keywords, (re.compile(pattern, re.IGNORECASE), rule.task)))
                keywords = []
        if keywords:
            self._runs.append((keywords, None))
        self._default = config.default_task
        self._long_task = config.long_context_task
        self._long_chars = config.long_context_chars

    def classify(self, job: Job) -> str:
        """The task type of `job`."""
        if job.task:
            return job.task
        return self.classify_text(job.prompt if job.prompt is not None else job.text())

    def classify_text(self, text: str) -> str:
        lowered = text.lower()
        for keywords, pattern in self._runs:
            for keyword, task in keywords:
                if keyword in lowered:
                    return task
            if pattern is not None and pattern[0].search(text):
                return pattern[1]
        if self._long_task and len(text) > self._long_chars:
            return self._long_task
        return self._default
