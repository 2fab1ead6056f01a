"""CLI pieces that need no broker."""

import subprocess
import sys
from datetime import UTC, datetime

import msgspec
import pytest

from worker.cli.commands import format_result, parse_job_line
from worker.messages import ErrorInfo, Result, Usage


def test_a_line_without_id_gets_one():
    job = parse_job_line(b'{"prompt": "hi"}')
    assert len(job.id) == 36


def test_invalid_lines_say_why():
    with pytest.raises(ValueError, match="not JSON"):
        parse_job_line(b"{nope")
    with pytest.raises(ValueError, match="unknown field `colour`"):
        parse_job_line(b'{"id": "a", "prompt": "hi", "colour": "red"}')


def test_format_result_shows_the_output_or_the_error():
    ok = Result(
        job_id="a",
        status="ok",
        attempts=[],
        usage=Usage(1, 2),
        cost_usd=0.5,
        latency_ms=12,
        finished_at=datetime.now(UTC),
        output="hello\nworld",
        model="m",
    )
    assert "hello world" in format_result(ok) and "\tok\t" in format_result(ok)
    failed = msgspec.structs.replace(ok, status="failed", output=None, error=ErrorInfo("no_route", "why"))
    assert "no_route: why" in format_result(failed)


@pytest.mark.parametrize(
    "command",
    [[], ["worker"], ["produce"], ["results"], ["topics", "create"], ["demo"], ["schemas"], ["broker"], ["simulate"]],
)
def test_every_command_has_help(command):
    out = subprocess.run(
        [sys.executable, "-m", "worker", *command, "--help"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert "usage: llm-router" in out.stdout


def test_a_configuration_error_exits_2_with_the_key_path(tmp_path):
    env = {"LLM_ROUTER__WORKER__NOT_A_KEY": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "worker", "worker"], capture_output=True, text=True, timeout=30, env=env
    )
    assert out.returncode == 2
    assert "worker.not_a_key" in out.stderr
