"""A cheap model gets worse mid-run (the simulator's PATCH /_sim/models/...): with feedback on a tenth of the
blind jobs, the plans stop trusting it alone for that task type within 300 jobs."""

import asyncio
import random
import urllib.request

import msgspec

from tests.integration.helpers import Setup, collect, make_topics, produce, simulator_providers
from tests.integration.test_http_providers import KEYS
from worker.cli.runs import running_worker
from worker.messages import Feedback, Job, Result
from worker.pipeline.kafka import make_producer
from worker.providers import build_providers
from worker.routing.agreement import answer_key
from worker.simulator.server import SimulatorServer
from worker.simulator.settings import load_simulator_config

CHEAP = "gemini-2.5-flash"
FEEDBACK_EVERY = 10  # a tenth of the jobs
AFTER_DROP = 300  # within this many jobs after the drop the model is no longer trusted alone
WATCHED = 100  # jobs run after those, to see that it stays so
BATCH = 25


def question(job_id: str, rng: random.Random) -> tuple[Job, str]:
    a, b = rng.randint(10, 999), rng.randint(10, 999)
    prompt = f"What is {a} plus {b}? Number only. [[expect: {a + b}]] [[task: simple_qa]]"
    return Job(id=job_id, prompt=prompt, task="simple_qa", max_output_tokens=32), str(a + b)


def alone(result: Result) -> bool:
    """Whether the job was answered by the cheap model on its own (no agreement, no escalation)."""
    return [a.model for a in result.attempts] == [CHEAP]


def test_a_model_that_gets_worse_is_no_longer_trusted_alone_within_300_jobs(bootstrap, report):
    rng = random.Random(11)

    async def scenario():
        simulator = load_simulator_config()
        server = SimulatorServer(msgspec.structs.replace(simulator, latency_scale=0.0))
        url = await server.start()
        # Setup's floor of 0.85 lets one cheap model answer a simple question alone (its prior: 0.90).
        setup = Setup(bootstrap, LLM_ROUTER__ROUTING__STATE_PUBLISH_INTERVAL_S=0.5, **simulator_providers(url))
        producer = make_producer(setup.config.kafka)
        sent: list[tuple[Job, str]] = []
        try:
            await make_topics(setup)
            await producer.start()
            async with running_worker(setup.config, build_providers(setup.config, env=KEYS)):

                async def batch(count: int) -> list[Result]:
                    start = len(sent)
                    jobs = [question(f"drift-{start + i}", rng) for i in range(count)]
                    sent.extend(jobs)
                    await produce(setup, [(job.id.encode(), msgspec.json.encode(job)) for job, _ in jobs])
                    ids = {job.id for job, _ in jobs}
                    outputs = await collect(setup, until=lambda o: o.result_ids >= ids, timeout_s=60)
                    results = {r.job_id: r for r in outputs.results if r.job_id in ids}
                    for index, (job, expected) in enumerate(jobs, start=start):
                        if index % FEEDBACK_EVERY == 0:  # the user grades a sample
                            result = results[job.id]
                            right = result.status == "ok" and answer_key(result.output or "") == answer_key(expected)
                            verdict = Feedback(job_id=job.id, correct=right, source="test")
                            await producer.send(
                                setup.topics.feedback, msgspec.json.encode(verdict), key=job.id.encode()
                            )
                    await producer.flush()
                    return [results[job.id] for job, _ in jobs]

                before = []
                for _ in range(4):
                    before += await batch(BATCH)
                behaviour = server.simulator.config.models[CHEAP]
                patch = {"accuracy": behaviour.accuracy | {"simple_qa": 0.2}}
                request = urllib.request.Request(
                    f"{url}/_sim/models/{CHEAP}", data=msgspec.json.encode(patch), method="PATCH"
                )
                with await asyncio.to_thread(urllib.request.urlopen, request) as response:
                    assert response.status == 200
                after = []
                for _ in range((AFTER_DROP + WATCHED) // BATCH):
                    after += await batch(BATCH)
            return before, after
        finally:
            await producer.stop()
            await server.stop()

    before, after = asyncio.run(scenario())
    assert sum(map(alone, before)) >= 0.9 * len(before), "before the drop the cheap model answers alone"
    trusted = [i for i, result in enumerate(after) if alone(result)]
    last = trusted[-1] + 1 if trusted else 0
    report(
        f"drift: {CHEAP} simple_qa 0.9 -> 0.2 after {len(before)} jobs, feedback on 1 in {FEEDBACK_EVERY}: answered "
        f"alone by it {len(trusted)} of the next {len(after)} jobs, the last one the {last}th"
    )
    assert last <= AFTER_DROP, "the plans stopped trusting it alone within AFTER_DROP jobs, and for the WATCHED after"
