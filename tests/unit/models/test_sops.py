"""The SOP corpus: it parses, it covers what an AI data centre needs, and bad files are clear errors."""

from __future__ import annotations

import pytest

from opsloop.models.incident_query import code_key
from opsloop.config.assets import sop_texts
from opsloop.models.sops import SopError, parse_corpus, parse_sop

pytestmark = pytest.mark.unit

GOOD = "---\nid: SOP-T-001\ntitle: T\nequipment: [ups]\ncodes: [X]\n---\n## Scope\nx\n## Steps\n1. One.\n2. Two.\n"


def test_corpus_has_at_least_40_procedures_each_with_scope_and_numbered_steps():
    corpus = parse_corpus(sop_texts())
    assert len(corpus) >= 40
    for sop in corpus.values():
        assert sop.equipment and sop.codes and sop.sections["Scope"]
        assert len(sop.steps) >= 3, sop.id


@pytest.mark.parametrize("topic, equipment, code", [
    ("utility loss", "utility", "UTILITY_LOSS"), ("UPS on battery", "ups", "UPS_ON_BATTERY"),
    ("UPS bypass", "ups", "UPS_ON_BYPASS"), ("UPS fault", "ups", "UPS_FAULT"),
    ("PDU overcurrent", "pdu", "PDU_OVERCURRENT"), ("breaker trip", "pdu", "BREAKER_TRIP"),
    ("generator fail to start", "generator", "GEN_FAIL_TO_START"), ("ATS", "ats", "ATS_FAIL_TO_TRANSFER"),
    ("CRAH fault", "crah", "CRAH_FAULT"), ("CRAC fault", "crac", "CRAC_FAULT"), ("chiller trip", "chiller", "CHILLER_TRIP"),
    ("high inlet", "rack", "HIGH_INLET_TEMP"), ("leak", "leak_sensor", "LEAK_DETECTED"),
    ("GPU XID", "gpu_node", "GPU_XID"), ("ECC", "gpu_node", "ECC_DBE"), ("thermal throttling", "gpu_node", "GPU_THERMAL_THROTTLE"),
    ("NVLink", "gpu_node", "NVLINK_ERROR"), ("node down", "gpu_node", "NODE_DOWN"), ("IB flaps", "ib_switch", "IB_LINK_FLAP"),
    ("Slurm drain", "slurm", "NODE_DRAIN"), ("stuck job", "slurm", "JOB_STUCK_COMPLETING"),
    ("low SoC", "ess", "LOW_SOC"), ("cell imbalance", "bms", "CELL_IMBALANCE"), ("PCS fault", "pcs", "PCS_FAULT"),
    ("network switch", "switch", "SWITCH_DOWN"),
])
def test_every_topic_of_the_brief_has_a_procedure(topic, equipment, code):
    corpus = parse_corpus(sop_texts())
    assert any(equipment in sop.equipment and code_key(code) in {code_key(c) for c in sop.codes}
               for sop in corpus.values()), topic


@pytest.mark.parametrize("text, message", [
    ("no front matter", "must start with '---'"),
    ("---\nid: SOP-T-001\n---\n## Steps\n1. x\n", "front matter lacks title, equipment, codes"),
    (GOOD.replace("## Scope\nx\n", ""), "missing section"),
    (GOOD.replace("2. Two.", "3. Two."), "step 3 out of order"),
    (GOOD.replace("1. One.\n2. Two.\n", "do things\n"), "no numbered steps"),
])
def test_malformed_sops_are_clear_errors(text, message):
    with pytest.raises(SopError, match=message):
        parse_sop(text, "t.md")


def test_file_name_must_match_id_and_ids_are_unique(tmp_path):
    (tmp_path / "SOP-T-002.md").write_text(GOOD)
    with pytest.raises(SopError, match="does not match the file name"):
        parse_corpus(sop_texts(tmp_path))
