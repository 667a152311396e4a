"""Agent names across the two registries (batch processors and Faust agents); no broker."""

from __future__ import annotations

import pytest

from opsloop.streams import worker

pytestmark = pytest.mark.unit


def _register(app, settings) -> None:  # never called here: parse_agents only reads names
    raise AssertionError("not expected to run")


@pytest.fixture
def faust_registry(monkeypatch):
    registry = {"peaks": _register}
    monkeypatch.setattr(worker, "FAUST_AGENTS", registry)
    monkeypatch.setattr(worker, "AGENTS", {n: worker.AGENTS[n] for n in ("rollup", "views", "anomaly")})
    return registry


@pytest.mark.parametrize("spec", [None, "", "all"])
def test_all_means_every_processor_and_faust_agent(faust_registry, spec):
    assert worker.parse_agents(spec) == [*worker.AGENTS, "peaks"]
    assert worker.parse_agents(spec, {"extra": _register}) == [*worker.AGENTS, "peaks", "extra"]


def test_all_runs_the_product_processors_and_faust_agents():
    assert worker.parse_agents("all") == [*worker.AGENTS, *worker.FAUST_AGENTS]
    assert "narrate" in worker.FAUST_AGENTS
    assert {"dedup", "correlate", "peaks"} <= set(worker.AGENTS)
    assert "peaks" not in worker.FAUST_AGENTS  # a batch processor now (streams/peaks_processor.py)


def test_subset_keeps_the_order_given(faust_registry):
    assert worker.parse_agents("peaks, rollup") == ["peaks", "rollup"]
    assert worker.parse_agents("views") == ["views"]
    assert worker.parse_agents("extra,views", {"extra": _register}) == ["extra", "views"]


def test_unknown_name_is_an_error_that_lists_the_known_ones(faust_registry):
    with pytest.raises(ValueError, match=rf"unknown agent\(s\) nope; known: {', '.join(worker.AGENTS)}, peaks"):
        worker.parse_agents("rollup,nope")


def test_a_name_in_both_registries_is_rejected(faust_registry):
    faust_registry["rollup"] = _register
    with pytest.raises(ValueError, match="rollup name both a batch processor and a Faust agent"):
        worker.parse_agents("views")


def test_an_extra_faust_agent_may_not_reuse_a_name(faust_registry):
    with pytest.raises(ValueError, match="rollup name both"):
        worker.parse_agents(None, {"rollup": _register})
    with pytest.raises(ValueError, match="'peaks' is already registered"):
        worker.parse_agents(None, {"peaks": lambda app, settings: None})


def test_run_rejects_unknown_and_clashing_names_before_starting_anything(faust_registry):
    with pytest.raises(ValueError, match="unknown agent"):
        worker.run(None, ["nope"])
    with pytest.raises(ValueError, match="name both"):
        worker.run(None, [], faust_agents={"views": _register})


def test_site_names_cover_every_site_file_beside_the_worker_s_and_can_be_turned_off(tmp_path):
    from opsloop.config.settings import Settings
    from opsloop.config.site import load_site

    (tmp_path / "a.yaml").write_text("site: {id: a}\ness: [{id: ess-a, capacity_kwh: 1, pcs_charge_kw: 1, "
                                     "pcs_discharge_kw: 1}]\n")
    (tmp_path / "b.yaml").write_text("site: {id: b}\n")  # no device list: any device of b
    settings = Settings(topology=tmp_path / "a.yaml")
    names = worker.site_names(settings, load_site(settings.topology))
    assert names.check("a", "ess-a") is None and names.check("b", "meter-7") is None
    assert "'ess-b'" in names.check("a", "ess-b") and "'c'" in names.check("c", "ess-a")
    assert worker.site_names(settings.replace(unknown_names="accept"), load_site(settings.topology)) is None
    with pytest.raises(ValueError, match="OPSLOOP_UNKNOWN_NAMES"):
        worker.site_names(settings.replace(unknown_names="maybe"), load_site(settings.topology))


def test_dedup_checks_outside_alarms_and_trusts_opsloop_s_own(tmp_path):
    from opsloop.config.settings import Settings
    from opsloop.config.site import load_site
    from opsloop.models.records import alarm
    from opsloop.streams.dedup import DedupProcessor

    settings = Settings(data_dir=tmp_path)
    dedup = DedupProcessor(settings, names=worker.site_names(settings, load_site(settings.topology)))
    assert dedup.unknown(alarm(1, "demo", "ups-a", "ups", "bms", "UPS_ON_BATTERY", "on battery")) is None
    assert "'ups-z'" in dedup.unknown(alarm(1, "demo", "ups-z", "ups", "bms", "UPS_ON_BATTERY", "on battery"))
    # the Slurm sink's alarm about its action target "slurm" is opsloop's own
    assert dedup.unknown(alarm(1, "demo", "slurm", "slurm", "opsloop.slurm-sink", "ACTION_VERIFY_FAILED", "x")) is None
