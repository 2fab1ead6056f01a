"""Structured output, tools and images on the Anthropic Messages wire: the adapter's bodies encode them as the
`anthropic` SDK does (a capturing server on loopback), and its answers' tool calls and forced-tool answers are read
from real-shaped Messages (checked against `anthropic.types.Message`)."""

import base64
import json

import pytest
from anthropic.types import Message, ToolUseBlock

from tests.providers.capture import Capture, call_adapter, same_fields
from tests.providers.test_sdks import anthropic_client
from worker.messages import ChatMessage, ImagePart, JsonSchemaFormat, TextPart, Tool, ToolCall, ToolChoiceName
from worker.providers.anthropic import JSON_INSTRUCTION, AnswerTool, conversation
from worker.providers.base import Completion, CompletionRequest

MODEL, API_MODEL = "claude-3-5-sonnet", "claude-3-5-sonnet-20241022"
WEATHER = Tool(
    name="get_weather",
    description="The weather in a city now.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = Tool(name="get_time", description="The time in a city.", parameters={"type": "object", "properties": {}})
WIRE_TOOLS = [{"name": t.name, "description": t.description, "input_schema": t.parameters} for t in (WEATHER, TIME)]
CAPITAL = JsonSchemaFormat(
    name="capital",
    schema={
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    },
    strict=True,
)
PROMPT = "What is the capital of France?"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 24).decode()


def complete(capture: Capture, request: CompletionRequest, capabilities: tuple[str, ...] = ()) -> Completion:
    """One call of the worker's Anthropic adapter, its model declaring `capabilities`, to the capturing server."""
    capable = {"LLM_ROUTER__MODELS__CLAUDE_3_5_SONNET__CAPABILITIES": json.dumps(list(capabilities))}
    return call_adapter(capture.url, request, "anthropic", **capable)


def request(*messages: ChatMessage, **fields) -> CompletionRequest:
    return CompletionRequest(job_id="j", model=MODEL, messages=list(messages), max_output_tokens=100, **fields)


def user(content=PROMPT) -> ChatMessage:
    return ChatMessage(role="user", content=content)


def sdk_body(capture: Capture, **fields) -> dict:
    """The body the `anthropic` SDK sends for `fields`."""
    anthropic_client(capture).messages.create(model=API_MODEL, max_tokens=100, **fields)
    return capture.last()


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        (None, None),
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        (ToolChoiceName(name="get_weather"), {"type": "tool", "name": "get_weather"}),
    ],
)
def test_tools_and_tool_choice_are_encoded_as_the_sdk_encodes_them(capture, choice, wire):
    complete(capture, request(user("Weather in Paris?"), tools=(WEATHER, TIME), tool_choice=choice))
    adapter = capture.last()
    assert adapter["tools"] == WIRE_TOOLS
    assert adapter.get("tool_choice") == wire
    assert adapter["messages"] == [{"role": "user", "content": "Weather in Paris?"}], "no prefill"
    extra = {} if wire is None else {"tool_choice": wire}
    same_fields(adapter, sdk_body(capture, messages=adapter["messages"], tools=WIRE_TOOLS, **extra))


def test_a_tool_conversation_is_tool_use_blocks_and_one_user_turn_of_tool_results(capture):
    calls = [
        ToolCall(id="toolu_01", name="get_weather", arguments={"city": "Paris"}),
        ToolCall(id="toolu_02", name="get_weather", arguments={"city": "Rome"}),
    ]
    messages = (
        ChatMessage(role="system", content="Be brief."),
        user("Weather in Paris and Rome?"),
        ChatMessage(role="assistant", content="Checking both.", tool_calls=calls),
        ChatMessage(role="tool", tool_call_id="toolu_01", content="18C, sunny"),
        ChatMessage(role="tool", tool_call_id="toolu_02", content=[TextPart(text="21C, cloudy")]),
    )
    complete(capture, request(*messages, tools=(WEATHER,)))
    adapter = capture.last()
    wire_messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18C, sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_02",
                    "content": [{"type": "text", "text": "21C, cloudy"}],
                },
            ],
        },
    ]
    assert adapter["messages"] == wire_messages
    assert adapter["system"] == "Be brief."
    same_fields(adapter, sdk_body(capture, system="Be brief.", messages=wire_messages, tools=WIRE_TOOLS[:1]))


def test_a_user_message_after_tool_results_joins_their_turn_after_them():
    messages = [
        user("Weather in Paris?"),
        ChatMessage(role="assistant", tool_calls=[ToolCall(id="t1", name="get_weather", arguments={"city": "Paris"})]),
        ChatMessage(role="tool", tool_call_id="t1", content="18C"),
        user("And in Celsius?"),
    ]
    turns = conversation(messages)
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"], "the roles alternate"
    assert turns[1]["content"] == [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}}]
    assert turns[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "t1", "content": "18C"},
        {"type": "text", "text": "And in Celsius?"},
    ]
    # two user messages in a row without tool results stay two turns, as the job gave them
    assert len(conversation([user("a"), user("b")])) == 2


def test_a_conversation_with_tool_calls_but_no_tools_defines_them_by_name_not_to_be_called(capture):
    # The API refuses `tool_use` blocks in a request without `tools`: a job that continues a tool conversation
    # without offering tools gets the tools it called defined by name, with tool_choice none.
    calls = [ToolCall(id=f"t{n}", name="get_weather", arguments={"city": city}) for n, city in enumerate("AB")]
    messages = (
        user("Weather in A and B?"),
        ChatMessage(role="assistant", tool_calls=calls),
        ChatMessage(role="tool", tool_call_id="t0", content="18C"),
        ChatMessage(role="tool", tool_call_id="t1", content="21C"),
    )
    complete(capture, request(*messages))
    adapter = capture.last()
    assert adapter["tools"] == [{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}]
    assert adapter["tool_choice"] == {"type": "none"}
    same_fields(
        adapter, sdk_body(capture, messages=adapter["messages"], tools=adapter["tools"], tool_choice={"type": "none"})
    )


def test_images_are_base64_and_url_image_blocks_as_the_sdk_encodes_them(capture):
    parts = [
        TextPart(text="What is in these two images?"),
        ImagePart(url="https://example.com/cat.jpg"),
        ImagePart(data=PNG, media_type="image/png"),
    ]
    complete(capture, request(user(parts)))
    adapter = capture.last()
    content = [
        {"type": "text", "text": "What is in these two images?"},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
    ]
    assert adapter["messages"] == [{"role": "user", "content": content}]
    same_fields(adapter, sdk_body(capture, messages=[{"role": "user", "content": content}]))


def test_a_schema_is_asked_natively_of_a_model_with_json_schema(capture):
    complete(capture, request(user(), json_output=True, schema=CAPITAL), capabilities=("json_schema",))
    adapter = capture.last()
    assert adapter["output_config"] == {"format": {"type": "json_schema", "schema": CAPITAL.schema}}
    assert adapter["messages"] == [{"role": "user", "content": PROMPT}], "no prefill: the format constrains the answer"
    assert not {"tools", "tool_choice", "system"} & adapter.keys()
    same_fields(
        adapter,
        sdk_body(
            capture,
            messages=[{"role": "user", "content": PROMPT}],
            output_config={"format": {"type": "json_schema", "schema": CAPITAL.schema}},
        ),
    )


def test_a_schema_is_a_forced_answer_tool_for_a_model_without_json_schema(capture):
    complete(capture, request(user(), json_output=True, schema=CAPITAL))
    adapter = capture.last()
    answer_tool = {"name": "capital", "description": AnswerTool.of(CAPITAL).block()["description"]}
    assert adapter["tools"] == [answer_tool | {"input_schema": CAPITAL.schema}]
    assert adapter["tool_choice"] == {"type": "tool", "name": "capital"}
    assert adapter["messages"] == [{"role": "user", "content": PROMPT}], "a prefill would keep the tool from its call"
    assert "output_config" not in adapter
    same_fields(
        adapter,
        sdk_body(
            capture,
            messages=[{"role": "user", "content": PROMPT}],
            tools=adapter["tools"],
            tool_choice={"type": "tool", "name": "capital"},
        ),
    )


def test_the_answer_tool_beside_the_jobs_tools_makes_some_tool_call_required(capture):
    complete(capture, request(user(), json_output=True, schema=CAPITAL, tools=(WEATHER,), tool_choice="auto"))
    assert [t["name"] for t in capture.last()["tools"]] == ["get_weather", "capital"]
    assert capture.last()["tool_choice"] == {"type": "any"}
    complete(capture, request(user(), json_output=True, schema=CAPITAL, tools=(WEATHER,), tool_choice="none"))
    assert capture.last()["tool_choice"] == {"type": "tool", "name": "capital"}, "the job's tools must not be called"


def test_json_mode_keeps_the_instruction_and_prefills_only_a_model_that_takes_a_prefill(capture):
    complete(capture, request(user(), json_output=True))
    assert capture.last()["messages"][-1] == {"role": "assistant", "content": "{"}
    complete(capture, request(user(), json_output=True), capabilities=("json_schema",))
    newest = capture.last()
    assert newest["system"] == JSON_INSTRUCTION and newest["messages"] == [{"role": "user", "content": PROMPT}]
    complete(capture, request(user(), json_output=True, tools=(WEATHER,)))
    assert capture.last()["messages"] == [{"role": "user", "content": PROMPT}], "no prefill beside tools"


def message(*content: dict, stop_reason: str = "tool_use", real: bool = True) -> dict:
    """A Messages answer, checked against the SDK's `Message` model when `real` (a test of a malformed answer
    makes one that is not)."""
    body = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": API_MODEL,
        "content": list(content),
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 420, "output_tokens": 38},
    }
    if real:
        Message.model_validate(body)
    return body


def test_tool_use_blocks_are_read_as_tool_calls_as_the_sdk_reads_them(capture):
    capture.answers["/v1/messages"] = message(
        {"type": "text", "text": "I'll look both up."},
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": {}},
    )
    completion = complete(capture, request(user("Weather and time in Paris?"), tools=(WEATHER, TIME)))
    assert completion.finish_reason == "tool_calls"
    assert completion.tool_calls == (
        ToolCall(id="toolu_01A", name="get_weather", arguments={"city": "Paris"}),
        ToolCall(id="toolu_01B", name="get_time", arguments={}),
    )
    assert completion.text == "I'll look both up." and completion.tool_call_error == ""
    sdk = anthropic_client(capture).messages.create(
        model=API_MODEL, max_tokens=100, messages=[{"role": "user", "content": "Weather?"}], tools=WIRE_TOOLS
    )
    read = [(b.id, b.name, b.input) for b in sdk.content if isinstance(b, ToolUseBlock)]
    assert read == [(c.id, c.name, c.arguments) for c in completion.tool_calls]


def test_a_tool_call_whose_input_is_not_an_object_is_a_tool_call_error(capture):
    capture.answers["/v1/messages"] = message(
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_01B", "name": "get_weather", "input": "Rome"},
        real=False,
    )
    with pytest.raises(ValueError, match="input"):  # the SDK's own model refuses such a block too
        Message.model_validate(capture.answers["/v1/messages"])
    completion = complete(capture, request(user("Weather in Paris and Rome?"), tools=(WEATHER,)))
    assert [c.id for c in completion.tool_calls] == ["toolu_01A"]
    assert "get_weather" in completion.tool_call_error and "not a JSON object" in completion.tool_call_error


def test_the_forced_tools_input_is_the_answers_json_text_and_no_tool_call(capture):
    answer = {"city": "Paris", "country": "France"}
    capture.answers["/v1/messages"] = message(
        {"type": "tool_use", "id": "toolu_01", "name": "capital", "input": answer}
    )
    completion = complete(capture, request(user(), json_output=True, schema=CAPITAL))
    assert json.loads(completion.text) == answer
    assert (completion.tool_calls, completion.finish_reason, completion.tool_call_error) == ((), "stop", "")


def test_a_schema_not_of_an_object_is_the_one_property_of_the_answer_tools_input(capture):
    cities = JsonSchemaFormat(name="cities", schema={"type": "array", "items": {"type": "string"}})
    complete(capture, request(user("Three capitals?"), json_output=True, schema=cities))
    (tool,) = capture.last()["tools"]
    assert tool["input_schema"] == {"type": "object", "properties": {"answer": cities.schema}, "required": ["answer"]}
    capture.answers["/v1/messages"] = message(
        {"type": "tool_use", "id": "toolu_01", "name": "cities", "input": {"answer": ["Paris", "Rome", "Oslo"]}}
    )
    completion = complete(capture, request(user("Three capitals?"), json_output=True, schema=cities))
    assert json.loads(completion.text) == ["Paris", "Rome", "Oslo"] and completion.finish_reason == "stop"


def test_a_native_structured_answer_is_its_text_and_a_refusal_stays_a_refusal(capture):
    capture.answers["/v1/messages"] = message(
        {"type": "text", "text": '{"city": "Paris", "country": "France"}'}, stop_reason="end_turn"
    )
    completion = complete(capture, request(user(), json_output=True, schema=CAPITAL), capabilities=("json_schema",))
    assert json.loads(completion.text) == {"city": "Paris", "country": "France"}
    assert completion.finish_reason == "stop"
    capture.answers["/v1/messages"] = message({"type": "text", "text": "I can't help."}, stop_reason="refusal")
    completion = complete(capture, request(user(), json_output=True, schema=CAPITAL), capabilities=("json_schema",))
    assert completion.finish_reason == "refusal"
    sdk = anthropic_client(capture).messages.create(
        model=API_MODEL, max_tokens=100, messages=[{"role": "user", "content": PROMPT}]
    )
    assert sdk.stop_reason == "refusal"
