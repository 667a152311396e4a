"""The site file, read once: the shipped sites parse, errors name the file and the entry, one set of ESS defaults."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from opsloop.config.assets import DEMO_SITE, SITES_DIR
from opsloop.config.site import BILLING_PERIODS, EssSpec, Site, SiteError, load_site, load_sites, parse_site
from opsloop.models.battery import Battery
from opsloop.models.peak_planner import PERIOD_DAYS

pytestmark = pytest.mark.unit
COLO = Path(__file__).resolve().parents[2] / "data" / "topology_colo.yaml"
ESS = {"id": "e1", "capacity_kwh": 1000, "pcs_charge_kw": 500, "pcs_discharge_kw": 400}


def write(tmp_path: Path, doc: dict, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_demo_site_parses_with_its_values():
    site = load_site(DEMO_SITE)
    assert (site.id, site.timezone, site.grid_import_cap_kw, site.demand_billing_period) == \
           ("demo", "UTC", 40_000, "month")
    assert site.ess == (EssSpec("ess-1", 10_000, 5000, 5000, round_trip_efficiency=0.9, reserve_soc_pct=10,
                                soh_pct=97),)
    assert [p.id for p in site.pdus] == [f"pdu-{h}{i}" for h in "ab" for i in range(1, 5)]
    assert sum(p.share for p in site.pdus) == pytest.approx(1.0)
    assert site.slurm_partitions == ("train-a", "train-b", "batch", "inference")
    batch = site.gpu_pods[2]
    assert (batch.slurm_partition, batch.it_share, batch.gpus) == ("batch", 0.18, 256)
    assert "preemptible" in batch.description
    assert site.replay.site == "demo" and site.replay.columns == ["demand_mw"]
    assert set(site.topology) == {"power", "cooling", "network", "racks"} and site.alarm_chains is None


def test_the_colo_test_site_parses_without_the_blocks_it_lacks():
    site = load_site(COLO)
    assert site.id == "colo" and site.ess == () and site.replay is None and site.gpu_pods == ()
    assert site.topology["racks"][0]["pdu"] == ("pdu-1a", "pdu-1b")


def test_a_site_is_frozen_and_so_is_its_topology_block():
    site = load_site(DEMO_SITE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        site.id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        site.topology["power"] = ()  # type: ignore[index]


def test_one_set_of_ess_defaults_for_the_site_and_the_battery_model(tmp_path):
    [ess] = load_site(write(tmp_path, {"site": {"id": "s"}, "ess": [ESS]})).ess
    assert (ess.round_trip_efficiency, ess.reserve_soc_pct, ess.soh_pct) == (0.9, 10.0, 100.0)
    defaults = Battery(1, 1, 1)
    assert (defaults.round_trip_efficiency, defaults.reserve_soc_pct, defaults.soh_pct) == \
           (ess.round_trip_efficiency, ess.reserve_soc_pct, ess.soh_pct)
    battery = Battery.from_spec(ess)
    assert (battery.capacity_kwh, battery.pcs_charge_kw, battery.pcs_discharge_kw) == (1000, 500, 400)
    assert Battery.from_spec(ess, capacity_kwh=2000.0).capacity_kwh == 2000


def test_billing_periods_are_the_planners():
    assert set(BILLING_PERIODS) == set(PERIOD_DAYS)


@pytest.mark.parametrize("doc, message", [
    ({"site": {"id": "s"}, "ess": [{**ESS, "capacity_kwh": "x"}]},
     "ess[0].capacity_kwh: expected a positive number, got 'x'"),
    ({"site": {"id": "s"}, "ess": [ESS, {**ESS, "round_trip_efficiency": 1.2}]},
     "ess[1].round_trip_efficiency: expected a number in (0, 1], got 1.2"),
    ({"site": {"id": "s"}, "ess": [{**ESS, "reserve_soc_pct": 100}]},
     "ess[0].reserve_soc_pct: expected a percentage in [0, 100), got 100"),
    ({"site": {"id": "s"}, "ess": [{**ESS, "round_trip_eficiency": 0.8}]},
     "ess[0]: unknown keys ['round_trip_eficiency']"),
    ({"site": {"id": "s"}, "ess": [{k: v for k, v in ESS.items() if k != "pcs_charge_kw"}]},
     "ess[0].pcs_charge_kw: expected a positive number, got None"),
    ({"site": {"name": "no id"}}, "site.id: expected a non-empty string, got None"),
    ({"site": {"id": "s", "demand_billing_period": "year"}},
     "site.demand_billing_period: is 'year'; expected one of month, week, day"),
    ({"site": {"id": "s", "tariff_by_hour": [60] * 23}}, "site.tariff_by_hour: expected 24 prices"),
    ({"site": {"id": "s"}, "gpu_pods": [{"id": "p", "nodes": -1}]}, "gpu_pods[0].nodes: expected a whole number >= 0"),
    ({"site": {"id": "s"}, "pdus": [{"id": "p", "share": 2}]}, "pdus[0].share: expected a number in [0, 1], got 2"),
    ({"site": {"id": "s"}, "replay": {"time_column": "t", "streams": [{"device": "d"}]}},
     "replay.streams[0] (d None): device_type missing"),
    ({"site": {"id": "s"}, "topology": ["power"]}, "topology: expected a mapping"),
    ({"site": {"id": "s"}, "sites": []}, "(root): unknown keys ['sites']"),
    ({"site": {"id": "s", "country": "XX"}}, "site.country: is 'XX'"),
])
def test_errors_name_the_file_and_the_entry(tmp_path, doc, message):
    path = write(tmp_path, doc)
    with pytest.raises(SiteError) as err:
        load_site(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_an_unreadable_file_is_a_site_error(tmp_path):
    with pytest.raises(SiteError, match="missing.yaml: cannot read"):
        load_site(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("site: [unclosed\n")
    with pytest.raises(SiteError, match="bad.yaml: cannot read"):
        load_site(tmp_path / "bad.yaml")


def test_a_consumer_names_the_block_it_misses():
    site = parse_site({"site": {"id": "s"}}, "s.yaml")
    assert str(site.error("ess", "needed here")) == "s.yaml: ess: needed here"


def test_load_sites_reads_a_folder_once_and_rejects_duplicate_ids(tmp_path):
    assert list(load_sites(SITES_DIR)) == ["demo"]
    demo = load_site(DEMO_SITE)
    assert load_sites(SITES_DIR, known=[demo])["demo"] is demo  # not read again
    write(tmp_path, {"site": {"id": "a"}}, "a.yaml")
    write(tmp_path, {"site": {"id": "a"}}, "b.yaml")
    with pytest.raises(SiteError, match="b.yaml: site.id: 'a' is also the id of"):
        load_sites(tmp_path)


def test_sites_compare_by_value():
    assert load_site(DEMO_SITE) == load_site(DEMO_SITE)
    assert isinstance(load_site(DEMO_SITE), Site)


def test_agents_and_models_never_read_a_site_file_themselves():
    """They take a parsed Site; the one YAML reader below the tools is the config floor (and SOP front matter)."""
    root = Path(__file__).resolve().parents[3]
    readers = sorted(str(p.relative_to(root)) for folder in ("models", "connectors", "streams")
                     for p in (root / folder).rglob("*.py") if "yaml" in p.read_text(encoding="utf-8"))
    assert readers == ["models/sops.py"]  # parses a SOP's front matter from text it is given


def test_flexible_load_parses_from_the_example_and_is_checked():
    flexible = load_site(SITES_DIR / "examples" / "flexible.yaml").flexible_load
    assert flexible.training.partition == "train-b" and flexible.training.min_replicas == 0.5
    assert flexible.llm_serving.cap_servers == ("large",) and flexible.clock_lock.saving == 0.15
    assert load_site(DEMO_SITE).flexible_load is None
    base = {"site": {"id": "x"}}
    for block, message in [
        ({"training": {"share": 0.2}}, "flexible_load.training: partition missing"),
        ({"training": {"share": 0.7, "partition": "b"}, "clock_lock": {"share": 0.4}},
         "flexible_load: shares add up to 1.1"),
        ({"llm_serving": {"share": 0.1, "shift_saving": 0.8, "cap_saving": 0.3}},
         "flexible_load.llm_serving: shift_saving and cap_saving add up to more than 1"),
        ({"clock_lock": {"share": 0.1, "savings": 0.2}}, "flexible_load.clock_lock: unknown keys ['savings']"),
        ({"clock_lock": {"share": 0}}, "flexible_load.clock_lock.share: expected a number in (0, 1]"),
        ({"llm_serving": {"share": 0.1, "cap_servers": []}}, "flexible_load.llm_serving.cap_servers: expected a non"),
    ]:
        with pytest.raises(SiteError, match=re.escape(f"x.yaml: {message}")):
            parse_site({**base, "flexible_load": block}, "x.yaml")


def test_a_glossary_block_gives_the_sites_own_words_read_only():
    site = parse_site({"site": {"id": "lj"}, "glossary": {"words": {"gorivo": "fuel", "Napajanje": "power supply"},
                                                           "kinds": {"DEA": "generator"}}}, "lj.yaml")
    assert dict(site.glossary.words) == {"gorivo": "fuel", "Napajanje": "power supply"}
    assert dict(site.glossary.kinds) == {"DEA": "generator"}
    with pytest.raises(TypeError):
        site.glossary.words["x"] = "y"
    assert parse_site({"site": {"id": "x"}}, "x.yaml").glossary is None


@pytest.mark.parametrize("block, message", [
    ({"words": {"two words": "fuel"}}, "glossary.words: 'two words' is not one word"),
    ({"words": {"gorivo": ""}}, "glossary.words.gorivo: expected"),
    ({"kinds": ["DEA"]}, "glossary.kinds: expected a mapping"),
    ({"word": {"gorivo": "fuel"}}, "glossary"),
])
def test_a_bad_glossary_names_the_entry(block, message):
    with pytest.raises(SiteError, match=re.escape(f"x.yaml: {message}")):
        parse_site({"site": {"id": "x"}, "glossary": block}, "x.yaml")
