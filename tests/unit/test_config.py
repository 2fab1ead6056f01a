"""Configuration: the defaults load; wrong or unknown keys fail with their path; env overrides."""

import tomllib
from pathlib import Path

import msgspec
import pytest

from worker.config import CONFIG_ENV, DEFAULT_CONFIG, DEFAULTS_DIR, ConfigError, load_config, parse_config
from worker.simulator.settings import DEFAULT_SIMULATOR_CONFIG, dump_simulator_config, load_simulator_config


def raw_default():
    return tomllib.loads(DEFAULT_CONFIG.read_text())


def test_default_config_loads_with_the_reference_prices():
    config = load_config(env={})
    assert config.models["gpt-4o"].input_usd_per_mtok == 2.50
    assert config.models["claude-3-5-sonnet"].output_usd_per_mtok == 15.00
    assert config.models["gemini-2.5-flash"].context_window == 1_000_000
    assert config.tasks["code_generation"].models[0] == "claude-3-5-sonnet"
    assert config.kafka.topics.jobs == "llm.jobs"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda raw: raw["worker"].__setitem__("max_in_fligt", 5), "worker.max_in_fligt: unknown key"),
        (lambda raw: raw["kafka"]["topics"].__setitem__("extra", "x"), "kafka.topics.extra: unknown key"),
        (lambda raw: raw["worker"].__setitem__("max_in_flight", 0), "worker.max_in_flight: Expected `int` >= 1"),
        (
            lambda raw: raw["models"]["gpt-4o"]["quality"].__setitem__("reasoning", 1.5),
            "models.gpt-4o.quality.reasoning: Expected `float` <= 1.0",
        ),
        (
            lambda raw: raw["models"]["llama-4-70b"].__delitem__("provider"),
            "models.llama-4-70b.provider: required key is missing",
        ),
        (
            lambda raw: raw["models"]["gpt-4o"].__setitem__("provider", "nobody"),
            "models.gpt-4o.provider: unknown provider 'nobody'",
        ),
        (
            lambda raw: raw["tasks"]["summarization"]["models"].append("gpt-5"),
            "tasks.summarization.models[3]: unknown model 'gpt-5'",
        ),
        (
            lambda raw: raw["classifier"]["rules"][1].__setitem__("task", "poetry"),
            "classifier.rules[1].task: unknown task 'poetry'",
        ),
        (
            lambda raw: raw["providers"]["openai"].__setitem__("kind", "carrier-pigeon"),
            "providers.openai.kind: Invalid enum value 'carrier-pigeon'",
        ),
        (
            lambda raw: raw["models"]["gpt-4o"].__setitem__("capabilities", ["tools", "telepathy"]),
            "models.gpt-4o.capabilities[1]: unknown capability 'telepathy' (known: tools, vision, json_schema, seed)",
        ),
        (
            lambda raw: raw["models"]["gpt-4o"].__setitem__("capabilities", "tools"),
            "models.gpt-4o.capabilities: Expected `array`, got `str`",
        ),
    ],
)
def test_wrong_or_unknown_keys_name_their_path(mutate, message):
    raw = raw_default()
    mutate(raw)
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="router.toml")
    assert message in str(info.value)


def test_environment_overrides_any_key():
    config = load_config(
        env={
            "LLM_ROUTER__WORKER__MAX_IN_FLIGHT": "12",
            "LLM_ROUTER__KAFKA__TOPICS__RESULTS": "my.results",
            "LLM_ROUTER__MODELS__GPT_4O__INPUT_USD_PER_MTOK": "2.0",
            "llm_router__worker__shutdown_grace_s": "1.5",
            "KAFKA_BOOTSTRAP_SERVERS": "broker-1:9092,broker-2:9092",
        }
    )
    assert config.worker.max_in_flight == 12
    assert config.worker.shutdown_grace_s == 1.5
    assert config.kafka.topics.results == "my.results"
    assert config.models["gpt-4o"].input_usd_per_mtok == 2.0
    assert config.kafka.bootstrap_servers == "broker-1:9092,broker-2:9092"


def test_unknown_environment_key_fails_with_its_path():
    with pytest.raises(ConfigError, match=r"unknown key worker\.max_inflight"):
        load_config(env={"LLM_ROUTER__WORKER__MAX_INFLIGHT": "3"})


def test_wrongly_typed_environment_value_fails_with_its_path():
    with pytest.raises(ConfigError, match=r"worker\.max_in_flight: Expected `int`, got `str`"):
        load_config(env={"LLM_ROUTER__WORKER__MAX_IN_FLIGHT": "many"})


def test_a_missing_file_or_bad_toml_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[worker\nmax_in_flight = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, env={})


def test_dead_letters_must_fit_in_a_request():
    raw = raw_default()
    raw["kafka"]["max_request_bytes"] = raw["worker"]["max_job_bytes"]
    with pytest.raises(ConfigError, match=r"kafka\.max_request_bytes: must exceed worker\.max_job_bytes"):
        parse_config(raw)


def test_an_explicit_file_wins_then_the_environments_then_the_shipped_default_whatever_the_directory(
    tmp_path, monkeypatch
):
    default = DEFAULT_CONFIG.read_text()
    assert 'group_id = "llm-router"' in default
    explicit, from_env = tmp_path / "explicit.toml", tmp_path / "from-env.toml"
    explicit.write_text(default.replace('group_id = "llm-router"', 'group_id = "explicit"'))
    from_env.write_text(default.replace('group_id = "llm-router"', 'group_id = "from-env"'))
    # A config/router.toml in the working directory is not the default: the shipped one is.
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "router.toml").write_text(default.replace('group_id = "llm-router"', 'group_id = "cwd"'))
    monkeypatch.chdir(tmp_path)
    assert load_config(explicit, env={CONFIG_ENV: str(from_env)}).kafka.group_id == "explicit"
    assert load_config(env={CONFIG_ENV: str(from_env)}).kafka.group_id == "from-env"
    assert load_config(env={}).kafka.group_id == "llm-router"


def test_the_shipped_defaults_are_every_file_of_the_repos_config_folder():
    # In a checkout (editable install) they are config/ itself; a wheel carries that folder as
    # worker/defaults/, which scripts/wheel-check.sh checks on the built wheel.
    repo_config = Path(__file__).resolve().parents[2] / "config"
    assert DEFAULTS_DIR.resolve() == repo_config
    assert DEFAULT_CONFIG.parent == DEFAULTS_DIR and DEFAULT_SIMULATOR_CONFIG.parent == DEFAULTS_DIR
    assert {"router.toml", "simulator.toml"} <= {p.name for p in DEFAULTS_DIR.glob("*.toml")}


def test_the_simulator_config_defaults_to_the_shipped_one_whatever_the_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_simulator_config()
    assert "gpt-4o" in config.models
    assert load_simulator_config(DEFAULT_SIMULATOR_CONFIG) == config


def test_the_shifted_simulator_config_differs_from_the_shipped_one_only_in_the_accuracies_it_names():
    shipped, shifted = load_simulator_config(), load_simulator_config(DEFAULTS_DIR / "simulator-shifted.toml")
    changed = {
        (model, task): (behaviour.accuracy[task], shifted.models[model].accuracy[task])
        for model, behaviour in shipped.models.items()
        for task in behaviour.accuracy
        if behaviour.accuracy[task] != shifted.models[model].accuracy[task]
    }
    assert changed == {
        ("gemini-2.5-flash", "summarization"): (0.90, 0.70),
        ("gemini-2.5-flash", "complex_reasoning"): (0.86, 0.66),
        ("claude-3-5-sonnet-20241022", "code_generation"): (0.93, 0.75),
        ("llama-4-70b", "simple_qa"): (0.91, 0.97),
        ("llama-4-70b", "code_generation"): (0.89, 0.95),
    }

    def without_accuracies(config):
        models = {model: msgspec.structs.replace(b, accuracy={}) for model, b in config.models.items()}
        return msgspec.structs.replace(config, models=models)

    assert without_accuracies(shifted) == without_accuracies(shipped)


def test_cache_prices_default_to_the_provider_kinds_published_ratio():
    raw = raw_default()
    for model in raw["models"].values():
        model.pop("cached_input_usd_per_mtok", None)
        model.pop("cache_write_usd_per_mtok", None)
    models = parse_config(raw).models
    ratios = {
        name: (m.cached_input_usd_per_mtok / m.input_usd_per_mtok, m.cache_write_usd_per_mtok / m.input_usd_per_mtok)
        for name, m in models.items()
    }
    assert ratios == {
        "gpt-4o": (0.5, 1.0),
        "claude-3-5-sonnet": (pytest.approx(0.1), 1.25),
        "gemini-2.5-flash": (0.25, 1.0),
        "llama-4-70b": (1.0, 1.0),
    }
    shipped = load_config(env={}).models
    assert (shipped["gpt-4o"].cached_input_usd_per_mtok, shipped["gpt-4o"].cache_write_usd_per_mtok) == (1.25, 2.50)
    assert load_config(env={}).providers["anthropic"].prompt_cache is True
    overridden = load_config(env={"LLM_ROUTER__MODELS__GPT_4O__CACHED_INPUT_USD_PER_MTOK": "0.625"}).models["gpt-4o"]
    assert overridden.cached_input_usd_per_mtok == 0.625


def test_each_shipped_model_declares_what_its_provider_documents():
    models = load_config(env={}).models
    assert models["gpt-4o"].capabilities == ["tools", "vision", "json_schema", "seed"]
    assert models["claude-3-5-sonnet"].capabilities == ["tools", "vision"], "no native structured output, no seed"
    assert models["gemini-2.5-flash"].capabilities == ["tools", "vision", "json_schema", "seed"]
    assert models["llama-4-70b"].capabilities == ["tools", "vision", "json_schema", "seed"]


def test_capabilities_default_to_none_and_the_environment_sets_them():
    raw = raw_default()
    del raw["models"]["gpt-4o"]["capabilities"]
    assert parse_config(raw).models["gpt-4o"].capabilities == []
    config = load_config(env={"LLM_ROUTER__MODELS__LLAMA_4_70B__CAPABILITIES": '["tools"]'})
    assert config.models["llama-4-70b"].capabilities == ["tools"]


@pytest.mark.parametrize("batch_latency_s", [None, 5.0])
def test_a_dumped_simulator_config_reads_back_the_same(tmp_path, batch_latency_s):
    config = msgspec.structs.replace(load_simulator_config(), batch_latency_s=batch_latency_s, latency_scale=0.2)
    path = tmp_path / "simulator.toml"
    path.write_text(dump_simulator_config(config))
    assert load_simulator_config(path) == config
