"""The command line against a real broker: topics create, produce, worker, results."""

import subprocess
import sys

import orjson

from tests.integration.helpers import REPO, Setup


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
