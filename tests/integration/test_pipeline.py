"""Jobs in, results and cost events out, offsets committed, bad input dead-lettered (real broker)."""

import asyncio
import signal
import time

import msgspec
import pytest

from tests.integration.helpers import (
    Setup,
    collect,
    committed,
    job_bytes,
    make_topics,
    produce,
    provider_latency,
)
from worker.cli.runs import running_worker
from worker.messages import Checks


def test_every_job_gets_one_result_and_a_cost_event_per_attempt(bootstrap):
    setup = Setup(
        bootstrap,
        LLM_ROUTER__WORKER__MAX_IN_FLIGHT=20,
        LLM_ROUTER__WORKER__COMMIT_INTERVAL_MS=100,
        LLM_ROUTER__PROVIDERS__GEMINI__LATENCY_MS=30,
        LLM_ROUTER__PROVIDERS__GEMINI__FAILURE_RATE=0.3,
    )
    prompts = ["What is 2+2?", "Implement a queue", "Summarize the report", "Write a poem"]
    jobs = [(f"j{i}", prompts[i % 4]) for i in range(300)]

    async def scenario():
        await make_topics(setup)
        done = asyncio.Event()
        watch = {"max_in_flight": 0, "paused": False}

        async def watcher(worker):
            while not done.is_set():
                watch["max_in_flight"] = max(watch["max_in_flight"], worker.tracker.in_flight)
                watch["paused"] |= bool(worker.consumer.paused())
                await asyncio.sleep(0.002)

        async with running_worker(setup.config) as worker:
            watching = asyncio.create_task(watcher(worker))
            ends = await produce(
                setup, [(job_id.encode(), job_bytes(job_id, prompt, tenant="acme")) for job_id, prompt in jobs]
            )
            outputs = await collect(setup, until=lambda o: len(o.result_ids) >= len(jobs), timeout_s=90, settle_s=0.5)
            await asyncio.sleep(0.3)  # one more commit interval
            done.set()
        await watching
        return outputs, worker, watch, ends, await committed(setup, list(ends))

    outputs, worker, watch, ends, positions = asyncio.run(scenario())
    assert outputs.result_ids == {job_id for job_id, _ in jobs}
    assert outputs.duplicates() == 0
    assert all(r.status == "ok" for r in outputs.results)
    attempts = {(r.job_id, a.number, a.model, a.cost_usd) for r in outputs.results for a in r.attempts}
    events = {(e.job_id, e.attempt, e.model, e.cost_usd) for e in outputs.costs}
    assert attempts == events and len(outputs.costs) == len(events)
    escalated = [r for r in outputs.results if len(r.attempts) > 1]
    assert escalated, "a 30% failure rate on the cheap model must escalate some jobs"
    assert all(e.tenant == "acme" for e in outputs.costs)
    assert watch["max_in_flight"] <= 20 and watch["paused"], watch
    assert positions == ends, "every partition committed up to its end"
    assert worker.stats.results_ok == len(jobs) and worker.stats.abandoned == 0


def test_a_job_that_waits_holds_up_neither_the_jobs_fetched_with_it_nor_their_deadlines(bootstrap):
    """A fetch's jobs run one after another in one task while they finish at once (the in-process
    provider); the first that waits keeps that task, and the jobs after it get a task each. So the
    quick jobs fetched after a slow one finish at once, and the job deadline cancels the slow job alone."""
    setup = Setup(
        bootstrap,
        LLM_ROUTER__ROUTING__JOB_DEADLINE_S=1.0,
        LLM_ROUTER__PROVIDERS__OPENAI__LATENCY_MS=3000,  # gpt-4o's calls outlast the deadline
        LLM_ROUTER__WORKER__COMMIT_INTERVAL_MS=100,
    )
    slow = {f"s{i}" for i in range(0, 90, 3)}
    ids = [f"s{i}" if f"s{i}" in slow else f"q{i}" for i in range(90)]

    async def scenario():
        await make_topics(setup)
        # All produced before the worker starts: each fetch mixes slow and quick jobs.
        ends = await produce(
            setup, [(i.encode(), job_bytes(i, model="gpt-4o") if i in slow else job_bytes(i)) for i in ids]
        )
        async with running_worker(setup.config) as worker:
            outputs = await collect(setup, until=lambda o: len(o.result_ids) >= len(ids), timeout_s=60, settle_s=0.3)
        return outputs, worker, ends, await committed(setup, list(ends))

    outputs, worker, ends, positions = asyncio.run(scenario())
    assert outputs.result_ids == set(ids) and outputs.duplicates() == 0
    by_id = {r.job_id: r for r in outputs.results}
    quick = [by_id[i] for i in ids if i not in slow]
    late = [by_id[i] for i in slow]
    assert all(r.status == "ok" for r in quick)
    assert all(r.status == "failed" and r.error is not None and r.error.kind == "deadline_exceeded" for r in late)
    assert all(900 <= r.latency_ms < 2500 for r in late), sorted(r.latency_ms for r in late)
    # The quick jobs did not wait for a slow one fetched before them: all were done before any deadline.
    assert max(r.finished_at for r in quick) < min(r.finished_at for r in late)
    assert positions == ends and worker.stats.abandoned == 0


def test_bad_input_goes_to_the_dead_letter_topic_and_the_worker_keeps_going(bootstrap, replicas):
    setup = Setup(bootstrap, LLM_ROUTER__WORKER__MAX_JOB_BYTES=4096)
    # Each with the id it can be answered under (None: unreadable), filled in per message.
    bad_kinds = [
        (b"not json at all", "not_json", None),
        (b'{"prompt": "no id"}', "invalid_job", None),
        (b'{"id": "", "prompt": "empty id"}', "invalid_job", None),
        (b'{"id": "ID", "prompt": "p", "unknown_field": 1}', "invalid_job", "ID"),
        (b'{"id": "ID", "messages": [{"role": "user"}]}', "invalid_job", "ID"),
        (b'{"id": "ID", "prompt": "' + b"y" * 5000 + b'"}', "too_large", "ID"),
        (b'{"id": "ID", "prompt": "  "}', "invalid_job", "ID"),
        (b'{"id": "tab\\there", "prompt": "p"}', "invalid_job", None),
        (b"\x00\x01\x02", "not_json", None),
        (b"null", "invalid_job", None),
    ]
    messages, expected_letters, good, rejected = [], [], [], {}
    for i in range(400):
        if i % 2:
            template, kind, readable = bad_kinds[(i // 2) % len(bad_kinds)]
            value = template.replace(b'"ID"', f'"bad-{i}"'.encode())
            messages.append((f"bad-{i}".encode(), value))
            expected_letters.append((f"bad-{i}".encode(), value, kind))
            if readable:
                rejected[f"bad-{i}"] = kind
        else:
            messages.append((f"good-{i}".encode(), job_bytes(f"good-{i}")))
            good.append(f"good-{i}")
    worker = replicas.start(setup, "w1")

    async def scenario():
        await make_topics(setup)
        await worker.wait_assigned()
        ends = await produce(setup, messages)
        outputs = await collect(
            setup,
            until=lambda o: len(o.result_ids) >= len(good) + len(rejected) and len(o.letters) >= len(expected_letters),
            timeout_s=90,
            settle_s=1.0,
        )
        return outputs, ends, await committed(setup, list(ends))

    outputs, ends, positions = asyncio.run(scenario())
    assert worker.process.poll() is None, "the worker must not exit on bad input"
    starts = [e for e in worker.events() if e.get("event") == "worker starting"]
    assert len(starts) == 1
    assert starts[0]["event_loop"] == "uvloop", "worker processes run on uvloop by default (worker.event_loop = auto)"
    worker.stop()
    # A dead-lettered job whose id can be read is answered on the results topic too, with the same reason.
    assert outputs.result_ids == set(good) | set(rejected) and len(rejected) == 80
    failed = {r.job_id: r for r in outputs.results if r.job_id in rejected}
    assert len(expected_letters) == 200 and len(outputs.letters) == 200
    by_key = {key: (letter, value) for letter, key, value in outputs.letters}
    for key, value, kind in expected_letters:
        letter, sent_back = by_key[key]
        assert letter.error_kind == kind and letter.error
        if key.decode() in rejected:
            result = failed[key.decode()]
            assert result.status == "failed" and result.error is not None and not result.attempts
            assert (result.error.kind, result.error.message) == (kind, letter.error)
        assert letter.source_topic == setup.topics.jobs and letter.original_size == len(value)
        assert sent_back == value[:4096]
        assert letter.truncated == (len(value) > 4096)
    assert positions == ends, "the offsets of dead letters are committed too"


def test_sigterm_drains_in_flight_jobs_commits_and_a_restart_redoes_nothing(bootstrap, replicas):
    setup = Setup(bootstrap, LLM_ROUTER__WORKER__SHUTDOWN_GRACE_S=20)
    slow = provider_latency(4000)
    ids = [f"t{i}" for i in range(300)]
    first = replicas.start(setup, "first", **slow)

    async def scenario():
        await make_topics(setup)
        await first.wait_assigned()
        await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
        # The jobs are now in flight: each call takes 4 s, and the worker has had 2 s to take them (a
        # broker busy with many topics took over 0.7 s to serve the new topic's first fetch).
        await asyncio.sleep(2.0)
        first.signal(signal.SIGTERM)
        sent = time.monotonic()
        code = await asyncio.to_thread(first.wait, 40)
        elapsed = time.monotonic() - sent
        before = await collect(setup, until=lambda o: False, timeout_s=3)
        await replicas.start(setup, "second").wait_assigned()
        after = await collect(setup, until=lambda o: len(o.result_ids) >= len(ids), timeout_s=60, settle_s=2)
        return code, elapsed, before, after

    code, elapsed, before, after = asyncio.run(scenario())
    replicas.stop()
    drained = [e for e in first.events() if e.get("event") == "draining in-flight jobs"]
    assert code == 0
    assert elapsed < 20, f"exit took {elapsed:.1f} s, over the grace period"
    assert drained and drained[0]["jobs"] > 0, "SIGTERM must find jobs in flight"
    assert len(before.result_ids) >= drained[0]["jobs"], "every in-flight job finished before exit"
    assert after.result_ids == set(ids), "no job lost"
    assert after.duplicates() == 0, "no job redone after the restart: the drained offsets were committed"


def test_a_grace_period_too_short_abandons_jobs_uncommitted_and_they_are_redelivered(bootstrap, replicas):
    setup = Setup(bootstrap, LLM_ROUTER__WORKER__SHUTDOWN_GRACE_S=0.5)
    ids = [f"a{i}" for i in range(100)]
    slow = provider_latency(10000)
    first = replicas.start(setup, "first", **slow)

    async def scenario():
        await make_topics(setup)
        await first.wait_assigned()
        await produce(setup, [(i.encode(), job_bytes(i)) for i in ids])
        await asyncio.sleep(
            2.5
        )  # taken, and each call takes 10 s (a busy broker can take a second to serve the first fetch)
        first.signal(signal.SIGTERM)
        code = await asyncio.to_thread(first.wait, 30)
        await replicas.start(setup, "second").wait_assigned()
        outputs = await collect(setup, until=lambda o: len(o.result_ids) >= len(ids), timeout_s=60, settle_s=1)
        return code, outputs

    code, outputs = asyncio.run(scenario())
    replicas.stop()
    abandoned = [e for e in first.events() if e.get("event") == "abandoned unfinished jobs uncommitted"]
    assert code == 0 and abandoned and abandoned[0]["jobs"] > 0
    assert outputs.result_ids == set(ids) and outputs.duplicates() == 0


def test_failed_jobs_get_a_failed_result_with_the_reason(bootstrap):
    setup = Setup(bootstrap, LLM_ROUTER__PROVIDERS__GEMINI__FAILURE_RATE=1.0)
    jobs = [
        ("pii", job_bytes("pii", allowed_providers=["on-prem"])),
        ("only-gemini", job_bytes("only-gemini", allowed_providers=["gemini"])),
        ("ok", job_bytes("ok")),
    ]

    async def scenario():
        await make_topics(setup)
        async with running_worker(setup.config):
            await produce(setup, [(k.encode(), v) for k, v in jobs])
            return await collect(setup, until=lambda o: len(o.result_ids) >= 3, timeout_s=60)

    results = {r.job_id: r for r in asyncio.run(scenario()).results}
    assert results["pii"].status == "failed" and results["pii"].error.kind == "no_route"
    assert "allowed_providers" in results["pii"].error.message
    assert results["only-gemini"].status == "failed" and results["only-gemini"].error.kind == "refused"
    assert len(results["only-gemini"].attempts) == 1
    assert results["ok"].status == "ok" and results["ok"].model == "llama-4-70b"
    assert msgspec.json.encode(results["pii"])  # round-trips


def test_learned_rates_survive_a_restart_through_the_state_topic(bootstrap):
    setup = Setup(bootstrap, LLM_ROUTER__ROUTING__STATE_PUBLISH_INTERVAL_S=0.2)
    # The echo answer is never "42": every verified attempt fails and teaches the rates.
    jobs = [(f"v{i}", job_bytes(f"v{i}", "What is six times seven?", checks=Checks(expected="42"))) for i in range(30)]

    async def scenario():
        await make_topics(setup)
        async with running_worker(setup.config) as first:
            await produce(setup, [(k.encode(), v) for k, v in jobs])
            await collect(setup, until=lambda o: len(o.result_ids) >= len(jobs), timeout_s=60)
        # A restarted worker restores the learned rates from the state topic as it starts, before its first job
        # (it joins the group after restoring them).
        async with running_worker(setup.config) as second:
            async with asyncio.timeout(30):
                while not second.consumer.assignment():
                    await asyncio.sleep(0.05)
        return first.runner.quality, second.runner.quality

    learned, restored = asyncio.run(scenario())
    rate = learned.rate("simple_qa", "gemini-2.5-flash")
    assert rate < learned.prior("simple_qa", "gemini-2.5-flash") - 0.2
    assert restored.rate("simple_qa", "gemini-2.5-flash") == pytest.approx(rate)
    assert restored.snapshot() == learned.snapshot()
