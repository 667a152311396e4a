"""Schema contracts: documented, united, and backward compatible with every released version."""

import json
import shutil

import pytest

from opsloop.config.catalog import load_catalog
from opsloop.schemas.codec import SCHEMA_DIR, load_schema, record_names
from opsloop.schemas.compat import check_all, incompatibilities

pytestmark = pytest.mark.unit


def test_current_schemas_read_every_released_version():
    assert check_all() == {}


def _fields(schema):
    """Every field of a schema and of the records nested in it."""
    if isinstance(schema, list):
        for branch in schema:
            yield from _fields(branch)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            for field in schema["fields"]:
                yield schema["name"], field
                yield from _fields(field["type"])
        elif schema.get("type") == "array":
            yield from _fields(schema["items"])
        elif schema.get("type") == "map":
            yield from _fields(schema["values"])


@pytest.mark.parametrize("record", record_names())
def test_every_record_and_field_is_documented(record):
    schema = load_schema(SCHEMA_DIR / f"{record}.avsc")
    assert schema.get("doc") and schema["namespace"] == "io.opsloop"
    for owner, field in _fields(schema):
        assert field.get("doc"), f"{record}: {owner}.{field['name']} has no doc"


def test_every_catalog_topic_has_a_schema_and_its_key_field():
    for spec in load_catalog().values():
        schema = load_schema(SCHEMA_DIR / f"{spec.record}.avsc")
        for part in spec.key.split("."):
            field = next((f for f in schema["fields"] if f["name"] == part), None)
            assert field, f"{spec.name}: key {spec.key} is not a field of {spec.record}"
            schema = field["type"]
        assert schema == "string", f"{spec.name}: key {spec.key} is not a string field"


def test_an_incompatible_change_is_caught(tmp_path):
    shutil.copytree(SCHEMA_DIR, tmp_path / "s", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    path = tmp_path / "s" / "SiteSnapshot.avsc"
    schema = json.loads(path.read_text())
    schema["fields"].append({"name": "zone", "type": "string", "doc": "new, required, no default"})
    path.write_text(json.dumps(schema))
    problems = check_all(tmp_path / "s")
    assert list(problems) == ["SiteSnapshot v1"] and "zone" in problems["SiteSnapshot v1"][0]


def test_type_narrowing_is_incompatible_and_adding_an_optional_field_is_not():
    old = load_schema(SCHEMA_DIR / "TelemetryPoint.avsc")
    narrowed = json.loads(json.dumps(old))
    next(f for f in narrowed["fields"] if f["name"] == "value")["type"] = "float"
    assert incompatibilities(narrowed, old)
    widened = json.loads(json.dumps(old))
    widened["fields"].append({"name": "quality", "type": ["null", "string"], "default": None, "doc": "x"})
    assert incompatibilities(widened, old) == []
