"""The per-principal access table and the ACLs it plans: least privilege, derived from what agents read and write."""

from __future__ import annotations

import pytest

from opsloop.config.access import ADMIN, PRINCIPALS, plan, principals
from opsloop.config.catalog import load_catalog
from opsloop.config.settings import Settings

pytestmark = pytest.mark.unit


def _who(grants, operation: str, topic: str) -> set[str]:
    return {g.principal for g in grants if g.resource == "topic" and g.name == topic and g.operation == operation}


def test_only_the_guard_approves_only_the_sinks_views_and_anomaly_read_approvals_only_the_noc_gives_feedback():
    grants = plan(Settings(topic_prefix="p."))
    assert _who(grants, "WRITE", "p.actions.approved") == {"guard"}
    # anomaly reads them as a hint (the changes the loop makes itself), never to act
    assert _who(grants, "READ", "p.actions.approved") == {"pcs-sink", "slurm-sink", "llm-sink", "cooling-sink",
                                                          "gpu-sink", "views", "noc", "anomaly"}
    assert _who(grants, "WRITE", "p.operator.feedback") == {"noc"}


def test_every_catalog_topic_has_a_writer_and_every_written_topic_exists():
    grants = plan(Settings())
    catalog = set(load_catalog())
    written = {g.name for g in grants if g.resource == "topic" and g.operation == "WRITE" and g.pattern == "literal"}
    assert written == catalog  # every topic has a producer with the right to write it, and only catalog topics


def test_the_agents_own_topics_and_groups_follow_the_app_id_and_prefix():
    settings = Settings(app_id="site-a", topic_prefix="t1.")
    dedup = plan(settings, ["dedup"])
    assert {(g.resource, g.name, g.pattern, g.operation) for g in dedup} >= {
        ("group", "site-a.t1.dedup", "literal", "READ"),  # its consumer group (Settings.group)
        ("group", "site-a.labels", "literal", "READ"),  # the label follower
        ("topic", "site-a.t1.dedup-", "prefixed", "CREATE"),  # its changelog, created on first start
        ("group", "site-a.t1.dedup-", "prefixed", "READ"),  # the changelog's restore consumer
    }
    narrate = {(g.resource, g.name, g.pattern) for g in plan(settings, ["narrate"])}
    assert ("group", "site-a-t1", "literal") in narrate and ("topic", "site-a-t1-", "prefixed") in narrate


def test_no_principal_is_granted_cluster_rights_or_wildcards():
    for grant in plan(Settings()):
        assert grant.resource in ("topic", "group") and "*" not in grant.name
        assert grant.operation in ("READ", "WRITE", "CREATE", "DESCRIBE")
    assert principals()[0] == ADMIN and ADMIN not in PRINCIPALS  # the super user needs no ACL
