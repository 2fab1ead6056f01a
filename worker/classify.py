"""Classifier: the task type of a job, from its own `task` or the configured rules."""

from __future__ import annotations

from worker.config import ClassifierConfig
from worker.messages import Job


class Classifier:
    """The reference rules: first keyword match in rule order, then prompt length, then the default."""

    def __init__(self, config: ClassifierConfig) -> None:
        self._rules = [(rule.task, tuple(k.lower() for k in rule.keywords)) for rule in config.rules]
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
        for task, keywords in self._rules:
            for keyword in keywords:
                if keyword in lowered:
                    return task
        if self._long_task and len(text) > self._long_chars:
            return self._long_task
        return self._default
