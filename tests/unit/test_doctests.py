"""Runs the examples in every opsloop module's docstrings, so they stay true.

Modules are discovered by walking the installed ``opsloop`` packages, never listed by hand:
a new module's examples run without anyone remembering to add it.
"""

import doctest
import importlib
import pkgutil

import pytest

import opsloop.config
import opsloop.connectors
import opsloop.models
import opsloop.ops
import opsloop.schemas
import opsloop.streams

pytestmark = pytest.mark.unit
PACKAGES = [opsloop.config, opsloop.schemas, opsloop.models, opsloop.connectors, opsloop.streams, opsloop.ops]


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package.__name__)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return sorted(names)


def _examples(name: str) -> list[doctest.DocTest]:
    return [t for t in doctest.DocTestFinder().find(importlib.import_module(name)) if t.examples]


WITH_EXAMPLES = [name for name in _modules() if _examples(name)]


def test_discovery_finds_the_modules_that_carry_examples():
    assert {"opsloop.models.rollup", "opsloop.models.anomaly", "opsloop.ops.evals.nab",
            "opsloop.config.settings"} <= set(WITH_EXAMPLES)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
