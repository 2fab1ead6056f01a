"""Feedback on the feedback topic (real broker, in-process replicas, the echo provider): learned once, by every
replica, kept through a restart; feedback that cannot be learned from dead-lettered."""

import asyncio
import time

import msgspec

from tests.integration.helpers import Setup, collect, job_bytes, make_topics, produce
from worker.cli.runs import running_worker
from worker.messages import Feedback, Result, Route
from worker.pipeline.consume import Worker
from worker.pipeline.kafka import make_producer
from worker.pipeline.outbox import partition_of
from worker.routing.learning import QualityModel

PUBLISH_S = 0.5


async def send_feedback(setup: Setup, value: bytes, key: bytes | None, partition: int | None = None) -> None:
    producer = make_producer(setup.config.kafka)
    await producer.start()
    try:
        await (await producer.send(setup.topics.feedback, value, key=key, partition=partition))
    finally:
        await producer.stop()


def feedback(job_id: str, **verdict: object) -> bytes:
    return msgspec.json.encode(Feedback(job_id=job_id, **verdict))  # type: ignore[arg-type]  # correct or score


async def until(condition, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.05)


async def answered(setup: Setup, ids: list[str]) -> dict[str, Result]:
    await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
    outputs = await collect(setup, until=lambda o: o.result_ids >= set(ids), timeout_s=60)
    return {r.job_id: r for r in outputs.results}


def test_feedback_is_learned_once_by_every_replica_and_survives_a_restart(bootstrap):
    setup = Setup(bootstrap, LLM_ROUTER__ROUTING__STATE_PUBLISH_INTERVAL_S=PUBLISH_S)
    expected = QualityModel(setup.config)
    facts = {}

    def rates(replicas: list[Worker], task: str, model: str) -> list[float]:
        return [r.runner.quality.rate(task, model) for r in replicas]

    async def scenario():
        await make_topics(setup)
        async with running_worker(setup.config) as a, running_worker(setup.config) as b:
            results = await answered(setup, ["fb-1", "fb-2"])
            first, second = results["fb-1"], results["fb-2"]
            assert first.model == second.model and first.task == second.task
            task, model = first.task, first.model
            prior = expected.rate(task, model)
            # A wrong answer, said once: every replica learns it within a few publish intervals.
            await send_feedback(setup, feedback("fb-1", correct=False), b"fb-1")
            route = Route(job_id="fb-1", task=task, model=model, finished_at=first.finished_at)
            expected.learn_feedback(route, 0.0)
            wrong_once = expected.rate(task, model)
            await until(lambda: rates([a, b], task, model) == [wrong_once] * 2, "both replicas learned the feedback")
            learners = sorted(r.feedback.stats.learned for r in (a, b))
            applied = sorted(r.evidence.applied for r in (a, b))
            # The same feedback again: counted once.
            await send_feedback(setup, feedback("fb-1", correct=False, source="again"), b"fb-1")
            await until(lambda: a.feedback.stats.repeated + b.feedback.stats.repeated == 1, "the repeat was taken")
            await asyncio.sleep(3 * PUBLISH_S)
            after_repeat = rates([a, b], task, model)
            # Feedback its producer did not key, on a partition its job id does not hash to: still learned.
            wrong = (partition_of(b"fb-2", 4) + 1) % 4
            await send_feedback(setup, feedback("fb-2", score=1.0), None, partition=wrong)
            expected.learn_feedback(Route(job_id="fb-2", task=task, model=model, finished_at=second.finished_at), 1.0)
            want = expected.rate(task, model)
            await until(lambda: rates([a, b], task, model) == [want, want], "both replicas learned the unkeyed one")
            rekeyed = a.feedback.stats.rekeyed + b.feedback.stats.rekeyed
        facts.update(prior=prior, wrong_once=wrong_once, learners=learners, applied=applied)
        facts.update(after_repeat=after_repeat, rekeyed=rekeyed, want=want)
        # Every replica restarted: the learned rates come back from the state topic, and the job's route,
        # marked, makes the same feedback sent again count for nothing.
        async with running_worker(setup.config) as c, running_worker(setup.config) as d:
            # A replica restores the learned rates as it starts (a version of its rates).
            await until(lambda: c.runner.quality.version > 0 < d.runner.quality.version, "both restored")
            facts["restored"] = rates([c, d], task, model)
            await send_feedback(setup, feedback("fb-1", correct=False), b"fb-1")
            await until(lambda: c.feedback.stats.repeated + d.feedback.stats.repeated == 1, "the replay was taken")
            await asyncio.sleep(3 * PUBLISH_S)
            facts["after_replay"] = rates([c, d], task, model)
            facts["learned_after_restart"] = c.feedback.stats.learned + d.feedback.stats.learned

    asyncio.run(scenario())
    want = facts["want"]
    assert facts["wrong_once"] < facts["prior"]
    assert facts["learners"] == [0, 1], "one replica took the feedback"
    assert facts["applied"][1] >= 1, "the other learned it from the evidence topic"
    assert facts["after_repeat"] == [facts["wrong_once"]] * 2, "the repeat changed nothing"
    assert facts["rekeyed"] == 1 and want > facts["wrong_once"]
    assert facts["restored"] == [want, want]
    assert facts["after_replay"] == [want, want] and facts["learned_after_restart"] == 0


def test_feedback_on_an_unknown_job_or_malformed_is_dead_lettered(bootstrap):
    setup = Setup(bootstrap)
    malformed = [b"not json", b'{"job_id": "fb-x"}', b'{"job_id": "fb-x", "correct": true, "score": 1}']

    async def scenario():
        await make_topics(setup)
        async with running_worker(setup.config) as worker:
            await answered(setup, ["fb-known"])
            await send_feedback(setup, feedback("fb-nobody", correct=True), b"fb-nobody")
            for value in malformed:
                await send_feedback(setup, value, b"fb-x")
            await send_feedback(setup, feedback("fb-known", score=0.5), b"fb-known")
            outputs = await collect(setup, until=lambda o: len(o.letters) >= 4, timeout_s=60, settle_s=1)
            await until(lambda: worker.feedback.stats.learned == 1, "the known job's feedback was learned")
        return outputs

    letters = asyncio.run(scenario()).letters
    kinds = sorted(letter.error_kind for letter, _, _ in letters)
    assert kinds == ["invalid_feedback"] * 3 + ["unknown_job"]
    assert all(letter.source_topic == setup.topics.feedback for letter, _, _ in letters)
    assert sorted(value for _, _, value in letters if value != feedback("fb-nobody", correct=True)) == sorted(malformed)
    unknown = next(letter for letter, _, _ in letters if letter.error_kind == "unknown_job")
    assert "fb-nobody" in unknown.error
