"""schemas/ matches the Structs, and each sample is valid under both."""

import json

import jsonschema
import msgspec
import pytest

from worker.schemas import SCHEMAS, SCHEMAS_DIR, check_schemas, rendered


def test_schemas_folder_matches_the_structs():
    assert check_schemas() == [], "schemas/ drifted from worker/messages.py: run `llm-router schemas`"


def test_drift_is_detected(tmp_path):
    for name, content in rendered().items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "job.schema.json").write_text("{}")
    assert [line for line in check_schemas(tmp_path) if "job.schema.json" in line]


SAMPLES = sorted((SCHEMAS_DIR / "samples").glob("*.json"))


def test_every_message_has_a_sample():
    assert {stem for stem in SCHEMAS} <= {sample.stem for sample in SAMPLES}


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda path: path.stem)
def test_sample_is_valid(sample):
    """samples/NAME.json and samples/NAME_VARIANT.json are valid under schemas/NAME.schema.json and its Struct."""
    stem = next(stem for stem in sorted(SCHEMAS, key=len, reverse=True) if sample.stem.startswith(stem))
    struct, _ = SCHEMAS[stem]
    sample_bytes = sample.read_bytes()
    schema = json.loads((SCHEMAS_DIR / f"{stem}.schema.json").read_text())
    jsonschema.validate(json.loads(sample_bytes), schema)
    msgspec.json.decode(sample_bytes, type=struct)


def test_schema_rejects_what_the_struct_rejects():
    schema = json.loads((SCHEMAS_DIR / "job.schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"id": "a", "prompt": "x", "surprise": 1}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"prompt": "x"}, schema)


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 2.5},
        {"temperature": -0.1},
        {"top_p": 1.5},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"stop": [""]},
        {"seed": 1.5},
    ],
)
def test_schema_rejects_generation_settings_out_of_range(settings):
    schema = json.loads((SCHEMAS_DIR / "job.schema.json").read_text())
    jsonschema.validate({"id": "a", "prompt": "x", "temperature": 2, "top_p": 1, "stop": ["a"] * 4, "seed": -3}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"id": "a", "prompt": "x", **settings}, schema)
