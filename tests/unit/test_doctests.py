"""Runs the examples in module docstrings, so they stay true."""

import doctest
import importlib

import pytest

pytestmark = pytest.mark.unit
MODULES = ["models.rollup", "schemas.codec", "ops.settings", "ops.catalog", "connectors.replay"]
MODULES += ["models.policy", "models.guard", "models.battery", "models.sunspec", "models.jobs", "models.verify",
            "ops.actuation_bench"]  # actuation
MODULES += ["connectors.slurm_rest", "ops.slurm"]  # Slurm backends
MODULES += ["models.sops", "models.incident_query", "models.grounding", "models.explain"]  # narration
MODULES += ["models.topology", "models.dedup", "models.noise", "models.correlate", "models.storm",
            "models.alarm_filter"]  # alarm filter
MODULES += ["models.peak_battery", "models.peak_forecast", "models.peak_planner", "models.peak_baselines"]  # peaks
MODULES += ["ops.noc_view"]  # NOC


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
