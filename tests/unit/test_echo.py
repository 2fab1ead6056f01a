"""The in-process echo provider (the demo's and the tests' stand-in for a real provider)."""

import asyncio

import jsonschema
import msgspec
import pytest

from worker.errors import ProviderError
from worker.messages import ChatMessage, JsonSchemaFormat, Tool, ToolChoiceName
from worker.providers import build_providers
from worker.providers.base import CompletionRequest


def test_echo_rejects_prompts_over_the_context_window(config):
    provider = build_providers(config).clients["openai"]
    request = CompletionRequest(
        job_id="j", model="gpt-4o", messages=[ChatMessage(role="user", content="x" * 600_000)], max_output_tokens=100
    )
    with pytest.raises(ProviderError) as info:
        asyncio.run(provider.complete(request))
    assert info.value.kind == "context_too_long"


def complete(config, **fields):
    provider = build_providers(config).clients["openai"]
    request = CompletionRequest(
        job_id="j", model="gpt-4o", messages=[ChatMessage(role="user", content="hi")], max_output_tokens=100, **fields
    )
    return asyncio.run(provider.complete(request))


PLACE = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 5},
        "days": {"type": "integer", "minimum": 2},
        "unit": {"enum": ["C", "F"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "exact": {"type": ["number", "null"]},
        "ok": {"type": "boolean"},
    },
    "required": ["city", "days", "unit", "tags", "exact", "ok"],
    "additionalProperties": False,
}


def test_echo_answers_a_schema_job_with_json_valid_under_a_simple_schema(config):
    answer = complete(config, json_output=True, schema=JsonSchemaFormat(name="p", schema=PLACE, strict=True))
    value = msgspec.json.decode(answer.text)
    jsonschema.validate(value, PLACE)
    assert value["city"] == "[gpt-", "its strings are its echo, within their bounds"
    plain_json = complete(config, json_output=True)
    assert msgspec.json.decode(plain_json.text) == {"answer": "[gpt-4o] hi"}


def test_echo_calls_the_named_or_first_tool_when_a_call_is_required(config):
    tools = (Tool(name="clock"), Tool(name="place", parameters=PLACE))
    first = complete(config, tools=tools, tool_choice="required")
    assert (first.text, first.finish_reason, [c.name for c in first.tool_calls]) == ("", "tool_calls", ["clock"])
    named = complete(config, tools=tools, tool_choice=ToolChoiceName(name="place"))
    assert [c.name for c in named.tool_calls] == ["place"]
    jsonschema.validate(named.tool_calls[0].arguments, PLACE)
    for choice in ("auto", "none", None):
        answer = complete(config, tools=tools, tool_choice=choice)
        assert (answer.text, answer.tool_calls) == ("[gpt-4o] hi", ()), "no call required: a text answer"
