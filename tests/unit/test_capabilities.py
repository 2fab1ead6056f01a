"""What a job needs of a model: tools, vision, a natively enforced JSON Schema; and when its seed is left out."""

import pytest

from worker.messages import ChatMessage, ImagePart, Job, JsonSchemaFormat, TextPart, Tool, ToolCall
from worker.routing.capabilities import needs, seed_dropped

WEATHER = Tool(name="weather", parameters={"type": "object", "properties": {"city": {"type": "string"}}})
IMAGE = ImagePart(url="https://example.com/cat.png")
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}


@pytest.mark.parametrize(
    ("job", "needed"),
    [
        (Job(id="j", prompt="q"), set()),
        (Job(id="j", messages=[ChatMessage(role="user", content="q")]), set()),
        (Job(id="j", prompt="q", response_format="json"), set()),
        (Job(id="j", prompt="q", tools=[WEATHER]), {"tools"}),
        (
            Job(
                id="j",
                messages=[
                    ChatMessage(role="user", content="weather in Oslo?"),
                    ChatMessage(role="assistant", tool_calls=[ToolCall(id="c1", name="weather", arguments={})]),
                    ChatMessage(role="tool", tool_call_id="c1", content="rain"),
                ],
            ),
            {"tools"},
        ),
        (Job(id="j", messages=[ChatMessage(role="tool", tool_call_id="c1", content="rain")]), {"tools"}),
        (Job(id="j", messages=[ChatMessage(role="user", content=[TextPart(text="what?"), IMAGE])]), {"vision"}),
        (
            Job(id="j", prompt="q", response_format=JsonSchemaFormat(name="a", schema=SCHEMA, strict=True)),
            {"json_schema"},
        ),
        (Job(id="j", prompt="q", response_format=JsonSchemaFormat(name="a", schema=SCHEMA)), set()),
        (
            Job(
                id="j",
                messages=[ChatMessage(role="user", content=[IMAGE])],
                tools=[WEATHER],
                response_format=JsonSchemaFormat(name="a", schema=SCHEMA, strict=True),
            ),
            {"tools", "vision", "json_schema"},
        ),
    ],
)
def test_a_job_needs_tools_vision_or_a_strict_schema_from_what_it_holds(job, needed):
    assert needs(job) == needed


def test_the_seed_is_left_out_on_a_model_without_the_seed_capability(config):
    seeded = Job(id="j", prompt="q", seed=7)
    assert seed_dropped(seeded, config.models["claude-3-5-sonnet"])
    assert not seed_dropped(seeded, config.models["gpt-4o"])
    assert not seed_dropped(Job(id="j", prompt="q"), config.models["claude-3-5-sonnet"]), "no seed: nothing dropped"
