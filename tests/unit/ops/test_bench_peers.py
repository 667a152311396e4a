"""The scale bench's Quix Streams peer: a script for a venv of its own, pinned apart from opsloop's environment."""

import ast
import sys

import pytest

from opsloop.ops.bench import peers

pytestmark = pytest.mark.unit


def test_the_quix_rollup_imports_nothing_of_opsloop():
    """It runs in a venv where opsloop is not installed: the standard library, Quix Streams and fastavro only."""
    tree = ast.parse((peers.HERE / "quix_rollup.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert imported - set(sys.stdlib_module_names) == {"fastavro", "quixstreams"}


def test_the_peer_is_pinned_with_the_confluent_kafka_it_needs():
    pins = dict(line.split("==") for line in peers.REQUIREMENTS.read_text().splitlines()
                if line and not line.startswith("#"))
    assert pins["quixstreams"] == peers.QUIX_VERSION
    major, minor, *_ = (int(x) for x in pins["confluent-kafka"].split("."))
    assert (major, minor) < (2, 13)  # quixstreams 3.28 requires < 2.13: why the peer has a venv of its own
