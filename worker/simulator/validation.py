"""What each real API refuses of structured output, tools and images, with the message (and OpenAI's `param` and
`code`) of its 400: checked on the `Call` its parser read (`requests.py`); the generation settings are
`sampling.py`'s.

The messages are the providers' own where they are published or reported (OpenAI's strict-schema and image
errors, Anthropic's field paths and media types, Gemini's protobuf JSON errors); the others follow the same
API's wording for its other fields.
"""

from __future__ import annotations

import binascii
import re
from typing import Any

from worker.simulator import wire
from worker.simulator.requests import Call, SimImage, SimTool
from worker.simulator.sampling import Invalid, sampling_error

OPENAI_MEDIA_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
ANTHROPIC_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
GEMINI_MEDIA_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"})
# The fields of Gemini's `Schema` (an OpenAPI 3.0 subset), by their JSON and their proto names; anything else
# in a `responseSchema` or a function's `parameters` is an unknown field (`responseJsonSchema` and
# `parametersJsonSchema` take JSON Schema).
GEMINI_SCHEMA_FIELDS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "nullable",
        "enum",
        "maxItems",
        "minItems",
        "properties",
        "required",
        "minProperties",
        "maxProperties",
        "minLength",
        "maxLength",
        "pattern",
        "example",
        "anyOf",
        "propertyOrdering",
        "default",
        "items",
        "minimum",
        "maximum",
    }
)
_GEMINI_TYPES = frozenset({"TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL"})
_OPENAI_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_GEMINI_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.\-:]{0,63}$")
_ANTHROPIC_MEDIA_WORDS = "'image/jpeg', 'image/png', 'image/gif' or 'image/webp'"
_JSON_SCHEMA_INVALID = (
    "JSON schema is invalid. It must match JSON Schema draft 2020-12 (https://json-schema.org/draft/2020-12). "
    "Learn more about tool use at https://docs.claude.com/en/docs/agents-and-tools/tool-use/overview."
)


def call_error(call: Call) -> Invalid | None:
    """Why the API of `call.wire` refuses the call's schema, tools, tool choice, images or tool history, or
    None when it takes them."""
    if call.wire == "anthropic":
        return _anthropic(call)
    if call.wire == "gemini":
        return _gemini(call)
    return _openai(call)


def schema_problem(schema: Any) -> str | None:
    """Why `schema` is not a JSON Schema (draft 2020-12), or None."""
    import jsonschema  # on first use: most requests carry no schema

    if not isinstance(schema, dict | bool):
        return f"{schema!r} is not of type 'object', 'boolean'"
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return str(exc.message)
    return None


def _bad_base64(data: str | None) -> bool:
    try:
        binascii.a2b_base64(data or "", strict_mode=True)
    except binascii.Error:
        return True
    return not data


# OpenAI


def _openai(call: Call) -> Invalid | None:
    body = call.body if isinstance(call.body, dict) else {}
    if body.get("tool_choice") is not None and not call.tools:
        return Invalid(
            message="Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
            param="tool_choice",
        )
    for i, tool in enumerate(call.tools):
        invalid = _openai_tool(i, tool)
        if invalid is not None:
            return invalid
    if call.tool_name and call.tool_name not in {t.name for t in call.tools}:
        return Invalid(
            message=f"Invalid value for 'tool_choice': no function named '{call.tool_name}' was specified in "
            "the 'tools' parameter.",
            param="tool_choice",
            code="invalid_value",
        )
    if call.schema_field == "response_format":
        invalid = _openai_schema(call)
        if invalid is not None:
            return invalid
    for image in call.images:
        invalid = _openai_image(image)
        if invalid is not None:
            return invalid
    if call.stray_result is not None:
        return Invalid(
            message="Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
            "'tool_calls'.",
            param=call.stray_result[0],
        )
    return None


def _openai_tool(i: int, tool: SimTool) -> Invalid | None:
    if not tool.name:
        return Invalid(
            message=f"Missing required parameter: 'tools[{i}].function.name'.",
            param=f"tools[{i}].function.name",
            code="missing_required_parameter",
        )
    if not isinstance(tool.name, str) or not _OPENAI_NAME.match(tool.name):
        return Invalid(
            message=f"Invalid 'tools[{i}].function.name': string does not match pattern. Expected a string that "
            "matches the pattern '^[a-zA-Z0-9_-]+$'.",
            param=f"tools[{i}].function.name",
            code="invalid_value",
        )
    parameters = tool.parameters
    kind = parameters.get("type") if isinstance(parameters, dict) else None
    problem = (
        f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{kind}\"'."
        if kind != "object"
        else schema_problem(parameters)
    )
    if problem is None and tool.strict:
        problem = _strict_problem(parameters, ())
    if problem is not None:
        return Invalid(
            message=f"Invalid schema for function '{tool.name}': {problem}",
            param=f"tools[{i}].function.parameters",
            code="invalid_function_parameters",
        )
    return None


def _openai_schema(call: Call) -> Invalid | None:
    if not call.schema_name:
        return Invalid(
            message="Missing required parameter: 'response_format.json_schema.name'.",
            param="response_format.json_schema.name",
            code="missing_required_parameter",
        )
    problem = schema_problem(call.schema)
    if problem is None and call.schema_strict:
        problem = _strict_problem(call.schema, ())
    if problem is not None:
        return Invalid(
            message=f"Invalid schema for response_format '{call.schema_name}': {problem}", param="response_format"
        )
    return None


def _strict_problem(schema: Any, context: tuple[str, ...]) -> str | None:
    """What OpenAI's strict mode refuses in `schema`: an object without `additionalProperties: false`, or whose
    `required` does not list every property (nested objects, items, anyOf branches and $defs too)."""
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return f"In context={context!r}, 'additionalProperties' is required to be supplied and to be false."
        properties = schema["properties"] if isinstance(schema.get("properties"), dict) else {}
        required = schema["required"] if isinstance(schema.get("required"), list) else []
        missing = [name for name in properties if name not in required]
        if missing:
            return (
                f"In context={context!r}, 'required' is required to be supplied and to be an array including every "
                f"key in properties. Missing '{missing[0]}'."
            )
        for name, child in properties.items():
            problem = _strict_problem(child, (*context, "properties", name))
            if problem:
                return problem
    nested: list[tuple[tuple[str, ...], Any]] = [((*context, "items"), schema.get("items"))]
    for word in ("anyOf", "prefixItems"):
        options = schema.get(word)
        nested += [((*context, word, str(n)), s) for n, s in enumerate(options if isinstance(options, list) else [])]
    for word in ("$defs", "definitions"):
        defs = schema.get(word)
        nested += [((word, name), s) for name, s in (defs.items() if isinstance(defs, dict) else [])]
    for where, child in nested:
        problem = _strict_problem(child, where)
        if problem:
            return problem
    return None


def _openai_image(image: SimImage) -> Invalid | None:
    if image.url is not None:
        if image.url.startswith(("http://", "https://")):
            return None
        return Invalid(
            message=f"Invalid image URL: '{image.at}'. Expected a base64-encoded data URL with an image MIME type "
            "(e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), or an http(s) URL.",
            param=image.at,
            code="invalid_value",
        )
    if not image.media_type.startswith("image/"):
        return Invalid(
            message=f"Invalid image URL: '{image.at}'. Expected a base64-encoded data URL with an image MIME type "
            f"(e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got unsupported MIME type "
            f"'{image.media_type}'.",
            param=image.at,
            code="invalid_image_url",
        )
    if image.media_type not in OPENAI_MEDIA_TYPES or _bad_base64(image.data):
        return Invalid(
            message="You uploaded an unsupported image. Please make sure your image has of one the following "
            "formats: ['png', 'jpeg', 'gif', 'webp'].",
            code="invalid_image_format",
        )
    return None


# Anthropic


def _anthropic(call: Call) -> Invalid | None:
    body = call.body if isinstance(call.body, dict) else {}
    if body.get("tool_choice") is not None and not call.tools:
        return Invalid(message="tool_choice may only be specified while providing tools.")
    for tool in call.tools:
        invalid = _anthropic_tool(tool)
        if invalid is not None:
            return invalid
    if call.tool_name and call.tool_name not in {t.name for t in call.tools}:
        return Invalid(message=f"tool_choice.name: tool '{call.tool_name}' is not one of the tools provided.")
    if call.schema_field:
        problem = schema_problem(call.schema) if isinstance(call.schema, dict) else "Field required"
        if problem is None and _open_object(call.schema):
            problem = "For 'object' type, 'additionalProperties' must be explicitly set to false"
        if problem is not None:
            return Invalid(message=f"{call.schema_field}.schema: {problem}")
    for image in call.images:
        if image.url is None and image.media_type not in ANTHROPIC_MEDIA_TYPES:
            return Invalid(message=f"{image.at}.media_type: Input should be {_ANTHROPIC_MEDIA_WORDS}")
        if image.url is None and _bad_base64(image.data):
            return Invalid(message=f"{image.at}.data: The image data is not valid base64.")
        if image.url is not None and not image.url.startswith(("http://", "https://")):
            return Invalid(message=f"{image.at}: URL must use http or https.")
    if call.stray_result is not None:
        at, use_id = call.stray_result
        return Invalid(
            message=f"{at}: unexpected `tool_use_id` found in `tool_result` blocks: {use_id}. Each `tool_result` "
            "block must have a corresponding `tool_use` block in the previous message."
        )
    return None


def _anthropic_tool(tool: SimTool) -> Invalid | None:
    if not tool.name:
        return Invalid(message=f"{tool.at}.name: Field required")
    if not isinstance(tool.name, str) or not _OPENAI_NAME.match(tool.name):
        return Invalid(message=f"{tool.at}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
    if tool.parameters is None:
        return Invalid(message=f"{tool.at}.input_schema: Field required")
    if not isinstance(tool.parameters, dict) or tool.parameters.get("type") != "object":
        return Invalid(message=f"{tool.at}.input_schema.type: Input should be 'object'")
    if schema_problem(tool.parameters) is not None:
        return Invalid(message=f"{tool.at}.input_schema: {_JSON_SCHEMA_INVALID}")
    return None


def _open_object(schema: Any) -> bool:
    """Whether an object of `schema` (nested ones too) leaves out `additionalProperties: false`, which
    Anthropic's structured outputs require."""
    if isinstance(schema, list):
        return any(_open_object(s) for s in schema)
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    if (kind == "object" or "properties" in schema) and schema.get("additionalProperties") is not False:
        return True
    children = [schema.get("items"), schema.get("anyOf"), schema.get("prefixItems")]
    for word in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(word), dict):
            children += list(schema[word].values())
    return any(_open_object(child) for child in children)


# Gemini


def _gemini(call: Call) -> Invalid | None:
    for tool in call.tools:
        if not isinstance(tool.name, str) or not _GEMINI_NAME.match(tool.name):
            return Invalid(
                message=f"* GenerateContentRequest.{tool.at}.name: Invalid function name. Must start with a letter or "
                "an underscore. Must be a-z, A-Z, 0-9, or contain underscores, dots, colons and dashes, with a "
                "maximum length of 64.\n"
            )
        if not tool.json_schema and tool.parameters is not None:
            problem = _gemini_schema_problem(tool.parameters, f"{tool.at}.parameters")
            if problem is not None:
                return Invalid(message=problem)
    names = {t.name for t in call.tools}
    for n, name in enumerate(call.allowed_tools or []):
        if name not in names:
            return Invalid(
                message="* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names"
                f"[{n}]: function '{name}' is not declared in tools.\n"
            )
    if call.schema_field == "responseSchema":
        problem = _gemini_schema_problem(call.schema, "generation_config.response_schema")
        if problem is not None:
            return Invalid(message=problem)
    for image in call.images:
        if image.media_type not in GEMINI_MEDIA_TYPES:
            return Invalid(message=f"Unsupported MIME type: {image.media_type}")
        if image.url is None and _bad_base64(image.data):
            return Invalid(
                message=f"Invalid value at '{image.at}.data' (TYPE_BYTES), Base64 decoding failed for "
                f'"{(image.data or "")[:40]}"'
            )
    return None


def _gemini_schema_problem(schema: Any, at: str) -> str | None:
    """The protobuf JSON error of a `Schema` field holding what the message does not have: a JSON Schema
    keyword outside the subset, or `type` as a list."""
    if not isinstance(schema, dict):
        return f"Invalid JSON payload received. Expected an object at '{at}'."
    for name, value in schema.items():
        if name not in GEMINI_SCHEMA_FIELDS and _snake_to_camel(name) not in GEMINI_SCHEMA_FIELDS:
            return f"Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field."
        if name == "type" and isinstance(value, list):
            return (
                f"Invalid JSON payload received. Unknown name \"type\" at '{at}': Proto field is not repeating, "
                "cannot start list."
            )
        if name == "type" and (not isinstance(value, str) or value.upper() not in _GEMINI_TYPES):
            return (
                f"Invalid value at '{at}.type' (type.googleapis.com/google.ai.generativelanguage.v1beta.Type), "
                f'"{value}"'
            )
    children: list[tuple[str, Any]] = []
    properties = schema.get("properties")
    if isinstance(properties, dict):
        children += [(f"{at}.properties[{n}].value", s) for n, s in enumerate(properties.values())]
    if "items" in schema:
        children.append((f"{at}.items", schema["items"]))
    options = schema.get("anyOf", schema.get("any_of"))
    children += [(f"{at}.any_of[{n}]", s) for n, s in enumerate(options if isinstance(options, list) else [])]
    for where, child in children:
        problem = _gemini_schema_problem(child, where)
        if problem is not None:
            return problem
    return None


def _snake_to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def anthropic_refusal(body: Any, version: str, model: str) -> wire.Reply | None:
    """The 400 the Messages API answers a request without its version header or max_tokens, or with sampling
    settings the version does not take; None for a request it takes (the rest is checked as on every wire)."""
    if not isinstance(body, dict):
        return None
    if not version:
        return wire.error("anthropic", "", "bad_request", model, "anthropic-version: header is required")
    if "max_tokens" not in body:
        return wire.error("anthropic", "", "bad_request", model, "max_tokens: Field required")
    invalid = sampling_error("anthropic", body, version)
    return None if invalid is None else wire.error("anthropic", "", "bad_request", model, invalid.message)
