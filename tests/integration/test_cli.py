"""The command line against a real broker: topics create and list, produce, worker, results (follow, by id,
summary), costs, dlq; and every broker command against a port where no broker listens."""

import asyncio
import subprocess
import sys
import time

import msgspec
import orjson
import pytest

from tests.integration.helpers import REPO, Setup, collect
from worker.broker import free_port
from worker.messages import Job
from worker.pipeline.kafka import make_consumer
from worker.pipeline.outbox import partition_of


def cli(setup: Setup, *args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env=setup.process_env(),
        cwd=REPO,
    )


def test_topics_produce_worker_results(bootstrap, tmp_path, replicas):
    setup = Setup(bootstrap)
    created = cli(setup, "topics", "create", "--partitions", "3")
    assert created.returncode == 0, created.stderr
    assert created.stdout.decode().splitlines() == [
        f"{t}\tcreated"
        for t in (
            setup.topics.jobs,
            setup.topics.results,
            setup.topics.costs,
            setup.topics.dlq,
            setup.topics.state,
            setup.topics.finished,
            setup.topics.feedback,
            setup.topics.routes,
            setup.topics.evidence,
            setup.topics.batches,
        )
    ]
    again = cli(setup, "topics", "create")
    assert again.returncode == 0 and all(line.endswith("\texists") for line in again.stdout.decode().splitlines())

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(
        b'{"id": "cli-1", "prompt": "Summarize the meeting"}\n'
        b'{"prompt": "a job without an id gets one"}\n'
        b"\n"
        b'{"id": "cli-3", "prompt": "x", "colour": "red"}\n'
        b'{"id": "cli-4", "messages": [{"role": "user", "content": "Write a haiku"}], "tenant": "acme"}\n'
    )
    produced = cli(setup, "produce", str(jobs))
    assert produced.returncode == 1, "an invalid line makes the exit code 1"
    assert f"{jobs}:4: not a valid job: Object contains unknown field `colour`" in produced.stderr.decode()
    ids = produced.stdout.decode().split()
    assert len(ids) == 3 and ids[0] == "cli-1" and ids[2] == "cli-4" and len(ids[1]) == 36

    from_stdin = cli(setup, "produce", "-", stdin=b'{"id": "cli-5", "prompt": "What is 2+2?"}\n')
    assert from_stdin.returncode == 0 and from_stdin.stdout.decode().split() == ["cli-5"]
    ids.append("cli-5")

    replicas.start(setup, "w")
    raw = cli(setup, "results", "--json", "--count", "4", timeout=90)
    human = cli(setup, "results", "--count", "4", timeout=60)
    replicas.stop()
    assert raw.returncode == 0, raw.stderr
    results = [orjson.loads(line) for line in raw.stdout.decode().splitlines()]
    assert sorted(r["job_id"] for r in results) == sorted(ids)
    assert {r["job_id"]: r["task"] for r in results}["cli-1"] == "summarization"
    lines = human.stdout.decode().splitlines()
    assert len(lines) == 4 and all("\tok\t" in line for line in lines)
    assert any(line.startswith("cli-4\tok\tcreative_writing\t") and "\tattempts=1\t$" in line for line in lines)


def test_find_follow_summarize_costs_dead_letters_and_topics_list(bootstrap, tmp_path, replicas):
    setup = Setup(bootstrap, LLM_ROUTER__WORKER__MAX_JOB_BYTES=2000)
    assert cli(setup, "topics", "create", "--partitions", "2").returncode == 0
    jobs = [
        Job(id="find-1", prompt="What is the capital of France?", tenant="acme"),
        Job(id="find-2", prompt="Summarize the meeting notes", tenant="acme"),
        Job(id="find-3", prompt="What is 2+2?", tenant="globex"),
        # The echo provider answers with the prompt: an answer with a terminal code, a tab and a newline.
        Job(id="find-4", prompt="red \x1b[31m\tand\nmore", tenant="globex"),
        Job(id="find-big", prompt="x" * 2000),
    ]
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b"".join(msgspec.json.encode(job) + b"\n" for job in jobs))
    big = len(msgspec.json.encode(jobs[-1]))
    produced = cli(setup, "produce", str(path))
    assert produced.returncode == 1, "a job over worker.max_job_bytes is refused like an invalid line"
    assert produced.stderr.decode().splitlines() == [
        f"{path}:5: the job is {big:,} bytes, over worker.max_job_bytes (2,000)"
    ]
    assert produced.stdout.decode().split() == ["find-1", "find-2", "find-3", "find-4"]
    # Two raw lines the worker dead-letters: one not JSON, one too large.
    raw = cli(setup, "produce", "--raw", "-", stdin=b"not json\n" + msgspec.json.encode(jobs[-1]) + b"\n")
    assert raw.returncode == 0, raw.stderr

    replicas.start(setup, "w")
    # --follow waits for results that are not there yet; it finds both once the worker publishes them.
    found = cli(setup, "results", "find-2", "find-4", "--follow", "--timeout", "60", timeout=90)
    assert found.returncode == 0, found.stderr
    lines = found.stdout.decode().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == ["find-2", "find-4"]
    escaped = next(line for line in lines if line.startswith("find-4\t"))
    assert "red \\x1b[31m\\tand\\nmore" in escaped and "\x1b" not in escaped and escaped.count("\t") == 7

    outputs = asyncio.run(collect(setup, lambda o: len(o.results) >= 4 and len(o.letters) >= 2, timeout_s=60))
    replicas.stop()
    assert outputs.result_ids >= {"find-1", "find-2", "find-3", "find-4"}

    # Without --follow: read to the end offsets at start; an id not found is a line on stderr and exit 1.
    some = cli(setup, "results", "find-3", "nowhere", "find-1", "--json", "--timeout", "20")
    assert some.returncode == 1
    assert some.stderr.decode().splitlines() == [f"llm-router: nowhere: no result on {setup.topics.results}"]
    assert sorted(orjson.loads(line)["job_id"] for line in some.stdout.decode().splitlines()) == ["find-1", "find-3"]

    summary = cli(setup, "results", "--summary", "--json")
    assert summary.returncode == 0, summary.stderr
    figures = orjson.loads(summary.stdout)
    assert figures["results"] == len(outputs.results)
    assert figures["by_status"] == {
        status: sum(r.status == status for r in outputs.results) for status in {r.status for r in outputs.results}
    }
    by_model: dict[str, float] = {}
    for result in outputs.results:
        for attempt in result.attempts:
            by_model[attempt.model] = by_model.get(attempt.model, 0.0) + attempt.cost_usd
    assert figures["cost_usd_by_model"] == pytest.approx(by_model)
    latencies = sorted(r.latency_ms for r in outputs.results)
    assert figures["latency_ms"]["p50"] == latencies[(len(latencies) + 1) // 2 - 1]
    assert figures["latency_ms"]["p99"] == latencies[-1]
    human = cli(setup, "results", "--summary").stdout.decode()
    assert human.startswith(f"results: {len(outputs.results)}\n")

    costs = cli(setup, "costs", "--by", "tenant", "--json")
    assert costs.returncode == 0, costs.stderr
    sums = orjson.loads(costs.stdout)
    assert sums["by"] == "tenant"
    groups = {row["tenant"]: row for row in sums["groups"]}
    for tenant in ("acme", "globex"):
        events = [e for e in outputs.costs if e.tenant == tenant]
        assert groups[tenant]["jobs"] == len({e.job_id for e in events}) == 2
        assert groups[tenant]["attempts"] == len(events)
        assert groups[tenant]["cost_usd"] == pytest.approx(sum(e.cost_usd for e in events))
        assert groups[tenant]["output_tokens"] == sum(e.output_tokens for e in events)
    assert sums["total"]["attempts"] == len(outputs.costs)
    by_model_table = cli(setup, "costs").stdout.decode().splitlines()
    assert by_model_table[0].split() == ["model", "jobs", "attempts", "cost_usd", "input_tokens", "output_tokens"]
    assert by_model_table[-1].split()[:3] == [
        "total",
        str(len({e.job_id for e in outputs.costs})),
        str(len(outputs.costs)),
    ]

    letters = cli(setup, "dlq", "--json")
    assert letters.returncode == 0, letters.stderr
    rows = [orjson.loads(line) for line in letters.stdout.decode().splitlines()]
    assert sorted(row["error_kind"] for row in rows) == ["not_json", "too_large"]
    for row in rows:
        assert row["source_topic"] == setup.topics.jobs and row["error"]
    too_large = next(row for row in rows if row["error_kind"] == "too_large")
    assert too_large["size"] == big
    table = cli(setup, "dlq").stdout.decode().splitlines()
    assert table[0].split()[:3] == ["partition", "offset", "error_kind"] and len(table) == 3

    listed = cli(setup, "topics", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    topics = {row["topic"]: row for row in orjson.loads(listed.stdout)["topics"]}
    jobs_topic = topics[setup.topics.jobs]
    assert jobs_topic["exists"] and jobs_topic["partitions"] == 2 and jobs_topic["end_offsets"] == 6
    # The worker drained and committed everything before it stopped.
    assert jobs_topic["committed"] == 6 and jobs_topic["lag"] == 0
    assert topics[setup.topics.dlq]["end_offsets"] == 2 and topics[setup.topics.dlq]["lag"] is None


def test_feedback_sends_one_message_keyed_by_the_job_id_and_prints_it(bootstrap):
    setup = Setup(bootstrap)
    assert cli(setup, "topics", "create", "--partitions", "3").returncode == 0
    sent = [
        cli(setup, "feedback", "fb-1", "--wrong", "--source", "support"),
        cli(setup, "feedback", "fb-2", "--score", "0.75"),
    ]
    assert [out.returncode for out in sent] == [0, 0], [out.stderr for out in sent]
    printed = [orjson.loads(out.stdout) for out in sent]
    assert printed == [{"job_id": "fb-1", "correct": False, "source": "support"}, {"job_id": "fb-2", "score": 0.75}]

    async def read() -> list:
        consumer = make_consumer(setup.config.kafka, setup.topics.feedback, group_id=None)
        await consumer.start()
        try:
            records: list = []
            async with asyncio.timeout(30):
                while len(records) < 2:
                    for batch in (await consumer.getmany(timeout_ms=200)).values():
                        records.extend(batch)
            return records
        finally:
            await consumer.stop()

    records = sorted(asyncio.run(read()), key=lambda r: r.key)
    assert [orjson.loads(r.value) for r in records] == printed
    assert [(r.key, r.partition) for r in records] == [(k, partition_of(k, 3)) for k in (b"fb-1", b"fb-2")]


def test_a_missing_topic_is_one_line_and_exit_1(bootstrap):
    setup = Setup(bootstrap)
    for command in (
        ["results", "x"],
        ["results", "--summary"],
        ["costs"],
        ["spend"],
        ["dlq"],
        ["feedback", "x", "--correct"],
    ):
        out = cli(setup, *command, "--timeout", "20")
        assert out.returncode == 1, command
        assert len(out.stderr.decode().splitlines()) == 1 and "does not exist" in out.stderr.decode(), command
    listed = cli(setup, "topics", "list")
    assert listed.returncode == 0 and all(" no " in line for line in listed.stdout.decode().splitlines()[1:-1])


TIMEOUT_S = 3.0
# Starting the interpreter and importing the package, on a loaded machine.
STARTUP_SLACK_S = 5.0


@pytest.mark.parametrize(
    "command",
    [
        ["produce", "JOBS"],
        ["results"],
        ["results", "some-id"],
        ["results", "some-id", "--follow"],
        ["results", "--summary"],
        ["costs", "--by", "task"],
        ["spend", "--day", "2027-03-14"],
        ["dlq"],
        ["feedback", "j", "--wrong"],
        ["topics", "list"],
        ["topics", "create"],
        ["eval", "JOBS"],
        ["demo"],
        ["worker"],
    ],
)
def test_every_broker_command_against_a_stopped_broker_is_one_line_and_exit_1_within_its_timeout(command, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"id": "j", "prompt": "What is 2+2?", "checks": {"expected": "4"}}\n')
    servers = f"127.0.0.1:{free_port()}"
    setup = Setup(servers)
    args = [str(jobs) if arg == "JOBS" else arg for arg in command]
    started = time.monotonic()
    out = cli(setup, *args, "--timeout", f"{TIMEOUT_S:g}", timeout=60)
    elapsed = time.monotonic() - started
    assert out.returncode == 1
    assert out.stderr.decode().splitlines() == [f"llm-router: no Kafka broker answered at {servers} within 3 s"]
    assert out.stdout == b""
    assert elapsed <= TIMEOUT_S + STARTUP_SLACK_S
