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
