"""Each wire API's request body read into one `Call`: the prompt's texts, images, tools offered, the tool choice,
the JSON schema asked for and the tool conversation so far. The parsers are lenient (a field of the wrong shape
is read as absent); what the real APIs refuse is checked on the Call by `validation.py`.

What a call costs in input tokens (`input_tokens`): its texts as `worker.routing.pricing.prompt_tokens` counts
them (a message's text parts joined; a tool call as its name and JSON arguments, a tool result as its text or
JSON), each image by `worker.routing.pricing.image_tokens` (the provider's rule from the image's size, else the
documented estimate), and the tools offered as `estimate_tokens` of their JSON definition
(`{"name", "description", "parameters"}` each, whatever the wire's wrapping).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from worker.messages import ImagePart
from worker.routing.pricing import estimate_tokens, image_tokens, prompt_tokens

_encode = msgspec.json.encode


class SimImage(msgspec.Struct, frozen=True, kw_only=True):
    """An image of the prompt: base64 `data` with its `media_type`, or a `url` (its media type, when the wire
    says it). `at` is where it is in the request, in the wire's own path notation (for its errors)."""

    at: str
    media_type: str = ""
    url: str | None = None
    data: str | None = None

    def tokens(self, wire: str) -> int:
        """Its input tokens by the provider's rule (undecodable data counts as an image of unknown size)."""
        try:
            part = ImagePart(url=self.url, data=self.data, media_type=self.media_type or "image/png")
        except ValueError:
            part = ImagePart(url="https://unknown")
        return image_tokens(wire, part)


class SimTool(msgspec.Struct, frozen=True, kw_only=True):
    """A function the request offers, as sent (a missing or invalid name or schema is `validation.py`'s to
    refuse); `at` is its path in the request."""

    at: str
    name: Any
    parameters: Any
    description: Any = ""
    strict: bool = False
    json_schema: bool = True  # False: Gemini's OpenAPI-subset `parameters` (not `parametersJsonSchema`)


class Call(msgspec.Struct, kw_only=True):
    """One call as each wire API's parser read it, for the answer common to all of them."""

    wire: str
    model: str
    texts: list[str] | None  # the prompt's texts, None when the body is not a valid request
    max_tokens: Any
    key: str
    body: Any
    arrived: float  # time.monotonic() when the request arrived
    json: bool = False  # the request asked for JSON
    prefill: str = ""  # the start of the answer the request gave (not repeated in the answer)
    breakpoints: list[int] = []  # the texts a `cache_control` marks (Anthropic)
    images: list[SimImage] = []
    tools: list[SimTool] = []
    tool_choice: Literal["auto", "none", "required"] = "auto"  # a named tool: required, and `tool_name`
    tool_name: str = ""  # the one tool the request forces
    allowed_tools: list[str] | None = None  # Gemini's allowedFunctionNames
    schema: Any = None  # the JSON schema the answer must be valid under
    schema_name: str = ""
    schema_strict: bool = False
    schema_field: str = ""  # the field that carried it: response_format, output_config, responseSchema, ...
    after_tool_result: bool = False  # the conversation ends with tool results: the model answers them
    stray_result: tuple[str, str] | None = None  # (where, id) of a tool result that answers no call before it

    def input_tokens(self) -> int:
        """The call's input tokens (the module's docstring): texts, images and tool definitions."""
        tokens = prompt_tokens(self.texts or [])
        for image in self.images:
            tokens += image.tokens(self.wire)
        if self.tools:
            tokens += estimate_tokens(
                _encode(
                    [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in self.tools]
                ).decode()
            )
        return tokens


def _call_text(name: Any, arguments: Any) -> str:
    """A tool call as the prompt counts it: its name and JSON arguments."""
    return f"{name}{arguments if isinstance(arguments, str) else _encode(arguments).decode()}"


def _data_url(url: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a `data:` URL, or None."""
    if not url.startswith("data:"):
        return None
    header, _, data = url[5:].partition(",")
    return header.split(";", 1)[0], data


# OpenAI and OpenAI-compatible servers


def openai_call(body: Any, *, wire: str, model: str, key: str, arrived: float) -> Call:
    """A Chat Completions request."""
    if not isinstance(body, dict):
        return Call(wire=wire, model=model, texts=None, max_tokens=4096, key=key, body=body, arrived=arrived)
    texts: list[str] = []
    call = Call(
        wire=wire,
        model=model,
        texts=texts,
        max_tokens=body.get("max_completion_tokens") or body.get("max_tokens") or 4096,
        key=key,
        body=body,
        arrived=arrived,
    )
    _openai_messages(call, texts, body.get("messages") or [])
    _openai_tools(call, body.get("tools"), body.get("tool_choice"))
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        call.json = True
        spec = response_format.get("json_schema")
        if response_format["type"] == "json_schema" and isinstance(spec, dict):
            call.schema, call.schema_name = spec.get("schema", {}), spec.get("name", "")
            call.schema_strict, call.schema_field = spec.get("strict") is True, "response_format"
    return call


def _openai_messages(call: Call, texts: list[str], messages: list[Any]) -> None:
    answerable: set[str] = set()  # the ids of the tool calls of the last assistant message
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            texts.append("")
            continue
        content, role = message.get("content"), message.get("role")
        text = content if isinstance(content, str) else _openai_parts(call, content, i)
        calls = message.get("tool_calls")
        if role == "assistant":
            answerable = set()
            for tool_call in calls if isinstance(calls, list) else []:
                function = tool_call.get("function") or {} if isinstance(tool_call, dict) else {}
                text += _call_text(function.get("name"), function.get("arguments", ""))
                answerable.add(tool_call.get("id"))
        elif role == "tool":
            if message.get("tool_call_id") not in answerable and call.stray_result is None:
                call.stray_result = (f"messages.[{i}].role", str(message.get("tool_call_id")))
        else:
            answerable = set()
        texts.append(text)
    call.after_tool_result = bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"


def _openai_parts(call: Call, content: Any, i: int) -> str:
    if not isinstance(content, list):
        return ""
    pieces = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            pieces.append(str(part.get("text", "")))
        elif part.get("type") == "image_url":
            spec = part.get("image_url")
            url = str((spec.get("url") if isinstance(spec, dict) else spec) or "")
            inline = _data_url(url)
            at = f"messages[{i}].content[{j}].image_url.url"
            call.images.append(
                SimImage(at=at, media_type=inline[0], data=inline[1]) if inline else SimImage(at=at, url=url)
            )
    return "".join(pieces)


def _openai_tools(call: Call, tools: Any, choice: Any) -> None:
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        function = tool.get("function") if isinstance(tool, dict) else None
        function = function if isinstance(function, dict) else {}
        call.tools.append(
            SimTool(
                at=f"tools[{i}].function",
                name=function.get("name"),
                parameters=function.get("parameters", {"type": "object", "properties": {}}),
                description=function.get("description", ""),
                strict=function.get("strict") is True,
            )
        )
    if choice in ("auto", "none", "required"):
        call.tool_choice = choice
    elif isinstance(choice, dict):
        function = choice.get("function")
        call.tool_choice = "required"
        call.tool_name = str(function.get("name", "")) if isinstance(function, dict) else ""
    elif choice is None and not call.tools:
        call.tool_choice = "none"


# Anthropic


def anthropic_call(body: Any, *, model: str, key: str, arrived: float) -> Call:
    """A Messages request (the `anthropic-version` and `max_tokens` checks are the handler's)."""
    if not isinstance(body, dict):
        return Call(wire="anthropic", model=model, texts=None, max_tokens=0, key=key, body=body, arrived=arrived)
    system = body.get("system")
    texts = [system] if isinstance(system, str) else [b.get("text", "") for b in system or [] if isinstance(b, dict)]
    messages = body.get("messages") or []
    call = Call(
        wire="anthropic",
        model=model,
        texts=texts,
        max_tokens=body.get("max_tokens", 0),
        key=key,
        body=body,
        arrived=arrived,
        breakpoints=_breakpoints(system, messages),
    )
    system_texts = list(texts)
    _anthropic_messages(call, texts, messages)
    _anthropic_tools(call, body.get("tools"), body.get("tool_choice"))
    # A final assistant message is a prefill: the answer continues it. A JSON one, or a system prompt asking
    # for JSON, is how the Messages API was asked for JSON before its structured outputs.
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        call.prefill = texts[-1]
    call.json = call.prefill.lstrip().startswith(("{", "[")) or any("json" in t.lower() for t in system_texts)
    output_config = body.get("output_config")
    output_format = output_config.get("format") if isinstance(output_config, dict) else None
    field = "output_config.format"
    if output_format is None and isinstance(body.get("output_format"), dict):  # the beta's name
        output_format, field = body["output_format"], "output_format"
    if isinstance(output_format, dict) and output_format.get("type") == "json_schema":
        call.json, call.schema, call.schema_field, call.schema_strict = True, output_format.get("schema"), field, True
    return call


def _anthropic_messages(call: Call, texts: list[str], messages: list[Any]) -> None:
    previous_uses: set[Any] = set()
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        pieces, uses, results = [content if isinstance(content, str) else ""], set(), False
        for j, block in enumerate(content if isinstance(content, list) else []):
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                pieces.append(str(block.get("text", "")))
            elif kind == "image":
                call.images.append(_anthropic_image(block.get("source"), f"messages.{i}.content.{j}.image.source"))
            elif kind == "tool_use":
                pieces.append(_call_text(block.get("name"), block.get("input", {})))
                uses.add(block.get("id"))
            elif kind == "tool_result":
                results = True
                pieces.append(_anthropic_result(call, block.get("content"), f"messages.{i}.content.{j}"))
                if block.get("tool_use_id") not in previous_uses and call.stray_result is None:
                    call.stray_result = (f"messages.{i}.content.{j}", str(block.get("tool_use_id")))
        texts.append("".join(pieces))
        previous_uses = uses
        call.after_tool_result = results


def _anthropic_result(call: Call, content: Any, at: str) -> str:
    if isinstance(content, str):
        return content
    pieces = []
    for k, block in enumerate(content if isinstance(content, list) else []):
        if isinstance(block, dict) and block.get("type") == "text":
            pieces.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") == "image":
            call.images.append(_anthropic_image(block.get("source"), f"{at}.tool_result.content.{k}.image.source"))
    return "".join(pieces)


def _anthropic_image(source: Any, at: str) -> SimImage:
    source = source if isinstance(source, dict) else {}
    if source.get("type") == "url":
        return SimImage(at=f"{at}.url", url=str(source.get("url", "")))
    return SimImage(at=f"{at}.base64", media_type=str(source.get("media_type", "")), data=str(source.get("data", "")))


def _anthropic_tools(call: Call, tools: Any, choice: Any) -> None:
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
            continue  # the server tools (web search, code execution...) are not functions of the caller
        call.tools.append(
            SimTool(
                at=f"tools.{i}.custom",
                name=tool.get("name"),
                parameters=tool.get("input_schema"),
                description=tool.get("description", ""),
                strict=tool.get("strict") is True,
            )
        )
    choice = choice if isinstance(choice, dict) else {}
    kind = choice.get("type")
    if kind == "tool":
        call.tool_choice, call.tool_name = "required", str(choice.get("name", ""))
    elif kind == "any":
        call.tool_choice = "required"
    elif kind == "none" or not call.tools:
        call.tool_choice = "none"


def _breakpoints(system: Any, messages: list[Any]) -> list[int]:
    """The indices, among the texts the simulator counts (each system block, then each message), of those
    a `cache_control` marks: a system block, or a message with a marked content block."""
    marked: list[int] = []
    blocks = system if isinstance(system, list) else []
    for i, block in enumerate(blocks):
        if isinstance(block, dict) and block.get("cache_control"):
            marked.append(i)
    offset = len(blocks) if blocks else (1 if isinstance(system, str) else 0)
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(isinstance(b, dict) and b.get("cache_control") for b in content):
            marked.append(offset + i)
    return marked


# Gemini (protobuf JSON: each field by its camelCase or snake_case name)


def _field(message: Any, camel: str, snake: str) -> Any:
    return message.get(camel, message.get(snake)) if isinstance(message, dict) else None


def gemini_call(body: Any, *, model: str, key: str, arrived: float) -> Call:
    """A generateContent request."""
    if not isinstance(body, dict):
        return Call(wire="gemini", model=model, texts=None, max_tokens=8192, key=key, body=body, arrived=arrived)
    system = _field(body, "systemInstruction", "system_instruction") or {}
    config = _field(body, "generationConfig", "generation_config") or {}
    texts = (
        [str(p.get("text", "")) for p in system.get("parts") or [] if isinstance(p, dict)]
        if isinstance(system, dict)
        else []
    )
    call = Call(
        wire="gemini",
        model=model,
        texts=texts,
        max_tokens=_field(config, "maxOutputTokens", "max_output_tokens") or 8192,
        key=key,
        body=body,
        arrived=arrived,
    )
    contents = body.get("contents") or []
    _gemini_contents(call, texts, [contents] if isinstance(contents, dict) else contents)
    _gemini_tools(call, body.get("tools"), _field(body, "toolConfig", "tool_config"))
    call.json = _field(config, "responseMimeType", "response_mime_type") == "application/json"
    for camel, snake in (("responseJsonSchema", "response_json_schema"), ("responseSchema", "response_schema")):
        schema = _field(config, camel, snake)
        if schema is not None:
            call.schema, call.schema_field = schema, camel
    return call


def _gemini_contents(call: Call, texts: list[str], contents: list[Any]) -> None:
    for i, content in enumerate(contents):
        parts = content.get("parts") if isinstance(content, dict) else None
        pieces, responses = [], False
        for j, part in enumerate(parts if isinstance(parts, list) else []):
            if not isinstance(part, dict):
                continue
            if "text" in part:
                pieces.append(str(part["text"]))
            inline, linked = _field(part, "inlineData", "inline_data"), _field(part, "fileData", "file_data")
            function_call = _field(part, "functionCall", "function_call")
            function_response = _field(part, "functionResponse", "function_response")
            at = f"contents[{i}].parts[{j}]"
            if isinstance(inline, dict):
                media = str(_field(inline, "mimeType", "mime_type") or "")
                call.images.append(SimImage(at=f"{at}.inline_data", media_type=media, data=str(inline.get("data", ""))))
            elif isinstance(linked, dict):
                media = str(_field(linked, "mimeType", "mime_type") or "")
                url = str(_field(linked, "fileUri", "file_uri") or "")
                call.images.append(SimImage(at=f"{at}.file_data", media_type=media, url=url))
            elif isinstance(function_call, dict):
                pieces.append(_call_text(function_call.get("name"), function_call.get("args", {})))
            elif isinstance(function_response, dict):
                responses = True
                pieces.append(_call_text(function_response.get("name"), function_response.get("response", {})))
        texts.append("".join(pieces))
        call.after_tool_result = responses


def _gemini_tools(call: Call, tools: Any, tool_config: Any) -> None:
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        declarations = _field(tool, "functionDeclarations", "function_declarations")
        for j, declaration in enumerate(declarations if isinstance(declarations, list) else []):
            declaration = declaration if isinstance(declaration, dict) else {}
            json_schema = _field(declaration, "parametersJsonSchema", "parameters_json_schema")
            call.tools.append(
                SimTool(
                    at=f"tools[{i}].function_declarations[{j}]",
                    name=declaration.get("name"),
                    parameters=json_schema if json_schema is not None else declaration.get("parameters"),
                    description=declaration.get("description", ""),
                    json_schema=json_schema is not None,
                )
            )
    config = _field(tool_config, "functionCallingConfig", "function_calling_config") or {}
    mode = str(config.get("mode", "AUTO")).upper() if isinstance(config, dict) else "AUTO"
    allowed = _field(config, "allowedFunctionNames", "allowed_function_names")
    if isinstance(allowed, list):
        call.allowed_tools = [str(name) for name in allowed]
    if mode == "NONE" or not call.tools:
        call.tool_choice = "none"
    elif mode == "ANY":
        call.tool_choice = "required"
        if call.allowed_tools is not None and len(call.allowed_tools) == 1:
            call.tool_name = call.allowed_tools[0]
