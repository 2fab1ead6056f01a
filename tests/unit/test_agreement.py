"""Quality without an answer key: agreement and judge plans, priced by the planner and run by the runner."""

from math import prod

import msgspec
import pytest

from tests.unit.helpers import run
from worker.execution.runner import JobRunner
from worker.messages import Checks, Job, Route
from worker.providers.base import Completion, CompletionRequest
from worker.routing.agreement import agree, answer_key
from worker.routing.judge import JUDGE_SYSTEM, passed
from worker.routing.learning import QualityModel
from worker.routing.plan import make_plan


class Answers:
    """A provider whose models answer as told: `answers` by model; a judge's grade by `grades` (PASS by default)."""

    def __init__(self, name, answers, grades=None):
        self.name = name
        self.answers = answers
        self.grades = grades or {}
        self.calls = []

    async def complete(self, request: CompletionRequest) -> Completion:
        judging = request.messages[0].content == JUDGE_SYSTEM
        self.calls.append(("judge " if judging else "") + request.model)
        text = self.grades.get(request.model, "PASS") if judging else self.answers[request.model]
        return Completion(text=text, finish_reason="stop", input_tokens=20, output_tokens=2)

    async def close(self):
        return None


def runner_with(config, answers, grades=None):
    return JobRunner(config, {name: Answers(name, answers, grades) for name in config.providers})


RIGHT = {"gemini-2.5-flash": "Paris", "llama-4-70b": "paris.", "gpt-4o": "Paris", "claude-3-5-sonnet": "Paris"}


def test_answers_agree_ignoring_case_space_final_punctuation_and_json_layout():
    assert agree(["Paris", " paris. ", "PARIS!"])
    assert agree(['{"a": 1, "b": [2]}', '```json\n{"b":[2],"a":1}\n```'])
    assert not agree(["Paris", "Lyon"])
    assert answer_key("  The answer: 42. ") == "the answer: 42"
    assert passed("PASS") and passed("pass.") and not passed("FAIL") and not passed("I think it passes")


def test_an_unverifiable_job_gets_two_cheap_models_that_must_agree_then_a_stronger_one(shipped):
    plan = make_plan(Job(id="j", prompt="q"), "simple_qa", shipped, 10)
    assert plan.kind == "agreement" and plan.agree == ("gemini-2.5-flash", "llama-4-70b")
    assert plan.models[0] == "gpt-4o", "on disagreement the next model's answer stands"
    p = {m: shipped.models[m].quality["instruction_following"] for m in shipped.models}
    right = p["gemini-2.5-flash"] * p["llama-4-70b"]
    wrong_together = prod(1 - p[m] for m in plan.agree) * shipped.routing.wrong_agreement_prior
    assert plan.success_probability == pytest.approx(right + (1 - right - wrong_together) * p["gpt-4o"])
    out = 256 // 2  # the task's cap, half of it expected
    cost = {m: (10 * c.input_usd_per_mtok + out * c.output_usd_per_mtok) / 1e6 for m, c in shipped.models.items()}
    every_parallel_call_is_paid = cost["gemini-2.5-flash"] + cost["llama-4-70b"]
    assert plan.expected_cost_usd == pytest.approx(
        every_parallel_call_is_paid + (1 - right - wrong_together) * cost["gpt-4o"]
    )
    # A model trusted alone when what is learned puts it over the floor; long documents go to one model
    # (their task's own floor: agreement would send the whole document to several).
    good = {"llama-4-70b": 0.97}
    rate = lambda t, m: good.get(m, shipped.models[m].quality["instruction_following"])  # noqa: E731
    trusted = make_plan(Job(id="j", prompt="q"), "simple_qa", shipped, 10, rate=rate)
    assert trusted.agree == () and trusted.models[0] == "llama-4-70b"
    assert make_plan(Job(id="j", prompt="q"), "long_context", shipped, 5000).models[0] == "gemini-2.5-flash"


def test_verifiable_and_pinned_jobs_keep_their_chains(shipped):
    assert make_plan(Job(id="j", prompt="q", checks=Checks(expected="a")), "simple_qa", shipped, 10).kind == "chain"
    assert make_plan(Job(id="j", prompt="q", model="gpt-4o"), "simple_qa", shipped, 10).kind == "single"


def test_a_judged_job_gets_a_judge_plan_and_its_price(shipped):
    plan = make_plan(Job(id="j", prompt="q", checks=Checks(judge=True)), "simple_qa", shipped, 10)
    assert plan.kind == "judge" and plan.judge == "gemini-2.5-flash", "the cheapest model judges"
    first, then = plan.models[:2]
    r = 0.9  # the judge's reliability starts from its success rate
    p = {m: shipped.models[m].quality["instruction_following"] for m in shipped.models}
    failed = p[first] * (1 - r) + (1 - p[first]) * r
    assert plan.success_probability == pytest.approx(p[first] * r + failed * p[then])
    # routing.judge_model judges the unverifiable jobs of judge_tasks only
    routing = msgspec.structs.replace(shipped.routing, judge_model="llama-4-70b", judge_tasks=["summarization"])
    config = msgspec.structs.replace(shipped, routing=routing)
    assert make_plan(Job(id="j", prompt="q"), "summarization", config, 10).judge == "llama-4-70b"
    assert make_plan(Job(id="j", prompt="q"), "simple_qa", config, 10).judge is None
    with pytest.raises(msgspec.ValidationError, match=r"rubric needs checks\.judge"):
        msgspec.convert({"id": "j", "prompt": "q", "checks": {"rubric": "be kind"}}, Job)


def test_agreeing_answers_are_taken_and_teach_both_models(shipped):
    runner = runner_with(shipped, RIGHT)
    before = {m: runner.quality.rate("simple_qa", m) for m in ("gemini-2.5-flash", "llama-4-70b")}
    outcome = run(runner, Job(id="j", prompt="What is the capital of France?"))
    result = outcome.result
    assert result.status == "ok" and result.output == "Paris" and result.model == "gemini-2.5-flash"
    assert sorted(a.model for a in result.attempts) == ["gemini-2.5-flash", "llama-4-70b"]
    assert len(outcome.cost_events) == 2, "both parallel calls are paid"
    assert outcome.route == Route(
        job_id="j", task="simple_qa", model="gemini-2.5-flash", finished_at=result.finished_at, agreed=["llama-4-70b"]
    )
    for model, rate in before.items():
        assert runner.quality.rate("simple_qa", model) > rate


def test_on_disagreement_the_next_models_answer_stands_and_the_overruled_answer_learns_it(shipped):
    runner = runner_with(shipped, RIGHT | {"llama-4-70b": "Lyon"})
    before = {m: runner.quality.rate("simple_qa", m) for m in ("gemini-2.5-flash", "llama-4-70b")}
    outcome = run(runner, Job(id="j", prompt="What is the capital of France?"))
    result = outcome.result
    assert result.status == "ok" and result.model == "gpt-4o" and result.output == "Paris"
    assert [a.model for a in result.attempts][-1] == "gpt-4o" and len(result.attempts) == 3
    assert outcome.route is not None and outcome.route.overruled == ["llama-4-70b"] and outcome.route.agreed == []
    assert runner.quality.rate("simple_qa", "llama-4-70b") < before["llama-4-70b"]
    assert runner.quality.rate("simple_qa", "gemini-2.5-flash") > before["gemini-2.5-flash"], "it agreed with gpt-4o"


def test_a_judge_passes_or_fails_the_answer_and_is_a_paid_attempt_with_its_role(shipped):
    job = Job(id="j", prompt="What is the capital of France?", checks=Checks(judge=True, rubric="one word"))
    passed_outcome = run(runner_with(shipped, RIGHT), job)
    result = passed_outcome.result
    # gemini answers and grades its own answer (the cheapest judge); llama's answer would stand after a fail
    assert [(a.role, a.model) for a in result.attempts] == [
        ("answer", "gemini-2.5-flash"),
        ("judge", "gemini-2.5-flash"),
    ]
    assert result.status == "ok" and result.model == "gemini-2.5-flash" and result.output == "Paris"
    assert [e.role for e in passed_outcome.cost_events] == ["answer", "judge"]
    assert passed_outcome.route is not None and passed_outcome.route.judge == "gemini-2.5-flash"

    failing = runner_with(shipped, RIGHT | {"gemini-2.5-flash": "Lyon"}, grades={"gemini-2.5-flash": "FAIL"})
    outcome = run(failing, job)
    failed = outcome.result
    assert failed.status == "ok" and failed.model == "llama-4-70b", "a fail escalates: the next answer stands"
    judge_attempt = failed.attempts[1]
    assert judge_attempt.role == "judge" and judge_attempt.error.kind == "judge_failed"
    assert outcome.route.overruled == ["gemini-2.5-flash"] and outcome.route.judge is None
    assert failing.quality.judge_rate("simple_qa", "gemini-2.5-flash") > 0.9, "its fail was right: they differed"


def test_feedback_teaches_the_model_those_that_agreed_the_judge_and_how_often_wrong_answers_agree(shipped):
    quality = QualityModel(shipped)
    route = Route(job_id="j", task="simple_qa", model="gemini-2.5-flash", finished_at=None, agreed=["llama-4-70b"])
    before = quality.wrong_agreement("simple_qa")
    quality.learn_feedback(route, 0.0)
    assert quality.rate("simple_qa", "gemini-2.5-flash") < 0.9 and quality.rate("simple_qa", "llama-4-70b") < 0.91
    assert quality.wrong_agreement("simple_qa") > before
    judged = Route(job_id="k", task="simple_qa", model="gpt-4o", finished_at=None, judge="gemini-2.5-flash")
    quality.learn_feedback(judged, 1.0)
    assert quality.judge_rate("simple_qa", "gemini-2.5-flash") > 0.9
    sent = quality.take_evidence()
    other = QualityModel(shipped)
    other.apply_evidence(sent)
    assert other.rate("simple_qa", "llama-4-70b") == pytest.approx(quality.rate("simple_qa", "llama-4-70b"))
    assert quality.take_evidence() == [], "evidence is sent once"
