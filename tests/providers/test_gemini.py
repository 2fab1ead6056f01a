"""Structured output, tools and images on the Gemini wire: the adapter's `generateContent` body encodes them as
the `google-genai` SDK does (both sent to a capturing server on loopback), and the adapter reads a function-call
answer, shaped as the SDK's GenerateContentResponse, into tool calls."""

import base64

import msgspec
import pytest
from google.genai import types as genai_types

from tests.providers.capture import Capture, call_adapter, same_fields
from tests.providers.test_sdks import gemini_client
from worker.errors import ProviderError
from worker.http.transport import HttpResponse
from worker.messages import ChatMessage, ImagePart, JsonSchemaFormat, TextPart, Tool, ToolCall, ToolChoiceName
from worker.providers.base import Completion, CompletionRequest
from worker.providers.gemini import JSON_INSTRUCTION, contents, gemini_schema, parse_response

MODEL = "gemini-2.5-flash"
SYSTEM, PROMPT = "Be brief.", "What is the weather in Paris?"
WEATHER = Tool(
    name="get_weather",
    description="The current weather in a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string", "minLength": 1}, "unit": {"enum": ["c", "f"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
# WEATHER's parameters as Gemini takes them: `minLength` is not one of its keywords.
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city"],
    "additionalProperties": False,
}
TIME = Tool(name="get_time", parameters={"type": "object", "properties": {"zone": {"type": "string"}}})


def request(*messages: ChatMessage, **fields) -> CompletionRequest:
    """A request for MODEL with a system message before `messages`."""
    conversation = [ChatMessage(role="system", content=SYSTEM), *messages]
    return CompletionRequest(job_id="j", model=MODEL, messages=conversation, max_output_tokens=50, **fields)


def complete(capture: Capture, call: CompletionRequest, capabilities: str = '["json_schema"]') -> Completion:
    """One call of the worker's Gemini adapter to the capturing server, MODEL with `capabilities` (a JSON list)."""
    return call_adapter(capture.url, call, "gemini", LLM_ROUTER__MODELS__GEMINI_2_5_FLASH__CAPABILITIES=capabilities)


def ours(capture: Capture, call: CompletionRequest, capabilities: str = '["json_schema"]') -> dict:
    complete(capture, call, capabilities)
    return capture.last()


# The SDK (google-genai 3.x) writes these fields by their proto names; the API's JSON mapping (proto3 JSON) takes
# a field by its proto name or its lowerCamelCase JSON name alike, and the REST reference spells the latter,
# which the adapter sends. No other key of these tests' bodies is so written (checked by the equality below).
PROTO_NAMES = {"mime_type": "mimeType", "file_uri": "fileUri", "parameters_json_schema": "parametersJsonSchema"}


def json_names(value):
    """`value` with every key PROTO_NAMES holds renamed to its JSON name."""
    if isinstance(value, dict):
        return {PROTO_NAMES.get(key, key): json_names(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_names(item) for item in value]
    return value


def sdk(capture: Capture, contents: list, **config) -> dict:
    """The body the google-genai SDK sends for `contents` and `config` (with SYSTEM and 50 output tokens), its
    fields by their JSON names."""
    gemini_client(capture).models.generate_content(
        model=MODEL,
        contents=contents,
        config=genai_types.GenerateContentConfig(system_instruction=SYSTEM, max_output_tokens=50, **config),
    )
    return json_names(capture.last())


def user(text: str = PROMPT) -> genai_types.Content:
    return genai_types.Content(role="user", parts=[genai_types.Part(text=text)])


def test_a_schema_is_the_response_json_schema_with_the_keywords_gemini_takes(capture):
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "pattern": "^[A-Z]", "maxLength": 80},
            "population": {"type": ["integer", "null"], "minimum": 0, "exclusiveMaximum": 10**10},
            "kind": {"oneOf": [{"const": "capital"}, {"const": "town"}]},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3, "uniqueItems": True},
        },
        "required": ["city", "kind"],
        "additionalProperties": False,
        "$schema": "https://json-schema.org/draft/2020-12/schema",
    }
    adapter = ours(
        capture,
        request(
            ChatMessage(role="user", content=PROMPT),
            json_output=True,
            schema=JsonSchemaFormat(name="city", schema=schema),
        ),
    )
    gemini_schema_expected = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "population": {"type": ["integer", "null"], "minimum": 0},
            "kind": {"anyOf": [{"enum": ["capital"]}, {"enum": ["town"]}]},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        },
        "required": ["city", "kind"],
        "additionalProperties": False,
    }
    body = sdk(
        capture,
        [user()],
        response_mime_type="application/json",
        response_json_schema=gemini_schema_expected,
    )
    assert adapter["generationConfig"] == {
        "maxOutputTokens": 50,
        "responseMimeType": "application/json",
        "responseJsonSchema": gemini_schema_expected,
    }
    same_fields(adapter["generationConfig"], body["generationConfig"])
    same_fields({"contents": adapter["contents"]}, body)
    assert "tools" not in adapter and "toolConfig" not in adapter


def test_a_schema_to_a_model_without_the_json_schema_capability_is_json_mode_and_instructions(capture):
    schema = JsonSchemaFormat(name="answer", schema={"type": "object", "properties": {"city": {"type": "string"}}})
    call = request(ChatMessage(role="user", content=PROMPT), json_output=True, schema=schema)
    adapter = ours(capture, call, capabilities="[]")
    assert adapter["generationConfig"] == {"maxOutputTokens": 50, "responseMimeType": "application/json"}
    instructions = [part["text"] for part in adapter["systemInstruction"]["parts"]]
    assert instructions[0] == SYSTEM
    assert instructions[1] == f"{JSON_INSTRUCTION} It must be valid under this JSON Schema: " + (
        '{"type":"object","properties":{"city":{"type":"string"}}}'
    )


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (ToolChoiceName(name="get_time"), {"mode": "ANY", "allowed_function_names": ["get_time"]}),
    ],
)
def test_tools_and_the_tool_choice_match_the_sdk(capture, choice, config):
    adapter = ours(
        capture, request(ChatMessage(role="user", content=PROMPT), tools=(WEATHER, TIME), tool_choice=choice)
    )
    body = sdk(
        capture,
        [user()],
        tools=[
            genai_types.Tool(
                function_declarations=[
                    genai_types.FunctionDeclaration(
                        name="get_weather",
                        description="The current weather in a city.",
                        parameters_json_schema=WEATHER_PARAMETERS,
                    ),
                    genai_types.FunctionDeclaration(name="get_time", parameters_json_schema=TIME.parameters),
                ]
            )
        ],
        tool_config=genai_types.ToolConfig(function_calling_config=genai_types.FunctionCallingConfig(**config)),
    )
    assert adapter["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"] == WEATHER_PARAMETERS
    assert adapter["toolConfig"]["functionCallingConfig"]["mode"] == config["mode"]
    same_fields({name: adapter[name] for name in ("contents", "tools", "toolConfig")}, body)
    same_fields(adapter["generationConfig"], body["generationConfig"])


def test_tools_without_a_choice_send_no_tool_config(capture):
    adapter = ours(capture, request(ChatMessage(role="user", content=PROMPT), tools=(TIME,)))
    assert adapter["tools"] == [
        {"functionDeclarations": [{"name": "get_time", "parametersJsonSchema": TIME.parameters}]}
    ]
    assert "toolConfig" not in adapter


def test_a_json_answer_beside_tools_is_asked_for_in_the_instructions(capture):
    # Gemini 2.x refuses function calling with responseMimeType application/json.
    schema = JsonSchemaFormat(name="answer", schema={"type": "object", "properties": {"city": {"type": "string"}}})
    adapter = ours(
        capture, request(ChatMessage(role="user", content=PROMPT), json_output=True, schema=schema, tools=(WEATHER,))
    )
    assert adapter["generationConfig"] == {"maxOutputTokens": 50}
    instructions = [part["text"] for part in adapter["systemInstruction"]["parts"]]
    assert instructions[0] == SYSTEM
    assert (
        "JSON object" in instructions[1]
        and '{"type":"object","properties":{"city":{"type":"string"}}}' in instructions[1]
    )


def test_a_tool_conversation_matches_the_sdk(capture):
    conversation = (
        ChatMessage(role="user", content=PROMPT),
        ChatMessage(
            role="assistant",
            content="Let me look.",
            tool_calls=[
                ToolCall(id="call_1", name="get_weather", arguments={"city": "Paris"}),
                ToolCall(id="call_2", name="get_time", arguments={"zone": "Europe/Paris"}),
            ],
        ),
        ChatMessage(role="tool", tool_call_id="call_1", content='{"temp_c": 21, "sky": "clear"}'),
        ChatMessage(role="tool", tool_call_id="call_2", content="14:05"),
        ChatMessage(role="assistant", content="21 °C and clear, at 14:05."),
        ChatMessage(role="user", content="And tomorrow?"),
    )
    adapter = ours(capture, request(*conversation, tools=(WEATHER, TIME)))
    Part = genai_types.Part
    body = sdk(
        capture,
        [
            user(),
            genai_types.Content(
                role="model",
                parts=[
                    Part(text="Let me look."),
                    Part(
                        function_call=genai_types.FunctionCall(id="call_1", name="get_weather", args={"city": "Paris"})
                    ),
                    Part(
                        function_call=genai_types.FunctionCall(
                            id="call_2", name="get_time", args={"zone": "Europe/Paris"}
                        )
                    ),
                ],
            ),
            genai_types.Content(
                role="user",
                parts=[
                    Part(
                        function_response=genai_types.FunctionResponse(
                            id="call_1", name="get_weather", response={"temp_c": 21, "sky": "clear"}
                        )
                    ),
                    Part(
                        function_response=genai_types.FunctionResponse(
                            id="call_2", name="get_time", response={"output": "14:05"}
                        )
                    ),
                ],
            ),
            genai_types.Content(role="model", parts=[Part(text="21 °C and clear, at 14:05.")]),
            user("And tomorrow?"),
        ],
    )
    assert [turn["role"] for turn in adapter["contents"]] == ["user", "model", "user", "model", "user"]
    same_fields({"contents": adapter["contents"]}, body)


def test_an_assistant_turn_of_tool_calls_only_has_no_text_part():
    turns = contents(
        [
            ChatMessage(role="user", content=PROMPT),
            ChatMessage(role="assistant", tool_calls=[ToolCall(id="a", name="get_time")]),
        ]
    )
    assert turns[1] == {"role": "model", "parts": [{"functionCall": {"id": "a", "name": "get_time", "args": {}}}]}


def test_a_tool_result_names_the_function_of_the_latest_call_with_its_id():
    turns = contents(
        [
            ChatMessage(role="user", content=PROMPT),
            ChatMessage(
                role="assistant", tool_calls=[ToolCall(id="call_1", name="get_weather", arguments={"city": "Paris"})]
            ),
            ChatMessage(role="tool", tool_call_id="call_1", content="rain"),
            ChatMessage(role="assistant", tool_calls=[ToolCall(id="call_1", name="get_time")]),
            ChatMessage(role="tool", tool_call_id="call_1", content="[1, 2]"),  # JSON, but not an object
        ]
    )
    responses = [turn["parts"][0]["functionResponse"] for turn in turns[1:] if turn["role"] == "user"]
    assert responses == [
        {"id": "call_1", "name": "get_weather", "response": {"output": "rain"}},
        {"id": "call_1", "name": "get_time", "response": {"output": "[1, 2]"}},
    ]


def test_a_tool_result_without_its_call_is_a_bad_request_not_sent(capture):
    with pytest.raises(ProviderError) as refused:
        complete(
            capture,
            request(ChatMessage(role="user", content=PROMPT), ChatMessage(role="tool", tool_call_id="x", content="1")),
        )
    assert refused.value.kind == "bad_request" and "'x'" in refused.value.message
    assert capture.bodies == []


def test_images_inline_and_by_uri_match_the_sdk(capture):
    # The SDK writes bytes in URL-safe base64, which the API takes as it takes the standard alphabet the job's
    # `data` is in: on these bytes the two agree.
    png = b"\x89PNG\r\n\x1a\n" + b"not really an image" * 3
    data = base64.b64encode(png).decode()
    assert "+" not in data and "/" not in data
    urls = {
        "https://example.com/cat.WEBP": "image/webp",
        "https://example.com/a/dog.png?size=large": "image/png",
        "http://example.com/photo": "image/jpeg",  # no extension: the commonest type
    }
    content = [TextPart(text="What do these show?"), ImagePart(data=data, media_type="image/png")]
    content += [ImagePart(url=url) for url in urls]
    adapter = ours(capture, request(ChatMessage(role="user", content=content)))
    parts = [genai_types.Part(text="What do these show?"), genai_types.Part.from_bytes(data=png, mime_type="image/png")]
    parts += [genai_types.Part.from_uri(file_uri=url, mime_type=media_type) for url, media_type in urls.items()]
    body = sdk(capture, [genai_types.Content(role="user", parts=parts)])
    assert adapter["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": data}}
    assert adapter["contents"][0]["parts"][2] == {
        "fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.WEBP"}
    }
    same_fields({"contents": adapter["contents"]}, body)


def sdk_answer(*parts: genai_types.Part, finish: str = "STOP", **candidate) -> dict:
    """A generateContent answer, built and serialised as the google-genai SDK's GenerateContentResponse."""
    answer = genai_types.GenerateContentResponse(
        candidates=[
            genai_types.Candidate(
                content=genai_types.Content(role="model", parts=list(parts)), finish_reason=finish, **candidate
            )
        ],
        usage_metadata=genai_types.GenerateContentResponseUsageMetadata(
            prompt_token_count=40, candidates_token_count=12, total_token_count=52
        ),
        response_id="resp-1",
        model_version=MODEL,
    )
    return answer.model_dump(mode="json", by_alias=True, exclude_none=True)


def test_the_adapter_reads_a_function_call_answer_into_tool_calls(capture):
    capture.answers["generateContent"] = sdk_answer(
        genai_types.Part(function_call=genai_types.FunctionCall(name="get_weather", args={"city": "Paris"})),
        genai_types.Part(function_call=genai_types.FunctionCall(id="fc-7", name="get_time", args={"zone": "UTC"})),
        genai_types.Part(function_call=genai_types.FunctionCall(name="get_time")),
    )
    completion = complete(capture, request(ChatMessage(role="user", content=PROMPT), tools=(WEATHER, TIME)))
    assert completion.tool_calls == (
        ToolCall(id="call_1", name="get_weather", arguments={"city": "Paris"}),  # no id given: generated
        ToolCall(id="fc-7", name="get_time", arguments={"zone": "UTC"}),
        ToolCall(id="call_3", name="get_time", arguments={}),
    )
    assert (completion.finish_reason, completion.text, completion.tool_call_error) == ("tool_calls", "", "")
    assert (completion.input_tokens, completion.output_tokens, completion.request_id) == (40, 12, "resp-1")


def answer_of(body: dict) -> Completion:
    return parse_response(HttpResponse(status=200, headers={}, body=msgspec.json.encode(body)), 1.0)


def test_text_beside_a_function_call_is_kept():
    completion = answer_of(
        sdk_answer(
            genai_types.Part(text="Checking."),
            genai_types.Part(function_call=genai_types.FunctionCall(name="get_time", args={})),
        )
    )
    assert (completion.text, completion.finish_reason) == ("Checking.", "tool_calls")
    assert [call.name for call in completion.tool_calls] == ["get_time"]


def test_arguments_that_are_not_an_object_are_a_tool_call_error():
    body = sdk_answer(genai_types.Part(function_call=genai_types.FunctionCall(name="get_time", args={})))
    body["candidates"][0]["content"]["parts"][0]["functionCall"]["args"] = ["UTC"]
    completion = answer_of(body)
    assert completion.tool_calls == () and completion.finish_reason == "tool_calls"
    assert completion.tool_call_error == "the arguments of the call of 'get_time' are not a JSON object"


def test_a_malformed_function_call_is_a_tool_call_error():
    body = sdk_answer(finish="MALFORMED_FUNCTION_CALL", finish_message="Malformed function call: get_weather(city=)")
    completion = answer_of(body)
    assert completion.finish_reason == "tool_calls" and completion.tool_calls == ()
    assert completion.tool_call_error == (
        "the model's function call is malformed (MALFORMED_FUNCTION_CALL) Malformed function call: get_weather(city=)"
    )


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("LANGUAGE", "other"),
        ("OTHER", "other"),
    ],
)
def test_finish_reasons(reason, finish):
    completion = answer_of(sdk_answer(genai_types.Part(text="x"), finish=reason))
    assert completion.finish_reason == finish and completion.tool_call_error == ""


def test_a_blocked_prompt_is_filtered():
    body = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 7}}
    assert answer_of(body).finish_reason == "content_filter"


def test_gemini_schema_keeps_only_dollar_keywords_beside_a_ref_and_converts_defs():
    schema = {
        "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node", "description": "x"}}}},
        "type": "object",
        "properties": {"head": {"$ref": "#/$defs/node", "title": "Head"}, "flag": {"enum": [True, False]}},
        "allOf": [{"required": ["head"]}],
        "not": {"type": "null"},
    }
    assert gemini_schema(schema) == {
        "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}},
        "type": "object",
        "properties": {"head": {"$ref": "#/$defs/node"}, "flag": {}},  # enums of strings and numbers only
    }
    assert gemini_schema({"type": "array", "prefixItems": [{"const": 1}, True], "items": False}) == {
        "type": "array",
        "prefixItems": [{"enum": [1]}, True],
        "items": False,
    }
