"""The official SDKs, pointed at the simulator, parse its answers and raise their own typed errors."""

import base64
import json
from typing import Literal

import anthropic
import openai
import pydantic
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

PROMPT = "What is the capital of France? [[expect: Paris]] [[task: simple_qa]]"


def openai_client(sim):
    return openai.OpenAI(base_url=f"{sim.url}/v1", api_key="sk-sim", max_retries=0)


def anthropic_client(sim):
    return anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-sim", max_retries=0)


_clients = []


def gemini_client(sim, api_version="v1beta"):
    # Kept referenced: the SDK closes its HTTP client when the Client object is collected.
    client = genai.Client(
        api_key="gm-sim", http_options=genai_types.HttpOptions(base_url=sim.url, api_version=api_version)
    )
    _clients.append(client)
    return client


def test_openai_sdk_parses_a_completion(sim):
    completion = openai_client(sim).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], max_completion_tokens=50
    )
    assert completion.choices[0].message.content in ("Paris", completion.choices[0].message.content)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    served = sim.stats()["models"]["gpt-4o"]
    assert (served["input_tokens"], served["output_tokens"]) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )


def test_openai_sdk_on_the_openai_compatible_llama(sim):
    completion = openai_client(sim).chat.completions.create(
        model="llama-4-70b", messages=[{"role": "user", "content": "hello"}], max_tokens=400
    )
    assert completion.choices[0].message.content.startswith("Simulated answer from llama-4-70b")


def test_anthropic_sdk_parses_a_message(sim):
    message = anthropic_client(sim).messages.create(
        model="claude-3-5-sonnet-20241022",
        max_tokens=50,
        system="Be brief.",
        messages=[{"role": "user", "content": PROMPT}],
    )
    assert message.content[0].type == "text" and message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


@pytest.mark.parametrize("api_version", ["v1beta", "v1"])
def test_gemini_sdk_parses_generate_content(sim, api_version):
    response = gemini_client(sim, api_version).models.generate_content(
        model="gemini-2.5-flash",
        contents=PROMPT,
        config=genai_types.GenerateContentConfig(max_output_tokens=50, system_instruction="Be brief."),
    )
    assert response.text
    assert response.candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert response.usage_metadata.prompt_token_count > 0 and response.usage_metadata.candidates_token_count > 0


def test_each_sdks_json_mode_is_taken_and_answered_with_json(sim):
    completion = openai_client(sim).chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": f"{PROMPT} Answer in JSON."}],
        max_completion_tokens=50,
        response_format={"type": "json_object"},
    )
    assert json.loads(completion.choices[0].message.content).keys() == {"answer"}
    message = anthropic_client(sim).messages.create(
        model="claude-3-5-sonnet-20241022",
        max_tokens=50,
        system="Answer with one JSON object only.",
        messages=[{"role": "user", "content": PROMPT}, {"role": "assistant", "content": "{"}],
    )
    assert json.loads("{" + message.content[0].text).keys() == {"answer"}, "the answer continues the prefill"
    response = gemini_client(sim).models.generate_content(
        model="gemini-2.5-flash",
        contents=PROMPT,
        config=genai_types.GenerateContentConfig(max_output_tokens=50, response_mime_type="application/json"),
    )
    assert json.loads(response.text).keys() == {"answer"}


def test_truncation_is_reported_as_each_sdk_expects(sim):
    completion = openai_client(sim).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "tell me a story"}], max_completion_tokens=5
    )
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 5
    message = anthropic_client(sim).messages.create(
        model="claude-3-5-sonnet-20241022", max_tokens=5, messages=[{"role": "user", "content": "tell me a story"}]
    )
    assert message.stop_reason == "max_tokens"
    response = gemini_client(sim).models.generate_content(
        model="gemini-2.5-flash",
        contents="tell me a story",
        config=genai_types.GenerateContentConfig(max_output_tokens=5),
    )
    assert response.candidates[0].finish_reason == genai_types.FinishReason.MAX_TOKENS


def test_rate_limits_raise_each_sdks_rate_limit_error_with_the_retry_hint(sim):
    for model in ("gpt-4o", "claude-3-5-sonnet-20241022", "gemini-2.5-flash"):
        sim.patch(model, errors={"rate_limited": 1.0}, retry_after_s=7)
    with pytest.raises(openai.RateLimitError) as info:
        openai_client(sim).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert info.value.response.headers["retry-after-ms"] == "7000" and info.value.code == "rate_limit_exceeded"
    with pytest.raises(anthropic.RateLimitError) as info:
        anthropic_client(sim).messages.create(
            model="claude-3-5-sonnet-20241022", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.response.headers["retry-after"] == "7"
    with pytest.raises(genai_errors.ClientError) as info:
        gemini_client(sim).models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED"
    assert any(d.get("retryDelay") == "7s" for d in info.value.details["error"]["details"])
    assert sim.stats()["rate_limited_sent"] == 3


def test_overload_and_unavailable_raise_each_sdks_server_errors(sim):
    sim.patch("claude-3-5-sonnet-20241022", errors={"overloaded": 1.0})
    with pytest.raises(anthropic.APIStatusError) as info:
        anthropic_client(sim).messages.create(
            model="claude-3-5-sonnet-20241022", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 529 and info.value.body["error"]["type"] == "overloaded_error"
    sim.patch("gpt-4o", errors={"unavailable": 1.0})
    with pytest.raises(openai.InternalServerError) as info:
        openai_client(sim).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 503
    sim.patch("gemini-2.5-flash", errors={"unavailable": 1.0})
    with pytest.raises(genai_errors.ServerError) as info:
        gemini_client(sim).models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert info.value.code == 503 and info.value.status == "UNAVAILABLE"


def test_context_too_long_raises_each_sdks_bad_request_error(sim):
    long_prompt = "word " * 130_000
    with pytest.raises(openai.BadRequestError) as info:
        openai_client(sim).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": long_prompt}], max_completion_tokens=100
        )
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(anthropic.BadRequestError) as info:
        anthropic_client(sim).messages.create(
            model="claude-3-5-sonnet-20241022", max_tokens=100, messages=[{"role": "user", "content": long_prompt * 2}]
        )
    assert "prompt is too long" in info.value.body["error"]["message"]
    with pytest.raises(genai_errors.ClientError) as info:
        gemini_client(sim).models.generate_content(model="gemini-2.5-flash", contents=long_prompt * 9)
    assert info.value.code == 400 and info.value.status == "INVALID_ARGUMENT"


def test_a_request_without_a_key_is_refused_in_each_wire_format(sim):
    import httpx

    answers = {
        "openai": httpx.post(
            f"{sim.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        ),
        "anthropic": httpx.post(
            f"{sim.url}/v1/messages",
            headers={"anthropic-version": "2023-06-01"},
            json={
                "model": "claude-3-5-sonnet-20241022",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}],
            },
        ),
        "gemini": httpx.post(
            f"{sim.url}/v1beta/models/gemini-2.5-flash:generateContent",
            json={"contents": [{"parts": [{"text": "hi"}]}]},
        ),
    }
    assert answers["openai"].status_code == 401 and answers["openai"].json()["error"]["code"] == "invalid_api_key"
    assert (
        answers["anthropic"].status_code == 401
        and answers["anthropic"].json()["error"]["type"] == "authentication_error"
    )
    assert answers["gemini"].status_code == 403 and answers["gemini"].json()["error"]["status"] == "PERMISSION_DENIED"


LONG_SYSTEM = "You are a careful assistant for the billing team; answer from the policy below. " * 70


def test_each_sdk_parses_the_cached_tokens_of_a_repeated_long_system_prompt(sim):
    """The usage fields of prompt caching come through each SDK's own types."""
    openai_usages = [
        openai_client(sim)
        .chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": question}],
            max_completion_tokens=50,
        )
        .usage
        for question in ("first?", "second?")
    ]
    assert openai_usages[0].prompt_tokens_details.cached_tokens == 0
    cached = openai_usages[1].prompt_tokens_details.cached_tokens
    assert cached >= 1024 and (cached - 1024) % 128 == 0 and cached < openai_usages[1].prompt_tokens

    system = [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}]
    anthropic_usages = [
        anthropic_client(sim)
        .messages.create(
            model="claude-3-5-sonnet-20241022",
            max_tokens=50,
            system=system,
            messages=[{"role": "user", "content": question}],
        )
        .usage
        for question in ("first?", "second?")
    ]
    written = anthropic_usages[0].cache_creation_input_tokens
    assert written >= 1024 and anthropic_usages[0].cache_read_input_tokens == 0
    second = anthropic_usages[1]
    assert (second.cache_read_input_tokens, second.cache_creation_input_tokens) == (written, 0)
    assert 0 < second.input_tokens < written, "input_tokens: only those after the breakpoint"

    gemini_usages = [
        gemini_client(sim)
        .models.generate_content(
            model="gemini-2.5-flash",
            contents=question,
            config=genai_types.GenerateContentConfig(max_output_tokens=50, system_instruction=LONG_SYSTEM),
        )
        .usage_metadata
        for question in ("first?", "second?")
    ]
    assert gemini_usages[0].cached_content_token_count is None
    hit = gemini_usages[1].cached_content_token_count
    assert hit >= 1024 and hit < gemini_usages[1].prompt_token_count
    assert gemini_usages[1].cache_tokens_details[0].token_count == hit

    served = sim.stats()
    assert served["cached_input_tokens"] == cached + written + hit
    assert served["cache_write_input_tokens"] == written


class Weather(pydantic.BaseModel):
    city: str
    unit: Literal["C", "F"]


WEATHER = Weather.model_json_schema() | {"additionalProperties": False}
ASK_WEATHER = 'Weather in Paris? [[expect: {"city": "Paris", "unit": "C"}]] [[tool: get_weather {"city": "Paris"}]]'
# A 1 x 1 PNG: its input tokens follow each provider's rule for its size.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def test_each_sdk_parses_the_simulators_tool_calls_and_the_answer_to_their_results(sim):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER, "strict": True}}]
    messages = [{"role": "user", "content": ASK_WEATHER}]
    completion = openai_client(sim).chat.completions.create(
        model="gpt-4o", messages=messages, tools=tools, max_completion_tokens=100
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}, "the directive's arguments"
    answered = openai_client(sim).chat.completions.create(
        model="gpt-4o",
        messages=[
            *messages,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "18C, sunny"},
        ],
        tools=tools,
        max_completion_tokens=100,
    )
    assert answered.choices[0].finish_reason == "stop" and answered.choices[0].message.content

    message = anthropic_client(sim).messages.create(
        model="claude-3-5-sonnet-20241022",
        max_tokens=100,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[{"name": "get_weather", "description": "The weather now", "input_schema": WEATHER}],
        tool_choice={"type": "any"},
    )
    assert message.stop_reason == "tool_use" and message.content[0].type == "tool_use"
    assert message.content[0].id.startswith("toolu_") and message.content[0].name == "get_weather"
    assert Weather.model_validate(message.content[0].input), "arguments generated from the parameters"

    response = gemini_client(sim).models.generate_content(
        model="gemini-2.5-flash",
        contents=ASK_WEATHER,
        config=genai_types.GenerateContentConfig(
            tools=[
                genai_types.Tool(
                    function_declarations=[
                        genai_types.FunctionDeclaration(name="get_weather", parameters_json_schema=WEATHER)
                    ]
                )
            ],
            max_output_tokens=100,
        ),
    )
    assert response.candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert [(c.name, c.args) for c in response.function_calls] == [("get_weather", {"city": "Paris"})]


def test_each_sdk_parses_the_simulators_structured_answer_into_its_type(sim):
    prompt = 'Weather in Paris? [[expect: {"city": "Paris", "unit": "C"}]]'
    parsed = openai_client(sim).chat.completions.parse(
        model="gpt-4o",
        messages=[{"role": "user", "content": prompt}],
        response_format=Weather,
        max_completion_tokens=100,
    )
    assert parsed.choices[0].message.parsed == Weather(city="Paris", unit="C")
    message = anthropic_client(sim).messages.parse(
        model="claude-3-5-sonnet-20241022",
        max_tokens=100,
        messages=[{"role": "user", "content": prompt}],
        output_format=Weather,
    )
    assert message.parsed_output == Weather(city="Paris", unit="C")
    forced = anthropic_client(sim).messages.create(
        model="claude-3-5-sonnet-20241022",
        max_tokens=100,
        messages=[{"role": "user", "content": prompt}],
        tools=[{"name": "answer", "input_schema": WEATHER}],
        tool_choice={"type": "tool", "name": "answer"},
    )
    assert forced.content[0].type == "tool_use" and forced.content[0].input == {"city": "Paris", "unit": "C"}
    for config in (
        genai_types.GenerateContentConfig(response_mime_type="application/json", response_schema=Weather),
        genai_types.GenerateContentConfig(response_mime_type="application/json", response_json_schema=WEATHER),
    ):
        response = gemini_client(sim).models.generate_content(model="gemini-2.5-flash", contents=prompt, config=config)
        assert Weather.model_validate_json(response.text) == Weather(city="Paris", unit="C")
    assert sim.stats()["models"]["gpt-4o"]["correct"] == 1


def test_each_sdk_bills_an_image_by_its_providers_rule(sim):
    from worker.messages import ImagePart
    from worker.routing.pricing import image_tokens

    image = ImagePart(data=PNG, media_type="image/png")
    text_only = openai_client(sim).chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Describe."}]}],
        max_completion_tokens=20,
    )
    with_image = openai_client(sim).chat.completions.create(
        model="gpt-4o",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe."},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            }
        ],
        max_completion_tokens=20,
    )
    assert with_image.usage.prompt_tokens - text_only.usage.prompt_tokens == image_tokens("openai", image)

    def anthropic_input(content):
        usage = (
            anthropic_client(sim)
            .messages.create(
                model="claude-3-5-sonnet-20241022", max_tokens=20, messages=[{"role": "user", "content": content}]
            )
            .usage
        )
        return usage.input_tokens

    picture = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    assert anthropic_input([picture, {"type": "text", "text": "Describe."}]) - anthropic_input(
        "Describe."
    ) == image_tokens("anthropic", image)

    def gemini_input(parts):
        return (
            gemini_client(sim)
            .models.generate_content(model="gemini-2.5-flash", contents=genai_types.Content(role="user", parts=parts))
            .usage_metadata.prompt_token_count
        )

    text = genai_types.Part(text="Describe.")
    inline = genai_types.Part.from_bytes(data=base64.b64decode(PNG), mime_type="image/png")
    assert gemini_input([text, inline]) - gemini_input([text]) == image_tokens("gemini", image)


def test_what_the_real_apis_refuse_raises_each_sdks_bad_request_error(sim):
    loose = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    with pytest.raises(openai.BadRequestError) as info:
        openai_client(sim).chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": loose, "strict": True}},
        )
    assert info.value.param == "response_format" and "'additionalProperties' is required" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        openai_client(sim).chat.completions.create(
            model="gpt-4o",
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": f"data:image/bmp;base64,{PNG}"}}],
                }
            ],
        )
    assert info.value.code == "invalid_image_format"
    with pytest.raises(anthropic.BadRequestError) as info:
        anthropic_client(sim).messages.create(
            model="claude-3-5-sonnet-20241022",
            max_tokens=10,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": PNG}}
                    ],
                }
            ],
        )
    assert info.value.body["error"]["message"].startswith("messages.0.content.0.image.source.base64.media_type:")
    with pytest.raises(anthropic.BadRequestError) as info:
        anthropic_client(sim).messages.create(
            model="claude-3-5-sonnet-20241022",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            tools=[{"name": "get_weather", "input_schema": WEATHER}],
            tool_choice={"type": "tool", "name": "get_time"},
        )
    assert info.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(genai_errors.ClientError) as info:
        gemini_client(sim).models.generate_content(
            model="gemini-2.5-flash",
            contents="hi",
            config=genai_types.GenerateContentConfig(response_mime_type="application/json", response_schema=WEATHER),
        )
    assert info.value.code == 400 and info.value.status == "INVALID_ARGUMENT"
    # The SDK sends the schema's `additionalProperties` by its proto name, which the Gemini API's Schema lacks.
    assert "Unknown name \"additional_properties\" at 'generation_config.response_schema'" in info.value.message
    with pytest.raises(genai_errors.ClientError) as info:
        gemini_client(sim).models.generate_content(
            model="gemini-2.5-flash",
            contents=[genai_types.Part.from_bytes(data=base64.b64decode(PNG), mime_type="image/bmp")],
        )
    assert info.value.message == "Unsupported MIME type: image/bmp"
    assert sim.stats()["statuses"] == {"400": 6}
