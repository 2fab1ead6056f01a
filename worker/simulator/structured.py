"""JSON values for a JSON Schema, as the simulated models answer structured output and tool calls: one valid
under the schema, one off it, and whether a value is valid.

The generator covers what answer schemas hold: `type` (one or a list), `properties` and `required`, `enum`,
`const`, `items` / `prefixItems` with `minItems` / `maxItems` / `uniqueItems`, `minLength` / `maxLength`, the
common string `format`s, `minimum` / `maximum` (exclusive too) and `multipleOf`, `anyOf` / `oneOf` / `allOf`
(the first branch), `$ref` to `$defs` / `definitions`, and Gemini's OpenAPI subset (upper-case types,
`nullable`). A `pattern` is not generated for: such a value is checked and may come out off the schema.
"""

from __future__ import annotations

import math
import random
from functools import lru_cache
from typing import Any

import msgspec

_FORMATS = {
    "date": "2024-05-17",
    "date-time": "2024-05-17T09:30:00Z",
    "time": "09:30:00Z",
    "email": "someone@example.com",
    "uri": "https://example.com/simulated",
    "uuid": "123e4567-e89b-42d3-a456-426614174000",
    "ipv4": "192.0.2.7",
    "hostname": "example.com",
}
_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")
_MAX_DEPTH = 8  # a recursive schema stops here with the smallest value its type allows


def valid_value(schema: Any, rng: random.Random) -> Any:
    """A JSON value valid under `schema` (in the limits of the module's docstring)."""
    return _Generator(schema if isinstance(schema, dict) else {}, rng).value(schema, 0)


def off_schema_value(schema: Any, rng: random.Random, must_be_object: bool = False) -> Any:
    """A JSON value `schema` refuses (a required property missing, a property of the wrong type, the wrong
    type altogether), an object when `must_be_object` (tool-call arguments); None when the schema takes every
    value tried."""
    base = valid_value(schema, rng)
    candidates: list[Any] = []
    if isinstance(base, dict):
        for name in _resolved(schema).get("required") or []:
            candidates.append({k: v for k, v in base.items() if k != name})
        for name, value in base.items():
            candidates.append(base | {name: [] if not isinstance(value, list) else "not a list"})
        candidates.append(base | {"unexpected_field": True})
    if not must_be_object:
        candidates += [[base], "not the asked shape", 42]
    for candidate in candidates:
        if not is_valid(schema, candidate):
            return candidate
    return None


def is_valid(schema: Any, value: Any) -> bool:
    """Whether `value` is valid under `schema` (JSON Schema draft 2020-12, or Gemini's OpenAPI subset)."""
    if not isinstance(schema, dict):
        return True
    return bool(_validator(msgspec.json.encode(as_json_schema(schema)).decode()).is_valid(value))


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    import jsonschema  # on first use: most requests carry no schema

    return jsonschema.Draft202012Validator(msgspec.json.decode(schema_json))


def as_json_schema(schema: Any) -> Any:
    """Gemini's OpenAPI-subset schema (upper-case `type`, `nullable`) as the JSON Schema it means; a JSON
    Schema is returned as it is."""
    if isinstance(schema, list):
        return [as_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: as_json_schema(v) for k, v in schema.items() if k not in ("nullable", "propertyOrdering")}
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {k: as_json_schema(v) for k, v in schema["properties"].items()}
    kind = schema.get("type")
    if isinstance(kind, str):
        out["type"] = kind.lower() if kind.upper() != "TYPE_UNSPECIFIED" else None
        if out["type"] is None:
            del out["type"]
    if schema.get("nullable") is True and "type" in out:
        out["type"] = [out["type"], "null"]
    for name in ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties"):
        if isinstance(out.get(name), str) and out[name].isdigit():  # int64 fields come as strings in proto JSON
            out[name] = int(out[name])
    return out


def _resolved(schema: Any) -> dict:
    return as_json_schema(schema) if isinstance(schema, dict) else {}


class _Generator:
    def __init__(self, root: dict, rng: random.Random) -> None:
        self.root = as_json_schema(root)
        self.rng = rng

    def value(self, schema: Any, depth: int) -> Any:
        schema = as_json_schema(schema) if isinstance(schema, dict) else {}
        if "$ref" in schema:
            return self.value(self._ref(schema["$ref"]), depth + 1)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.rng.choice(schema["enum"])
        for branch in ("anyOf", "oneOf", "allOf"):
            options = schema.get(branch)
            if isinstance(options, list) and options:
                merged = {k: v for k, v in schema.items() if k != branch}
                return self.value(merged | as_json_schema(options[0]), depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
        if depth > _MAX_DEPTH:
            return {"object": {}, "array": [], "string": "", "integer": 0, "number": 0, "boolean": False}.get(kind)
        maker = getattr(self, f"_{kind}", None)
        return maker(schema, depth) if maker is not None else None

    def _ref(self, ref: str) -> Any:
        node: Any = self.root
        for part in ref.removeprefix("#").strip("/").split("/") if ref != "#" else []:
            node = node.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(node, dict) else {}
        return node

    def _object(self, schema: dict, depth: int) -> dict:
        properties = _dict(schema.get("properties"))
        required = [name for name in _list(schema.get("required")) if isinstance(name, str)]
        names = list(properties) + [name for name in required if name not in properties]
        limit = schema.get("maxProperties")
        if isinstance(limit, int):
            names = required + [n for n in names if n not in required][: max(0, limit - len(required))]
        return {name: self.value(properties.get(name, {}), depth + 1) for name in names}

    def _array(self, schema: dict, depth: int) -> list:
        prefix = _list(schema.get("prefixItems"))
        low, high = schema.get("minItems", 0), schema.get("maxItems")
        count = max(low if isinstance(low, int) else 0, len(prefix), 1)
        if isinstance(high, int):
            count = min(count, high)
        items = schema.get("items", {})
        values = [self.value(prefix[i] if i < len(prefix) else items, depth + 1) for i in range(count)]
        if schema.get("uniqueItems"):
            values = [v if not isinstance(v, str) else f"{v}-{i}" if i else v for i, v in enumerate(values)]
        return values

    def _string(self, schema: dict, depth: int) -> str:
        text = _FORMATS.get(schema.get("format", ""), "") or self.rng.choice(_WORDS)
        low, high = schema.get("minLength"), schema.get("maxLength")
        if isinstance(low, int) and len(text) < low:
            text = (text + " ") * (low // (len(text) + 1) + 1)
        if isinstance(high, int):
            text = text[:high]
        return text

    def _number(self, schema: dict, depth: int) -> float:
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        high = schema.get("maximum", schema.get("exclusiveMaximum"))
        if "multipleOf" not in schema and isinstance(low, int | float) and isinstance(high, int | float):
            return (low + high) / 2  # inside both bounds, exclusive or not
        return float(self._integer(schema, depth, whole=False))

    def _integer(self, schema: dict, depth: int, whole: bool = True) -> int | float:
        above, below = _number(schema.get("exclusiveMinimum")), _number(schema.get("exclusiveMaximum"))
        low = _number(schema.get("minimum", above))
        high = _number(schema.get("maximum", below))
        step = _number(schema.get("multipleOf")) or 1
        start = low if low is not None else (high - 10 if high is not None else 0)
        value = math.ceil(start / step) * step
        if above is not None and value <= above:
            value += step
        value += step * self.rng.randrange(0, 5)
        if high is not None:
            while value > high or (below is not None and value >= below):
                value -= step
        return int(value) if whole else value

    def _boolean(self, schema: dict, depth: int) -> bool:
        return self.rng.random() < 0.5

    def _null(self, schema: dict, depth: int) -> None:
        return None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None
