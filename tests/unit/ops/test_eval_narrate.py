"""`opsloop eval narrate`: labelled files with texts and log lines, the data a report names, cross-validation."""

from __future__ import annotations

import hashlib
import json
from argparse import Namespace

import pytest

from opsloop.config.assets import sop_texts
from opsloop.config.settings import Settings
from opsloop.models.sops import parse_corpus
from opsloop.schemas.codec import Codec
from opsloop.ops.evals.narrate import DEV_SETS, load_labelled, main
from opsloop.ops.evals.narrate_cv import cross_validate, hits, narration_with, weighed_hits

pytestmark = pytest.mark.unit

CASES = """
- id: a
  expect: [SOP-GPU-002]
  root: [n-1, host, DCGM_FR_XID_ERROR, critical]
  summary: Detected XID error on GPU 6
  root_log: "NVRM: Xid (PCI:0000:c3:00): 79, pid=1, GPU has fallen off the bus."
  members:
    - {device: n-1, type: host, code: SLURM_STATE, count: 2, after_s: 30, text: "State=DRAIN"}
    - "n-2 host NODE_DOWN 1 5"
"""


def test_cases_carry_the_alarms_text_and_log_line(tmp_path):
    path = tmp_path / "cases.yaml"
    path.write_text(CASES)
    [(incident, expect)] = load_labelled(path)
    root, drained, down = incident["members"]
    assert expect == ["SOP-GPU-002"] and root["log_line"].startswith("NVRM: Xid")
    after_ms = drained["first_seen_ms"] - incident["opened_ms"]
    assert (drained["text"], drained["count"], after_ms) == ("State=DRAIN", 2, 30_000)
    assert (down["text"], down["log_line"], down["code"]) == ("", "", "NODE_DOWN")


def test_a_numeric_alarm_code_is_read_as_a_code(tmp_path):
    path = tmp_path / "cases.yaml"
    path.write_text("- id: n1\n  root: [ups-1, ups, 7687, major]\n  members:\n"
                    "    - {device: ups-2, type: ups, code: 107, after_s: 0}\n  expect: [SOP-PWR-004]\n")
    [(incident, _)] = load_labelled(path)
    assert incident["root_code"] == "7687" and incident["members"][1]["code"] == "107"


def test_the_report_names_the_data_it_was_judged_on(tmp_path, capsys):
    path = tmp_path / "cases.yaml"
    path.write_text(CASES)
    args = Namespace(settings=Settings.from_env({}), data=[path], json=True, llm="off", llm_limit=0, cv=0)
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["judged_on"] == [{"path": str(path), "cases": 1,
                                    "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}]
    assert report["cases"] == 1 and report["hit_at_1"] == 1.0
    main(Namespace(**{**vars(args), "json": False}))
    assert f"{path} (1 cases, sha256 {report['judged_on'][0]['sha256'][:12]})" in capsys.readouterr().out


def test_cross_validation_judges_each_fold_with_settings_chosen_on_the_others():
    cases = [case for path in DEV_SETS for case in load_labelled(path)][:24]
    grid = {"code_weight": [0.6, 0.0], "device_weight": [0.2]}
    corpus = parse_corpus(sop_texts())
    report = cross_validate(corpus, cases, folds=3, grid=grid)
    assert [f["cases"] for f in report["per_fold"]] == [8, 8, 8]
    # Without the root code the retriever is worse on these: every fold chooses to use it.
    blind = hits(narration_with(corpus, {"code_weight": 0.0}), cases)["as written"]
    assert sum(h1 for h1, _ in blind) < 24 * report["shipped"]["all_in"]["as written"]["hit_at_1"]
    assert all(f["chosen"]["code_weight"] == 0.6 for f in report["per_fold"])
    assert report["shipped"]["settings"] == {"code_weight": 0.6, "device_weight": 0.2}
    pooled = report["held_out"]["as written"]["hit_at_1"]
    assert pooled == sum(f["held_out"]["as written"]["hit_at_1"] * f["cases"] for f in report["per_fold"]) / 24


def test_leaving_one_file_out_holds_each_file_out_whole(tmp_path, capsys):
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(CASES)
    second.write_text(CASES.replace("id: a", "id: b"))
    cases = load_labelled(first) + load_labelled(second)
    report = cross_validate(parse_corpus(sop_texts()), cases, grid={"code_weight": [0.6, 0.0]}, groups=[0, 1])
    assert report["folds"] == 2 and [f["cases"] for f in report["per_fold"]] == [1, 1]
    args = Namespace(settings=Settings.from_env({}), data=[first, second], json=False, llm="off", llm_limit=0, cv=0,
                     cv_by_file=True)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("opsloop eval narrate --cv-by-file: 2 labelled incidents")
    assert "fold 0 (first.yaml, 1 held out)" in out and "fold 1 (second.yaml, 1 held out)" in out


def test_a_case_may_be_a_whole_incident_record(tmp_path):
    path = tmp_path / "records.yaml"
    path.write_text("""
- expect: [SOP-PWR-002]
  incident:
    incident_id: inc-9
    site: fra-2
    opened_ms: 1767225600000
    root_device: EPS2.U3
    root_device_type: device
    root_code: "0x0105"
    severity: critical
    summary: ""
    members:
      - {fingerprint: f1, device: EPS2.U3, device_type: device, code: "0x0105", count: 1,
         first_seen_ms: 1767225600000, text: Battery Discharging}
""")
    [(incident, expect)] = load_labelled(path)
    Codec.default().encode("Incident", incident)  # a valid Incident record once its defaults are filled
    assert incident["incident_id"] == "inc-9" and incident["member_count"] == 1
    assert incident["members"][0]["log_line"] == "" and incident["members"][0]["text"] == "Battery Discharging"


def test_weighing_gathered_evidence_ranks_as_retrieving_again():
    cases = [case for path in DEV_SETS for case in load_labelled(path)][::9]
    corpus = parse_corpus(sop_texts())
    settings = [{}, {"lead_weight": 0.0, "fanout_weight": 1.0, "said_weight": 2}, {"code_weight": 0.6},
                {"cause_weight": 0.0}]
    assert weighed_hits(corpus, cases, settings) == [hits(narration_with(corpus, s), cases) for s in settings]


def test_a_sites_glossary_is_read_and_named_in_the_report(tmp_path, capsys):
    cases = tmp_path / "cases.yaml"
    cases.write_text("- id: g1\n  root: [DEA-2, dea, NIZEK_NIVO_GORIVA, major]\n"
                     "  root_text: \"Dnevni rezervoar: nizek nivo goriva 15 %\"\n  expect: [SOP-PWR-009]\n")
    site = tmp_path / "lj.yaml"
    site.write_text("site: {id: lj}\nglossary:\n  words: {nizek: low, nivo: level, goriva: fuel}\n"
                    "  kinds: {DEA: generator}\n")
    args = Namespace(settings=Settings.from_env({}), data=[cases], json=True, llm="off", llm_limit=0, cv=0, site=None)
    main(args)
    shipped = json.loads(capsys.readouterr().out)
    assert shipped["hit_at_1"] == 0.0 and "glossary_of" not in shipped
    main(Namespace(**{**vars(args), "site": site}))
    report = json.loads(capsys.readouterr().out)
    assert report["hit_at_1"] == 1.0 and report["glossary_of"] == str(site)
