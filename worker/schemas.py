"""JSON Schemas of the topics, generated from the message Structs (schemas/ in the repo)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import orjson

from worker.messages import CostEvent, DeadLetter, Feedback, Job, Result, Route

# The checkout's schemas/ (beside worker/); an installed package has none: schemas/ in the current directory.
_CHECKOUT_SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
SCHEMAS_DIR = _CHECKOUT_SCHEMAS if (_CHECKOUT_SCHEMAS / "samples").is_dir() else Path("schemas")

# File stem -> (Struct, the topic key in config `kafka.topics` it travels on).
SCHEMAS: dict[str, tuple[type[msgspec.Struct], str]] = {
    "job": (Job, "jobs"),
    "result": (Result, "results"),
    "cost_event": (CostEvent, "costs"),
    "dead_letter": (DeadLetter, "dlq"),
    "feedback": (Feedback, "feedback"),
    "route": (Route, "routes"),
}


def schema_of(struct: type[msgspec.Struct], topic_key: str) -> dict:
    """The JSON Schema (2020-12) of one message type."""
    schema = msgspec.json.schema(struct)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = struct.__name__
    schema["x-topic"] = f"kafka.topics.{topic_key}"
    return schema


def rendered() -> dict[str, bytes]:
    """File name -> the bytes schemas/ should hold."""
    return {
        f"{stem}.schema.json": orjson.dumps(schema_of(struct, topic), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        + b"\n"
        for stem, (struct, topic) in SCHEMAS.items()
    }


def write_schemas(directory: str | Path | None = None) -> list[Path]:
    """Write every schema file; returns their paths."""
    folder = Path(directory or SCHEMAS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in rendered().items():
        path = folder / name
        path.write_bytes(content)
        paths.append(path)
    return paths


def check_schemas(directory: str | Path | None = None) -> list[str]:
    """What differs between schemas/ and the Structs; empty when they agree."""
    folder = Path(directory or SCHEMAS_DIR)
    drift = []
    for name, content in rendered().items():
        path = folder / name
        if not path.exists():
            drift.append(f"{path}: missing (run `llm-router schemas`)")
        elif path.read_bytes() != content:
            drift.append(f"{path}: differs from the Struct (run `llm-router schemas`)")
    return drift
