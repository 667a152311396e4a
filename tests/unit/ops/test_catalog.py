"""Topic catalog and settings: checked offline."""

from pathlib import Path

import pytest
import yaml

from opsloop.config.catalog import DEFAULT_CATALOG, CatalogError, MissingKeyError, load_catalog, message_key
from opsloop.ops.cli import main
from opsloop.config.settings import Settings

pytestmark = pytest.mark.unit
ARCHITECTURE_TOPICS = {"telemetry.raw", "telemetry.site", "alarms.raw", "alarms.clean", "incidents", "narratives",
                       "forecasts.peak", "actions.proposed", "actions.approved", "actions.results",
                       "operator.feedback", "noc.audit", "sources.health", "agents.health", "slurm.queue", "weather.forecast",
                       "forecasts.rul", "advice.efficiency", "deadletter"}


def test_catalog_has_every_architecture_topic_with_kafka_configs():
    specs = load_catalog()
    assert set(specs) == ARCHITECTURE_TOPICS
    assert specs["narratives"].configs() == {"cleanup.policy": "compact", "retention.ms": str(8760 * 3_600_000)}
    assert specs["operator.feedback"].configs()["retention.ms"] == "-1"
    assert specs["noc.audit"].configs() == {"cleanup.policy": "delete", "retention.ms": "-1"}


@pytest.mark.parametrize("change, message", [
    (lambda d: d["topics"]["incidents"].update(record="Nope"), "no schema Nope"),
    (lambda d: d["topics"]["incidents"].update(cleanup="shred"), "cleanup must be"),
    (lambda d: d["topics"]["incidents"].pop("key"), "lacks 'key'"),
    (lambda d: d["topics"]["incidents"].update(partitions=0), "partitions"),
    (lambda d: d.update(version=2), "version: 1"),
])
def test_bad_catalog_entries_are_named(tmp_path, change, message):
    doc = yaml.safe_load(DEFAULT_CATALOG.read_text())
    change(doc)
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(CatalogError, match=message):
        load_catalog(path)


def test_settings_come_from_env_only_when_asked():
    s = Settings.from_env({"OPSLOOP_DATA_DIR": "/srv/opsloop", "OPSLOOP_IDLE_CLOSE_S": "2.5",
                           "OPSLOOP_TOPIC_PREFIX": "blue."})
    assert s.data_dir == Path("/srv/opsloop") and s.idle_close_s == 2.5
    assert s.duckdb_file == Path("/srv/opsloop/opsloop.duckdb")
    assert s.topic("incidents") == "blue.incidents" and s.group("rollup") == "opsloop.blue.rollup"
    with pytest.raises(AttributeError):
        s.broker = "elsewhere:9092"  # frozen


def test_cli_reports_configuration_errors_plainly(monkeypatch, capsys):
    monkeypatch.setenv("OPSLOOP_GRACE_S", "two minutes")
    assert main(["topics", "list"]) == 2
    assert "OPSLOOP_GRACE_S: expected int" in capsys.readouterr().err


def test_cli_lists_the_catalog_offline(capsys):
    assert main(["topics", "list"]) == 0
    out = capsys.readouterr().out
    assert "telemetry.raw" in out and "partitions=8" in out and "compact" in out


def test_key_of_takes_the_declared_field_and_follows_dotted_paths():
    specs = load_catalog()
    assert specs["alarms.raw"].key_of({"device": "ups-1", "site": "demo"}) == b"ups-1"
    assert specs["alarms.clean"].key_of({"alarm": {"site": "demo", "device": "ups-1"}}) == b"demo"
    assert specs["actions.approved"].key_of({"action": {"target": "ess-1"}, "verdict": "approved"}) == b"ess-1"
    assert message_key("actions.results", {"action_id": "a-7", "target": "ess-1"}) == b"a-7"
    assert message_key("incidents", {"site": "démo"}) == "démo".encode()


@pytest.mark.parametrize("topic, record", [
    ("alarms.raw", {"site": "demo"}),  # the field is absent
    ("actions.approved", {"action": {"kind": "pcs_idle"}}),  # the nested field is absent
    ("actions.approved", {"action": None}),  # the nested record is absent
    ("incidents", {"site": None}),  # null
])
def test_a_record_without_its_key_field_is_a_clear_error(topic, record):
    key = load_catalog()[topic].key
    with pytest.raises(MissingKeyError, match=f"topic {topic}: .* no '{key}'"):
        message_key(topic, record)


def test_every_catalog_key_is_a_field_path_of_its_record():
    from opsloop.schemas.codec import Codec

    codec = Codec.default()
    for spec in load_catalog().values():
        fields = codec.schema(spec.record).parsed["fields"]
        for part in spec.key.split("."):
            field = next((f for f in fields if f["name"] == part), None)
            assert field is not None, f"{spec.name}: {spec.record} has no {spec.key}"
            fields = field["type"].get("fields", []) if isinstance(field["type"], dict) else []
