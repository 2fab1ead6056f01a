"""Structured output, tools and images on the OpenAI wire: the adapter's body encodes them as the `openai` SDK does
(a capturing server on loopback), it reads tool calls from a real-shaped answer, and each OpenAI-compatible server
gets what it takes (the compat table)."""

import json
import typing

import msgspec
import openai
import pytest

from tests.providers.capture import call_adapter, same_fields
from tests.providers.test_sdks import openai_client
from worker.config import ProviderConfig, load_config
from worker.errors import ProviderError
from worker.messages import ChatMessage, ImagePart, JsonSchemaFormat, TextPart, Tool, ToolCall, ToolChoiceName
from worker.providers import dropped_params
from worker.providers.base import Completion, CompletionRequest
from worker.providers.openai import (
    COMPAT,
    JSON_INSTRUCTION,
    OpenAIProvider,
    read_tool_calls,
    tool_fields,
)

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
PHOTO = "https://example.com/street.jpg"
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}},
    "required": ["city", "temp_c"],
    "additionalProperties": False,
}
WEATHER = Tool(
    name="get_weather",
    description="The weather in a city now.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
MESSAGES = [
    ChatMessage(role="system", content="You report the weather."),
    ChatMessage(
        role="user",
        content=[
            TextPart(text="Where were these taken, and what is the weather there?"),
            ImagePart(url=PHOTO),
            ImagePart(data=PNG, media_type="image/png"),
        ],
    ),
    ChatMessage(role="assistant", tool_calls=[ToolCall(id="call_1", name="get_weather", arguments={"city": "Paris"})]),
    ChatMessage(role="tool", tool_call_id="call_1", content='{"temp_c": 18}'),
]
# The same conversation as the SDK takes it.
SDK_MESSAGES = [
    {"role": "system", "content": "You report the weather."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Where were these taken, and what is the weather there?"},
            {"type": "image_url", "image_url": {"url": PHOTO}},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        ],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"}, separators=(",", ":"))},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18}'},
]
SDK_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city now.",
            "parameters": WEATHER.parameters,
        },
    }
]
SDK_FORMAT = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True}}


def request(model: str = "gpt-4o", **fields) -> CompletionRequest:
    """A call with a strict schema, a tool the model must call, a finished tool call and two images."""
    defaults = {
        "job_id": "j",
        "model": model,
        "messages": MESSAGES,
        "max_output_tokens": 50,
        "json_output": True,
        "schema": JsonSchemaFormat(name="weather", schema=SCHEMA, strict=True),
        "tools": (WEATHER,),
        "tool_choice": ToolChoiceName(name="get_weather"),
    }
    return CompletionRequest(**(defaults | fields))


def complete(url: str, call: CompletionRequest, provider: str = "openai", **env: str) -> Completion:
    """One call of the worker's adapter for `provider`, to the capturing server at `url`."""
    return call_adapter(url, call, provider, **env)


def adapter(compat: str = "", capabilities: tuple[str, ...] = ()) -> OpenAIProvider:
    """The adapter of the llama provider as a server of `compat`, its model with `capabilities` (no transport:
    for its request bodies)."""
    config = load_config(env={"LLM_ROUTER__PROVIDERS__LLAMA__COMPAT": compat})
    model = msgspec.structs.replace(config.models["llama-4-70b"], capabilities=list(capabilities))
    return OpenAIProvider("llama", config.providers["llama"], {"llama-4-70b": model}, "k", transport=None)


def test_openai_body_with_schema_tools_a_tool_conversation_and_images_matches_the_openai_sdk(capture):
    ours = complete(
        capture.url, request(), LLM_ROUTER__MODELS__GPT_4O__CAPABILITIES='["tools", "vision", "json_schema"]'
    )
    assert ours.finish_reason == "stop"
    body = capture.last()
    openai_client(capture).chat.completions.create(
        model="gpt-4o",
        messages=SDK_MESSAGES,
        max_completion_tokens=50,
        response_format=SDK_FORMAT,
        tools=SDK_TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    sdk = capture.last()
    assert body.keys() == {"model", "messages", "max_completion_tokens", "response_format", "tools", "tool_choice"}
    assert body["response_format"] == SDK_FORMAT
    assert body["messages"][0] == {"role": "system", "content": "You report the weather."}, "no JSON instruction"
    same_fields(body, sdk)


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_openai_compatible_body_matches_the_openai_sdk_for_each_tool_choice(capture, choice):
    # llama is a vLLM server (router.toml): it takes tool_choice, image URLs and json_schema as OpenAI does.
    call = request("llama-4-70b", tool_choice=choice)
    complete(capture.url, call, "llama", LLM_ROUTER__MODELS__LLAMA_4_70B__CAPABILITIES='["json_schema"]')
    body = capture.last()
    openai_client(capture).chat.completions.create(
        model="llama-4-70b",
        messages=SDK_MESSAGES,
        max_tokens=50,
        response_format=SDK_FORMAT,
        tools=SDK_TOOLS,
        tool_choice=choice,
    )
    assert body["tool_choice"] == choice and body["max_tokens"] == 50
    same_fields(body, capture.last())


def test_a_schema_the_model_cannot_take_natively_is_json_mode_with_the_schema_in_the_instructions(capture):
    call = request(tools=(), tool_choice=None)
    complete(capture.url, call, LLM_ROUTER__MODELS__GPT_4O__CAPABILITIES="[]")  # no json_schema capability
    body = capture.last()
    assert body["response_format"] == {"type": "json_object"}
    system = body["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("You report the weather.\n\n")
    assert json.dumps(SCHEMA, separators=(",", ":")) in system["content"], "the schema, in the instructions"
    assert len(body["messages"]) == len(MESSAGES), "no message added: the system message carries it"
    openai_client(capture).chat.completions.create(
        model="gpt-4o",
        messages=[system, *SDK_MESSAGES[1:]],
        max_completion_tokens=50,
        response_format={"type": "json_object"},
    )
    same_fields(body, capture.last())


def test_json_mode_without_a_schema_is_unchanged():
    body = adapter().request_body(request(schema=None, tools=(), tool_choice=None, messages=MESSAGES[1:2]))
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][0] == {"role": "system", "content": JSON_INSTRUCTION}
    plain = adapter(capabilities=("json_schema",)).request_body(
        request(json_output=False, schema=None, tools=(), tool_choice=None)
    )
    assert "response_format" not in plain and "tools" not in plain


TOOL_ANSWER = {
    "id": "chatcmpl-2",
    "object": "chat.completion",
    "created": 1735000000,
    "model": "gpt-4o-2024-08-06",
    "system_fingerprint": "fp_1",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "annotations": [],
                "tool_calls": [
                    {
                        "id": "call_abc",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_def",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'},
                    },
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {"prompt_tokens": 80, "completion_tokens": 30, "total_tokens": 110},
}


def answer_with(arguments: str, finish_reason: str = "tool_calls") -> dict:
    """TOOL_ANSWER with one call whose arguments are `arguments`."""
    answer = json.loads(json.dumps(TOOL_ANSWER))
    choice = answer["choices"][0]
    choice["message"]["tool_calls"] = choice["message"]["tool_calls"][:1]
    choice["message"]["tool_calls"][0]["function"]["arguments"] = arguments
    choice["finish_reason"] = finish_reason
    return answer


def test_a_tool_call_answer_is_read_as_the_sdk_reads_it(capture):
    capture.answers["/v1/chat/completions"] = TOOL_ANSWER
    ours = complete(capture.url, request(tool_choice="auto"))
    sdk = openai_client(capture).chat.completions.create(
        model="gpt-4o", messages=SDK_MESSAGES, max_completion_tokens=50, tools=SDK_TOOLS
    )
    assert isinstance(sdk, openai.types.chat.ChatCompletion)
    sdk_calls = sdk.choices[0].message.tool_calls
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in sdk_calls] == [
        (c.id, c.name, c.arguments) for c in ours.tool_calls
    ]
    assert ours.tool_calls == (
        ToolCall(id="call_abc", name="get_weather", arguments={"city": "Paris"}),
        ToolCall(id="call_def", name="get_weather", arguments={"city": "Lyon"}),
    )
    assert (ours.finish_reason, ours.tool_call_error, ours.text) == ("tool_calls", "", "")
    assert (ours.input_tokens, ours.output_tokens) == (80, 30)


@pytest.mark.parametrize(
    "arguments, error",
    [
        ('{"city": "Par', "not a JSON object"),  # cut off
        ('["Paris"]', "not a JSON object"),
        ('"Paris"', "not a JSON object"),
    ],
)
def test_tool_call_arguments_that_are_not_a_json_object_give_a_tool_call_error(capture, arguments, error):
    capture.answers["/v1/chat/completions"] = answer_with(arguments)
    ours = complete(capture.url, request())
    assert ours.tool_calls == () and ours.finish_reason == "tool_calls"
    assert error in ours.tool_call_error and "get_weather" in ours.tool_call_error
    sdk = openai_client(capture).chat.completions.create(model="gpt-4o", messages=SDK_MESSAGES, tools=SDK_TOOLS)
    assert sdk.choices[0].message.tool_calls[0].function.arguments == arguments, "the SDK hands the string on as is"


def test_a_forced_call_that_finishes_with_stop_is_a_tool_call_finish(capture):
    # OpenAI and vLLM end a call forced by a named tool_choice with "stop".
    capture.answers["/v1/chat/completions"] = answer_with('{"city": "Paris"}', finish_reason="stop")
    ours = complete(capture.url, request())
    assert ours.finish_reason == "tool_calls" and ours.tool_calls[0].arguments == {"city": "Paris"}


def test_read_tool_calls_of_servers_that_bend_the_shape():
    # "" for a call without arguments (some compat servers); a call without a name cannot be answered.
    assert read_tool_calls([{"id": "c", "function": {"name": "now", "arguments": ""}}]) == (
        (ToolCall(id="c", name="now", arguments={}),),
        "",
    )
    calls, error = read_tool_calls([{"id": "c", "function": {"arguments": "{}"}}])
    assert calls == () and error == "tool call 0 names no function"
    calls, _ = read_tool_calls([{"function": {"name": "now", "arguments": "{}"}}])
    assert calls[0].id == "call_0", "an id, so that a later job can answer the call"


@pytest.mark.parametrize(
    "finish_reason, refusal, expected",
    [("content_filter", None, "content_filter"), ("stop", "I can't help with that.", "refusal"), ("x", None, "other")],
)
def test_content_filter_and_refusal_finish_reasons(capture, finish_reason, refusal, expected):
    answer = json.loads(json.dumps(capture.answers["/v1/chat/completions"]))
    answer["choices"][0]["finish_reason"] = finish_reason
    answer["choices"][0]["message"]["refusal"] = refusal
    capture.answers["/v1/chat/completions"] = answer
    call = request(json_output=False, schema=None, tools=(), tool_choice=None)
    assert complete(capture.url, call).finish_reason == expected


def test_the_compat_table_names_every_compat_server():
    assert COMPAT.keys() == set(typing.get_args(typing.get_type_hints(ProviderConfig)["compat"]))
    assert {name for name, quirks in COMPAT.items() if quirks.max_tokens_field == "max_tokens"} == {
        "vllm",
        "ollama",
        "together",
    }
    assert {name for name, quirks in COMPAT.items() if not quirks.tool_choice or not quirks.image_urls} == {"ollama"}


@pytest.mark.parametrize("compat", ["", "vllm", "together", "groq"])
@pytest.mark.parametrize("choice", ["auto", "none", "required", ToolChoiceName(name="get_weather")])
def test_servers_that_take_tool_choice_get_it(compat, choice):
    fields, dropped = tool_fields(request(tool_choice=choice), COMPAT[compat])
    assert fields["tools"] == SDK_TOOLS and dropped == []
    sent = {"type": "function", "function": {"name": "get_weather"}} if isinstance(choice, ToolChoiceName) else choice
    assert fields["tool_choice"] == sent


@pytest.mark.parametrize(
    "choice, fields, dropped",
    [
        (None, {"tools": SDK_TOOLS}, []),
        ("auto", {"tools": SDK_TOOLS}, []),  # what Ollama does anyway
        ("none", {}, []),  # no tools offered: what "none" asks
        ("required", {"tools": SDK_TOOLS}, ["tool_choice"]),
        (ToolChoiceName(name="get_weather"), {"tools": SDK_TOOLS}, ["tool_choice"]),
    ],
)
def test_ollama_gets_no_tool_choice_and_what_it_cannot_ask_is_named(choice, fields, dropped):
    call = request(tool_choice=choice)
    assert tool_fields(call, COMPAT["ollama"]) == (fields, dropped)
    llama = load_config(env={}).providers["llama"]
    assert dropped_params(msgspec.structs.replace(llama, compat="ollama"), call) == dropped
    assert dropped_params(msgspec.structs.replace(llama, compat="vllm"), call) == []
    body = adapter("ollama", ("json_schema",)).request_body(msgspec.structs.replace(call, messages=MESSAGES[:1]))
    assert "tool_choice" not in body and ("tools" in body) == bool(fields)


def test_no_tool_fields_without_tools():
    assert tool_fields(request(tools=(), tool_choice="auto"), COMPAT[""]) == ({}, [])


def test_ollama_takes_images_as_data_only_and_refuses_a_url_before_sending():
    provider = adapter("ollama")
    data_only = [
        ChatMessage(role="user", content=[TextPart(text="What is it?"), ImagePart(data=PNG, media_type="image/png")])
    ]
    body = provider.request_body(request(messages=data_only, tools=(), tool_choice=None))
    assert body["messages"][-1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{PNG}"},
    }
    with pytest.raises(ProviderError) as refused:
        provider.request_body(request())
    assert refused.value.kind == "bad_request" and "ollama takes images as base64 data only" in refused.value.message
    assert PHOTO in refused.value.message


@pytest.mark.parametrize("compat", ["vllm", "ollama", "together", "groq"])
def test_each_compat_server_gets_the_schema_natively_where_the_model_takes_it(compat):
    call = request("llama-4-70b", tools=(), tool_choice=None, messages=MESSAGES[:1])
    assert adapter(compat, ("json_schema",)).request_body(call)["response_format"] == SDK_FORMAT
    fallback = adapter(compat).request_body(call)
    assert fallback["response_format"] == {"type": "json_object"}
    assert '"required":["city","temp_c"]' in fallback["messages"][0]["content"]


def test_a_text_only_content_list_is_sent_as_a_string_and_a_tool_result_as_its_text():
    parts = ChatMessage(role="user", content=[TextPart(text="Hello, "), TextPart(text="there.")])
    tool = ChatMessage(role="tool", tool_call_id="call_1", content=[TextPart(text="18 degrees")])
    body = adapter().request_body(request(messages=[parts, tool], json_output=False, schema=None))
    assert body["messages"] == [
        {"role": "user", "content": "Hello, there."},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees"},
    ]


def test_an_assistant_message_that_said_something_beside_its_call_keeps_its_text():
    said = ChatMessage(
        role="assistant", content="Let me look.", tool_calls=[ToolCall(id="c", name="get_weather", arguments={})]
    )
    message = adapter().request_body(request(messages=[said]))["messages"][-1]
    assert message == {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
    }
