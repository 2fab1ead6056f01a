"""Generation settings: what intake refuses, each adapter's wire fields and what it leaves out, and what the
simulator refuses as each real API does."""

import asyncio

import msgspec
import pytest

from worker.config import load_config
from worker.messages import ChatMessage, Job
from worker.pipeline.intake import Rejection, decode_job
from worker.providers import Sampling, anthropic, build_providers, dropped_params, gemini, openai
from worker.providers.base import CompletionRequest
from worker.simulator.sampling import sampling_error

LIMIT = 1024 * 1024
KEYS = {"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k", "GEMINI_API_KEY": "k", "LLAMA_API_KEY": "k"}
ALL = Sampling(temperature=0.3, top_p=0.9, stop=("END", "##"), seed=42)


@pytest.mark.parametrize(
    ("field", "path"),
    [
        ('"temperature": 2.5', "$.temperature"),
        ('"temperature": -0.5', "$.temperature"),
        ('"top_p": 1.01', "$.top_p"),
        ('"stop": ["a", "b", "c", "d", "e"]', "$.stop"),
        ('"stop": ["a", ""]', "$.stop[1]"),
        ('"stop": "END"', "$.stop"),
        ('"seed": 1.5', "$.seed"),
        ('"seed": "7"', "$.seed"),
    ],
)
def test_settings_out_of_range_are_invalid_jobs_with_the_fields_path(field, path):
    rejection = decode_job(b'{"id": "j", "prompt": "x", ' + field.encode() + b"}", LIMIT)
    assert isinstance(rejection, Rejection)
    assert rejection.kind == "invalid_job" and rejection.job_id == "j"
    assert rejection.message.endswith(f"at `{path}`"), rejection.message


def test_settings_at_their_bounds_are_taken():
    job = decode_job(
        b'{"id": "j", "prompt": "x", "temperature": 2, "top_p": 0, "stop": ["a","b","c","d"], "seed": -1}', LIMIT
    )
    assert isinstance(job, Job)
    assert Sampling.of(job) == Sampling(temperature=2, top_p=0, stop=("a", "b", "c", "d"), seed=-1)
    assert Sampling.of(Job(id="j", prompt="x")).settings() == {}


def test_openai_sends_all_four_under_its_names():
    assert openai.sampling_fields(ALL) == ({"temperature": 0.3, "top_p": 0.9, "stop": ["END", "##"], "seed": 42}, [])
    # 0 is a setting (greedy), not an absent one
    assert openai.sampling_fields(Sampling(temperature=0.0, seed=0)) == ({"temperature": 0.0, "seed": 0}, [])


def test_anthropic_leaves_out_seed_a_temperature_above_1_and_top_p_beside_a_temperature():
    v2023, v2026 = "2023-06-01", "2026-10-21"
    assert anthropic.sampling_fields(ALL, v2023) == (
        {"temperature": 0.3, "stop_sequences": ["END", "##"]},
        ["top_p", "seed"],
    )
    assert anthropic.sampling_fields(Sampling(top_p=0.9, stop=("x",)), v2023) == (
        {"top_p": 0.9, "stop_sequences": ["x"]},
        [],
    )
    assert anthropic.sampling_fields(Sampling(temperature=1.0), v2023) == ({"temperature": 1.0}, [])
    # a temperature left out as out of range leaves room for top_p
    assert anthropic.sampling_fields(Sampling(temperature=1.5, top_p=0.5), v2023) == ({"top_p": 0.5}, ["temperature"])
    # the API version that removed temperature and top_p keeps only stop_sequences
    assert anthropic.sampling_fields(ALL, v2026) == (
        {"stop_sequences": ["END", "##"]},
        ["temperature", "top_p", "seed"],
    )


def test_gemini_sends_all_four_in_generation_config_names():
    assert gemini.sampling_fields(ALL) == (
        {"temperature": 0.3, "topP": 0.9, "stopSequences": ["END", "##"], "seed": 42},
        [],
    )


def test_dropped_params_by_provider_kind():
    config = load_config(env={})

    def call(sampling: Sampling) -> CompletionRequest:
        return CompletionRequest(job_id="j", model="m", messages=[], max_output_tokens=10, sampling=sampling)

    assert dropped_params(config.providers["openai"], call(ALL)) == []
    assert dropped_params(config.providers["llama"], call(ALL)) == []
    assert dropped_params(config.providers["gemini"], call(ALL)) == []
    assert dropped_params(config.providers["anthropic"], call(ALL)) == ["top_p", "seed"]
    newer = msgspec.structs.replace(config.providers["anthropic"], anthropic_version="2026-10-21")
    assert dropped_params(newer, call(ALL)) == ["temperature", "top_p", "seed"]
    assert dropped_params(config.providers["anthropic"], call(Sampling(temperature=2.0, seed=1))) == [
        "temperature",
        "seed",
    ]
    assert dropped_params(config.providers["anthropic"], call(Sampling())) == []


def test_each_adapter_puts_the_settings_in_its_body():
    providers = build_providers(load_config(env={}), env=KEYS).clients
    request = CompletionRequest(
        job_id="j",
        model="gpt-4o",
        messages=[ChatMessage(role="user", content="hi")],
        max_output_tokens=10,
        sampling=ALL,
    )
    try:
        body = providers["openai"].request_body(request)
        assert (body["temperature"], body["top_p"], body["stop"], body["seed"]) == (0.3, 0.9, ["END", "##"], 42)
        body = providers["llama"].request_body(msgspec.structs.replace(request, model="llama-4-70b"))
        assert (body["temperature"], body["top_p"], body["stop"], body["seed"]) == (0.3, 0.9, ["END", "##"], 42)
        body = providers["anthropic"].request_body(msgspec.structs.replace(request, model="claude-3-5-sonnet"))
        assert (body["temperature"], body["stop_sequences"]) == (0.3, ["END", "##"])
        assert not {"top_p", "seed", "stop"} & body.keys() and body["max_tokens"] == 10
        config = providers["gemini"].request_body(msgspec.structs.replace(request, model="gemini-2.5-flash"))[
            "generationConfig"
        ]
        assert config == {
            "maxOutputTokens": 10,
            "temperature": 0.3,
            "topP": 0.9,
            "stopSequences": ["END", "##"],
            "seed": 42,
        }
        # no settings: no fields, each provider's defaults
        plain = providers["openai"].request_body(msgspec.structs.replace(request, sampling=Sampling()))
        assert not {"temperature", "top_p", "stop", "seed"} & plain.keys()
    finally:
        asyncio.run(_close(providers))


async def _close(providers):
    for provider in providers.values():
        await provider.close()


@pytest.mark.parametrize(
    ("wire", "body", "message", "param", "code"),
    [
        (
            "openai",
            {"temperature": 2.5},
            "Expected a value <= 2, but got 2.5",
            "temperature",
            "decimal_above_max_value",
        ),
        ("openai", {"temperature": -1}, "Expected a value >= 0, but got -1", "temperature", "decimal_below_min_value"),
        ("openai", {"top_p": 1.2}, "Expected a value <= 1", "top_p", "decimal_above_max_value"),
        (
            "openai",
            {"stop": list("abcde")},
            "maximum length 4, but got an array with length 5",
            "stop",
            "array_above_max_length",
        ),
        ("openai_compatible", {"seed": 1.5}, "expected an integer", "seed", "invalid_type"),
        ("anthropic", {"temperature": 1.5}, "temperature: Input should be less than or equal to 1", None, None),
        ("anthropic", {"seed": 7}, "seed: Extra inputs are not permitted", None, None),
        ("anthropic", {"stop": ["x"]}, "stop: Extra inputs are not permitted", None, None),
        ("anthropic", {"temperature": 0.5, "top_p": 0.5}, "cannot both be specified", None, None),
        ("gemini", {"generationConfig": {"temperature": 2.5}}, "temperature value of 2.5", None, None),
        ("gemini", {"generationConfig": {"topP": 1.5}}, "topP value of 1.5", None, None),
        ("gemini", {"generationConfig": {"stopSequences": list("abcdef")}}, "stopSequences value of 6", None, None),
        ("gemini", {"generationConfig": {"stop": ["x"]}}, 'Unknown name "stop"', None, None),
    ],
)
def test_the_simulator_refuses_what_the_api_refuses(wire, body, message, param, code):
    invalid = sampling_error(wire, body)
    assert invalid is not None and message in invalid.message
    assert (invalid.param, invalid.code) == (param, code)


@pytest.mark.parametrize(
    ("wire", "body"),
    [
        ("openai", {"temperature": 2, "top_p": 1, "stop": list("abcd"), "seed": 0}),
        ("openai", {"temperature": 0, "stop": "END"}),
        ("anthropic", {"temperature": 1, "stop_sequences": ["a", "b", "c", "d", "e"]}),
        ("anthropic", {"top_p": 0.5}),
        ("gemini", {"generationConfig": {"temperature": 2, "topP": 1, "stopSequences": list("abcde"), "seed": 3}}),
        ("gemini", {"generation_config": {"temperature": 0.2, "top_p": 0.5, "stop_sequences": ["x"]}}),
    ],
)
def test_the_simulator_takes_what_the_api_takes(wire, body):
    assert sampling_error(wire, body) is None


def test_the_simulator_refuses_temperature_and_top_p_from_anthropic_version_2026_10_21():
    assert sampling_error("anthropic", {"temperature": 0.5}, "2023-06-01") is None
    for name in ("temperature", "top_p", "top_k"):
        invalid = sampling_error("anthropic", {name: 0.5}, "2026-10-21")
        assert invalid is not None and invalid.message == f"{name}: Extra inputs are not permitted"
    assert sampling_error("anthropic", {"stop_sequences": ["x"]}, "2026-10-21") is None
