"""The task classifier: a job's own task, else keyword and pattern rules, else length."""

import pytest

from worker.config import ClassifierConfig, ClassifierRule
from worker.messages import Job
from worker.routing.classify import Classifier


@pytest.mark.parametrize(
    "prompt, task",
    [
        ("Please summarize this report", "summarization"),
        ("tldr of the thread", "summarization"),
        ("Implement a binary heap", "code_generation"),
        ("Can you fix this stack trace", "code_generation"),
        ("Compare Rust and Go", "complex_reasoning"),
        ("Write a haiku", "creative_writing"),
        ("What is the boiling point of water?", "simple_qa"),
        ("x" * 10_001, "long_context"),
        ("Summarize: " + "x" * 20_000, "summarization"),  # keywords come before length
    ],
)
def test_reference_classifier(config, prompt, task):
    assert Classifier(config.classifier).classify(Job(id="j", prompt=prompt)) == task


def test_the_jobs_own_task_wins(config):
    assert (
        Classifier(config.classifier).classify(Job(id="j", prompt="summarize", task="creative_writing"))
        == "creative_writing"
    )


def test_rules_can_be_patterns(config):
    classifier = Classifier(
        ClassifierConfig(
            default_task="simple_qa", rules=[ClassifierRule(task="code_generation", patterns=[r"\bdef \w+\(", r"```"])]
        )
    )
    assert classifier.classify(Job(id="j", prompt="why does def f(x): fail?")) == "code_generation"
    assert classifier.classify(Job(id="j", prompt="what is a closure")) == "simple_qa"
