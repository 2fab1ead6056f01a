"""The simulator's answers: wrong answers of a model's own, a judge's verdicts, structured answers and tool calls
(the schema-valid generator, the prompt directives), how each wire's request is read, and what each real API
refuses."""

import random
import re

import msgspec
import pytest

from worker.messages import ChatMessage, Checks, Job
from worker.routing.agreement import answer_key
from worker.routing.judge import judge_messages
from worker.simulator.behaviour import SimRequest, answer
from worker.simulator.requests import anthropic_call, gemini_call, openai_call
from worker.simulator.settings import ModelBehaviour
from worker.simulator.structured import as_json_schema, is_valid, off_schema_value, valid_value
from worker.simulator.validation import call_error

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 3, "maxLength": 12},
        "age": {"type": "integer", "minimum": 18, "maximum": 20},
        "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "email": {"type": "string", "format": "email"},
        "role": {"enum": ["admin", "user"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 3, "uniqueItems": True},
        "address": {"$ref": "#/$defs/address"},
        "nickname": {"type": ["string", "null"]},
        "kind": {"const": "person"},
        "pet": {"anyOf": [{"type": "object", "properties": {"legs": {"type": "integer", "multipleOf": 2}}}]},
    },
    "required": ["name", "age", "address"],
    "additionalProperties": False,
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string", "maxLength": 5}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        }
    },
}
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
MODEL = ModelBehaviour(wire="openai", default_accuracy=1.0)


@pytest.mark.parametrize("seed", range(20))
def test_the_generator_makes_a_value_valid_under_the_schema(seed):
    value = valid_value(PERSON, random.Random(seed))
    assert is_valid(PERSON, value), value
    assert set(value) >= {"name", "age", "address"} and 18 <= value["age"] <= 20 and 0 < value["score"] < 1
    assert len(value["tags"]) == 2 and len(set(value["tags"])) == 2


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "enum": ["a", "b"]},
        {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}], "minItems": 2},
        {"type": "number", "minimum": 5, "multipleOf": 0.5},
        {"type": "integer", "exclusiveMaximum": -3},
        {"type": "null"},
        {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}]},
        {"type": "object", "properties": {"child": {"$ref": "#"}}},  # recursive: stops at a depth
    ],
)
def test_the_generator_covers_the_keywords_answer_schemas_hold(schema):
    assert is_valid(schema, valid_value(schema, random.Random(1)))


def test_an_off_schema_value_is_refused_by_the_schema_and_stays_an_object_for_tool_arguments():
    for seed in range(10):
        off = off_schema_value(PERSON, random.Random(seed))
        assert off is not None and not is_valid(PERSON, off)
        arguments = off_schema_value(WEATHER, random.Random(seed), must_be_object=True)
        assert isinstance(arguments, dict) and not is_valid(WEATHER, arguments)
    assert off_schema_value({}, random.Random(1)) is None, "a schema that takes everything has no off value"


def test_geminis_openapi_subset_reads_as_the_json_schema_it_means():
    gemini = {
        "type": "OBJECT",
        "properties": {"n": {"type": "INTEGER", "nullable": True}, "tags": {"type": "ARRAY", "maxItems": "2"}},
        "required": ["n"],
        "propertyOrdering": ["n", "tags"],
    }
    assert as_json_schema(gemini) == {
        "type": "object",
        "properties": {"n": {"type": ["integer", "null"]}, "tags": {"type": "array", "maxItems": 2}},
        "required": ["n"],
    }
    assert is_valid(gemini, {"n": None}) and not is_valid(gemini, {"n": "x"})
    assert is_valid(gemini, valid_value(gemini, random.Random(3)))


def request(prompt, model="m", **fields):
    return SimRequest(model=model, texts=[prompt], max_tokens=500, **fields)


WRONG = ModelBehaviour(wire="openai", default_accuracy=0.0)


@pytest.mark.parametrize(
    ("expected", "looks_like"),
    [("1372", r"\d+"), ("-2", r"-?\d+"), ("3.14", r"\d+\.\d\d"), ("Nairobi", r"[A-Z][a-z]+"), ("NASA", r"[A-Z]+")],
)
def test_a_wrong_answer_looks_like_an_answer_and_is_each_models_own(expected, looks_like):
    prompt = f"Question? [[expect: {expected}]]"
    texts = [answer(WRONG, request(prompt, model=f"model-{i}"), 7, random.Random(1), 0.0).text for i in range(6)]
    assert all(re.fullmatch(f"I am not sure, but I think the answer is {looks_like}\\.", text) for text in texts), texts
    assert all(answer_key(text) != answer_key(expected) for text in texts)
    assert len(set(texts)) == len(texts), f"without agreement, each model is wrong its own way: {texts}"
    again = answer(WRONG, request(prompt, model="model-0"), 7, random.Random(2), 0.0).text
    assert again == texts[0], "a model gives the same wrong answer every time"
    json_answer = answer(WRONG, request(prompt, model="model-0", json=True), 7, random.Random(1), 0.0).text
    assert json_answer == msgspec.json.encode({"answer": texts[0]}).decode(), "asked for JSON: {'answer': ...}"


@pytest.mark.parametrize("agreement", [0.0, 0.1, 0.5, 1.0])
def test_two_wrong_models_agree_on_a_share_of_prompts_set_by_wrong_answer_agreement(agreement):
    prompts = [f"Capital of country {i}? [[expect: Paris]]" for i in range(2000)]
    agreed = sum(
        answer(WRONG, request(p, model="a"), 7, random.Random(), agreement).text
        == answer(WRONG, request(p, model="b"), 7, random.Random(), agreement).text
        for p in prompts
    )
    assert abs(agreed / len(prompts) - agreement) < 0.03, agreed


def judge_request(model, question, given, rubric=None):
    """The judge's request for `given` as the answer to `question` (worker.routing.judge's prompt)."""
    job = Job(id="j", prompt=question, checks=Checks(judge=True, rubric=rubric) if rubric else None)
    messages = judge_messages(job, [ChatMessage(role="user", content=question)], given)
    return SimRequest(model=model, texts=[m.text() for m in messages], max_tokens=8)


def test_a_judge_passes_an_answer_that_agrees_with_the_expected_one_and_fails_another():
    judge = ModelBehaviour(wire="openai", default_accuracy=1.0)
    question = "Capital of Kenya? [[expect: Nairobi]] [[task: simple_qa]]"
    for given, verdict in (("nairobi.", "PASS"), (" Nairobi", "PASS"), ("Mombasa", "FAIL"), ("42", "FAIL")):
        reply = answer(judge, judge_request("j", question, given), 7, random.Random(1))
        assert (reply.text, reply.finish, reply.correct) == (verdict, "stop", True), given
        assert 1 <= reply.output_tokens <= 2
    graded = answer(judge, judge_request("j", question, "Mombasa", rubric="One word."), 7, random.Random(1))
    assert graded.text == "FAIL", "a rubric does not change the verdict"
    unknown = answer(judge, judge_request("j", "Write me a poem.", "Roses are red"), 7, random.Random(1))
    assert (unknown.text, unknown.correct) == ("PASS", None), "without an expected answer the judge passes"


def test_a_judge_is_right_with_its_accuracy_for_the_task_drawn_apart_from_its_answers():
    judge = ModelBehaviour(wire="openai", accuracy={"simple_qa": 0.7, "code_generation": 0.0}, default_accuracy=1.0)
    right, answered_right, agree_on_both = 0, 0, 0
    for i in range(2000):
        question = f"What is {i} plus 1? [[expect: {i + 1}]] [[task: simple_qa]]"
        verdict = answer(judge, judge_request("j", question, str(i + 1)), 7, random.Random())
        own = answer(judge, request(question, model="j"), 7, random.Random())
        right += verdict.text == "PASS"
        answered_right += bool(own.correct)
        agree_on_both += own.correct == (verdict.text == "PASS")
    assert abs(right / 2000 - 0.7) < 0.03 and abs(answered_right / 2000 - 0.7) < 0.03
    assert abs(agree_on_both / 2000 - (0.7**2 + 0.3**2)) < 0.03, "the verdict's draw is independent of the answer's"
    wrong_judge = answer(
        judge, judge_request("j", "Code? [[expect: 1]] [[task: code_generation]]", "1"), 7, random.Random()
    )
    assert (wrong_judge.text, wrong_judge.correct) == ("FAIL", False)


def test_a_structured_answer_is_the_expected_json_when_right_and_another_valid_value_when_wrong():
    prompt = 'Weather? [[expect: {"city": "Paris", "unit": "C"}]]'
    right = answer(MODEL, request(prompt, schema=WEATHER), 7, random.Random(1))
    assert msgspec.json.decode(right.text) == {"city": "Paris", "unit": "C"} and right.correct is True
    wrong_model = msgspec.structs.replace(MODEL, default_accuracy=0.0)
    wrong = answer(wrong_model, request(prompt, schema=WEATHER), 7, random.Random(1))
    value = msgspec.json.decode(wrong.text)
    assert is_valid(WEATHER, value) and value != {"city": "Paris", "unit": "C"} and wrong.correct is False
    plain = answer(MODEL, request("Capital? [[expect: Paris]]", schema={"type": "object"}), 7, random.Random(1))
    assert msgspec.json.decode(plain.text) == {"answer": "Paris"}, "a plain answer goes in `answer` when it may"


def test_a_structured_answers_json_failure_share_is_prose_or_json_off_the_schema():
    failing = msgspec.structs.replace(MODEL, json_failure=1.0)
    texts = [answer(failing, request("Weather?", schema=WEATHER), 7, random.Random(seed)).text for seed in range(12)]
    decoded = []
    for text in texts:
        try:
            decoded.append(msgspec.json.decode(text))
        except msgspec.DecodeError:
            decoded.append(None)
    assert None in decoded, "some answers are not JSON"
    off = [value for value in decoded if value is not None]
    assert off and all(not is_valid(WEATHER, value) for value in off)


TOOLS = {"get_weather": WEATHER, "get_time": {"type": "object", "properties": {"zone": {"type": "string"}}}}


def test_a_tool_directive_calls_the_tool_with_the_given_or_generated_arguments():
    given = answer(
        MODEL, request('[[tool: get_weather {"city": "Paris", "unit": "F"}]]', tools=TOOLS), 7, random.Random()
    )
    assert given.finish == "tool_calls" and given.text == ""
    assert [(c.name, c.arguments) for c in given.tool_calls] == [("get_weather", {"city": "Paris", "unit": "F"})]
    generated = answer(
        MODEL, request("Weather? [[tool: get_weather]] [[tool: get_time]]", tools=TOOLS), 7, random.Random()
    )
    assert [c.name for c in generated.tool_calls] == ["get_weather", "get_time"], "parallel calls"
    assert is_valid(WEATHER, generated.tool_calls[0].arguments)
    assert generated.output_tokens > 0


def test_the_tool_choice_decides_without_a_directive():
    assert answer(MODEL, request("hi", tools=TOOLS), 7, random.Random()).tool_calls == (), "auto: text"
    required = answer(MODEL, request("hi", tools=TOOLS, tool_choice="required"), 7, random.Random())
    assert [c.name for c in required.tool_calls] == ["get_weather"], "required: the first tool"
    named = answer(
        MODEL,
        request("[[tool: get_weather]]", tools=TOOLS, tool_choice="required", tool_name="get_time"),
        7,
        random.Random(),
    )
    assert [c.name for c in named.tool_calls] == ["get_time"], "a named tool choice wins over a directive"
    none = answer(MODEL, request("[[tool: get_weather]]", tools=TOOLS, tool_choice="none"), 7, random.Random())
    assert none.tool_calls == () and none.finish == "stop"


def test_a_forced_tool_answers_the_expected_structured_value():
    prompt = 'Extract. [[expect: {"city": "Oslo", "unit": "C"}]]'
    forced = answer(
        MODEL,
        request(prompt, tools={"answer": WEATHER}, tool_choice="required", tool_name="answer"),
        7,
        random.Random(),
    )
    assert forced.tool_calls[0].arguments == {"city": "Oslo", "unit": "C"} and forced.correct is True


def test_tool_results_are_answered_in_text_and_failing_calls_have_arguments_off_the_parameters():
    after = answer(MODEL, request("[[tool: get_weather]]", tools=TOOLS, after_tool_result=True), 7, random.Random())
    assert after.tool_calls == () and after.finish == "stop"
    failing = msgspec.structs.replace(MODEL, json_failure=1.0)
    call = answer(failing, request("[[tool: get_weather]]", tools=TOOLS), 7, random.Random(2)).tool_calls[0]
    assert isinstance(call.arguments, dict) and not is_valid(WEATHER, call.arguments)


IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def test_each_wires_request_is_read_into_a_call():
    openai = openai_call(
        {
            "model": "gpt-4o",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE}"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER, "strict": True}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER, "strict": True}},
        },
        wire="openai",
        model="gpt-4o",
        key="k",
        arrived=0.0,
    )
    assert openai.texts == ["Look", 'get_weather{"city":"Paris"}', "sunny"]
    assert openai.images[0].media_type == "image/png" and openai.after_tool_result and openai.stray_result is None
    assert (openai.tool_choice, openai.tool_name, openai.schema, openai.schema_strict) == (
        "required",
        "get_weather",
        WEATHER,
        True,
    )
    assert openai.input_tokens() > openai.images[0].tokens("openai") > 0 and call_error(openai) is None

    anthropic = anthropic_call(
        {
            "model": "claude",
            "max_tokens": 10,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                        {"type": "text", "text": "Look"},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Oslo"}}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "rain"}]}
                    ],
                },
            ],
            "tools": [{"name": "get_weather", "input_schema": WEATHER}],
            "tool_choice": {"type": "any"},
            "output_config": {"format": {"type": "json_schema", "schema": WEATHER}},
        },
        model="claude",
        key="k",
        arrived=0.0,
    )
    assert anthropic.texts == ["Look", 'get_weather{"city":"Oslo"}', "rain"]
    assert anthropic.images[0].url == "https://example.com/a.png" and anthropic.after_tool_result
    assert (anthropic.tool_choice, anthropic.schema_field) == ("required", "output_config.format")
    assert call_error(anthropic) is None

    gemini = gemini_call(
        {
            "contents": [
                {"role": "user", "parts": [{"text": "Look"}, {"inlineData": {"mimeType": "image/png", "data": IMAGE}}]},
                {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}]},
                {
                    "role": "user",
                    "parts": [{"functionResponse": {"name": "get_weather", "response": {"sky": "clear"}}}],
                },
            ],
            "tools": [{"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": WEATHER}]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
            "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": WEATHER},
        },
        model="gemini",
        key="k",
        arrived=0.0,
    )
    assert gemini.texts == ["Look", 'get_weather{"city":"Rome"}', 'get_weather{"sky":"clear"}']
    assert (gemini.tool_choice, gemini.tool_name, gemini.schema_field) == (
        "required",
        "get_weather",
        "responseJsonSchema",
    )
    assert gemini.after_tool_result and call_error(gemini) is None


def openai_error(**body):
    return call_error(
        openai_call(
            {"messages": [{"role": "user", "content": "hi"}]} | body, wire="openai", model="m", key="k", arrived=0.0
        )
    )


def test_openai_refusals_name_the_param_and_code_as_the_api_does():
    nested = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}},
        "required": ["a"],
        "additionalProperties": False,
    }
    invalid = openai_error(
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": nested, "strict": True}}
    )
    assert (
        invalid.message
        == (
            "Invalid schema for response_format 'n': In context=('properties', 'a'), 'additionalProperties' is "
            "required to be supplied and to be false."
        )
        and invalid.param == "response_format"
    )
    loose = WEATHER | {"required": ["city"]}
    invalid = openai_error(
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": loose, "strict": True}}
    )
    assert invalid.message.endswith("an array including every key in properties. Missing 'unit'.")
    assert (
        openai_error(response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": loose}}) is None
    ), "not strict"
    assert (
        openai_error(tools=[{"type": "function", "function": {"parameters": WEATHER}}]).code
        == "missing_required_parameter"
    )
    bad_params = openai_error(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}])
    assert bad_params.code == "invalid_function_parameters" and bad_params.param == "tools[0].function.parameters"
    unknown = openai_error(
        tools=[{"type": "function", "function": {"name": "f"}}],
        tool_choice={"type": "function", "function": {"name": "g"}},
    )
    assert unknown.param == "tool_choice"
    assert openai_error(tool_choice="auto").message.endswith(
        "'tool_choice' is only allowed when 'tools' are specified."
    )
    bmp = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/bmp;base64,{IMAGE}"}}]}]
    assert openai_error(messages=bmp).code == "invalid_image_format"
    stray = [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "x", "content": "?"}]
    assert "must be a response to a preceeding message with 'tool_calls'" in openai_error(messages=stray).message


def anthropic_error(**body):
    base = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    return call_error(anthropic_call(base | body, model="m", key="k", arrived=0.0))


def test_anthropic_refusals_name_the_field_path():
    bmp = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "x"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": IMAGE}},
            ],
        }
    ]
    assert anthropic_error(messages=bmp).message == (
        "messages.0.content.1.image.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' "
        "or 'image/webp'"
    )
    assert anthropic_error(tools=[{"input_schema": WEATHER}]).message == "tools.0.custom.name: Field required"
    assert anthropic_error(
        tools=[{"name": "f", "input_schema": {"type": "object", "properties": 3}}]
    ).message.startswith("tools.0.custom.input_schema: JSON schema is invalid.")
    assert (
        "not one of the tools"
        in anthropic_error(
            tools=[{"name": "f", "input_schema": WEATHER}], tool_choice={"type": "tool", "name": "g"}
        ).message
    )
    stray = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t9", "content": "x"}]}]
    assert anthropic_error(messages=stray).message.startswith("messages.0.content.0: unexpected `tool_use_id`")
    open_schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert (
        "additionalProperties"
        in anthropic_error(output_config={"format": {"type": "json_schema", "schema": open_schema}}).message
    )


def gemini_error(**body):
    return call_error(gemini_call({"contents": [{"parts": [{"text": "hi"}]}]} | body, model="m", key="k", arrived=0.0))


def test_gemini_refuses_json_schema_keywords_in_its_openapi_subset_but_not_in_response_json_schema():
    nested = {
        "type": "OBJECT",
        "properties": {"a": {"type": "ARRAY", "items": {"type": "OBJECT", "additionalProperties": False}}},
    }
    invalid = gemini_error(generationConfig={"responseMimeType": "application/json", "responseSchema": nested})
    assert invalid.message == (
        'Invalid JSON payload received. Unknown name "additionalProperties" at '
        "'generation_config.response_schema.properties[0].value.items': Cannot find field."
    )
    assert gemini_error(generationConfig={"responseSchema": {"$ref": "#/$defs/a"}}).message.startswith(
        'Invalid JSON payload received. Unknown name "$ref"'
    )
    assert (
        "Proto field is not repeating"
        in gemini_error(generationConfig={"responseSchema": {"type": ["string", "null"]}}).message
    )
    assert gemini_error(generationConfig={"responseJsonSchema": PERSON}) is None
    declaration = {"name": "f", "parameters": {"type": "OBJECT", "additionalProperties": False}}
    assert (
        "tools[0].function_declarations[0].parameters"
        in gemini_error(tools=[{"functionDeclarations": [declaration]}]).message
    )
    assert "Invalid function name" in gemini_error(tools=[{"functionDeclarations": [{"name": "1 bad"}]}]).message
    bmp = [{"parts": [{"inlineData": {"mimeType": "image/gif", "data": IMAGE}}]}]
    assert gemini_error(contents=bmp).message == "Unsupported MIME type: image/gif"
