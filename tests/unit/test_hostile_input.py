"""Hostile strings through every place a name reaches a command, a query or a page: no injection anywhere.

Each entry point is a property test; ``CASES`` counts the examples each one ran and the last test checks
that every entry point ran and that no injection was seen (``INJECTIONS`` stays empty). Run with ``-s`` to see
the counts.

* commands: Slurm job ids into ``scontrol`` argv (one argument, or refused by ``check_job_id``) and into the
  slurmrestd URL (digits only); partition names through the guard and the job selection;
* queries: device ids, site names and alarm text through the views' DuckDB tables (Arrow rows, never SQL
  text) and the NOC's parameterised lookup; a ``'); DROP TABLE`` leaves every table intact;
* pages: every text on the NOC page, the ``notice`` query parameter included: the page's element structure is
  the same as with harmless text, and the action id round-trips through its hidden input;
* files: policy and site YAML: ``safe_load`` (no Python tags), errors that name the entry and never echo a huge
  value;
* Kafka records: hostile strings round-trip exactly; an oversized record is refused with a clear error.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from opsloop.config.policy import PolicyError, load_policy, parse_policy
from opsloop.config.settings import Settings
from opsloop.config.site import SiteError, load_site, parse_site
from opsloop.connectors import slurm as slurm_module
from opsloop.connectors.slurm import JOB_ID, ScontrolBackend, SlurmError, parse_squeue
from opsloop.connectors.slurm_rest import RestBackend
from opsloop.models.guard import REJECTED, PlantState, decide, declared_partitions
from opsloop.models.jobs import Job, touchable
from opsloop.ops.noc_auth import Role, Session, User
from opsloop.ops.noc_web import Caller, render_document, render_fragment
from opsloop.schemas.codec import MAX_RECORD_BYTES, Codec, DecodeError, RecordTooLarge

from consumed import Msg  # the unit tier's consumed message

pytestmark = pytest.mark.unit
CASES: Counter = Counter()
INJECTIONS: list[str] = []
CODEC = Codec.default()
POLICY = load_policy(Settings().policy)

PAYLOADS = [
    "'); DROP TABLE alarms_raw; --", "\"; DROP TABLE v_actions; --", "1; rm -rf /", "$(reboot)", "`id`", "12 && id",
    "12\n13", "12\x00", "-1", "--help", "12_3;ls", "../../etc/passwd", "%2e%2e%2f", "12/../../ping", "12?x=1#",
    "<script>alert(1)</script>", "\"><img src=x onerror=alert(1)>", "' onmouseover='alert(1)",
    "</textarea><svg/onload=1>", "javascript:alert(1)", "{{7*7}}", "${jndi:ldap://x/a}",
    "!!python/object/apply:os.system [\"id\"]",
    "\u202egnp.exe", "\ufeff", "batch,inference", " batch", "batch ", "Batch", "ｂａｔｃｈ",
    "inference\n", "*", "%",
    "x\x1e99|batch|RUNNING|9|gres/gpu:8|forged", "x\u2028", "x\x85",
]
hostile = st.one_of(
    st.sampled_from(PAYLOADS),
    st.text(max_size=60),
    st.builds(lambda a, p, b: a + p + b, st.text(max_size=10), st.sampled_from(PAYLOADS), st.text(max_size=10)),
)


def injected(what: str) -> None:
    """Record an injection and fail the example (hypothesis then shrinks it to the smallest)."""
    INJECTIONS.append(what)
    raise AssertionError(f"injection: {what}")


FAST = dict(deadline=None, derandomize=True,  # the same cases on every run
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# -- commands -------------------------------------------------------------------------------------------------

@settings(max_examples=400, **FAST)
@given(job_id=hostile, command=st.sampled_from(["hold", "release", "suspend", "resume", "requeuehold"]))
def test_a_job_id_reaches_scontrol_as_one_checked_argument_or_not_at_all(monkeypatch, job_id, command):
    CASES["slurm job id → scontrol argv"] += 1
    calls = []

    def fake_run(argv, **kwargs):
        calls.append((argv, kwargs))
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(slurm_module.subprocess, "run", fake_run)
    try:
        ScontrolBackend(env={}).act(command, job_id)
    except SlurmError as exc:
        assert calls == [] and "not a Slurm job id" in str(exc)
        return
    [(argv, kwargs)] = calls
    if argv != ["scontrol", command, job_id] or kwargs.get("shell") or not JOB_ID.fullmatch(job_id):
        injected(f"scontrol argv {argv!r}")


@settings(max_examples=300, **FAST)
@given(job_id=hostile, server_id=hostile)
def test_a_job_id_reaches_the_rest_url_as_digits_only(job_id, server_id):
    CASES["slurm job id → slurmrestd URL"] += 1
    rest = RestBackend("http://127.0.0.1:9", "token", user="opsloop")
    rest._version = "v0.0.38"
    rest._numeric = {"7": server_id}  # even what the server said a job's id is gets checked
    sent = []
    rest._request = lambda method, path, body=None: sent.append(path) or {}
    for candidate in (job_id, "7"):
        try:
            rest.act("hold", candidate)
        except SlurmError:
            continue
    for path in sent:
        tail = path.removeprefix("/slurm/v0.0.38/job/")
        if not tail.isascii() or not tail.isdigit():
            injected(f"REST path {path!r}")


@settings(max_examples=300, **FAST)
@given(partitions=st.lists(hostile, min_size=1, max_size=4), name=hostile)
def test_partition_names_never_widen_what_a_slurm_action_may_touch(partitions, name):
    CASES["partition names → guard and job selection"] += 1
    action = {"action_id": "a", "kind": "slurm_hold", "site": "demo", "target": "opsloop",
              "expires_ms": 1_600_000, "job_ids": [], "params": {"partitions": ",".join(partitions)}}
    declared = declared_partitions(action)
    decision = decide(action, PlantState(), POLICY, now_ms=1_000_000)
    outside = [p for p in declared if p not in POLICY.slurm.touchable_partitions]
    if outside and decision.verdict != REJECTED:
        injected(f"partitions {declared!r} approved")
    for partition in (name, *partitions):
        job = Job("12", partition, "RUNNING", 1, 1, name)
        if touchable(job, POLICY.slurm, declared) and (partition not in POLICY.slurm.touchable_partitions
                                                        or partition in POLICY.slurm.protected_partitions):
            injected(f"job in partition {partition!r} touchable")


@settings(max_examples=200, **FAST)
@given(name=hostile, partition=hostile.filter(lambda p: "|" not in p and "\n" not in p and "\r" not in p))
def test_job_names_from_squeue_cannot_forge_another_job(name, partition):
    CASES["squeue job names → job list"] += 1
    name = name.replace("\n", " ").replace("\r", " ")  # squeue prints one job per line
    line = f"12|{partition.strip() or 'batch'}|RUNNING|5|gres/gpu:2|{name}"
    jobs = parse_squeue(line + "\n" + "13|batch|RUNNING|1|gres/gpu:1|ok\n")
    if [j.job_id for j in jobs] != ["12", "13"] or jobs[0].name != name.rstrip():
        injected(f"squeue line {line!r} → {jobs!r}")


# -- queries --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def views(tmp_path_factory):
    from opsloop.streams.views import ViewsSink

    settings_ = Settings(duckdb_path=tmp_path_factory.mktemp("views") / "ops.duckdb", topic_prefix="t.")
    sink = ViewsSink(settings_, dead_letters=lambda *a: injected(f"dead letter {a[1:]}"))
    yield sink
    sink.close()


def _tables(con) -> set:
    return {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


@settings(max_examples=150, **FAST)
@given(site=hostile, device=hostile, text=hostile, code=hostile)
def test_names_and_alarm_text_reach_duckdb_as_values_never_as_sql(views, site, device, text, code):
    CASES["device/site/alarm text → DuckDB views"] += 1
    from opsloop.ops.noc import LiveViews, action_verdict

    n = CASES["device/site/alarm text → DuckDB views"]
    con = views.con
    before = _tables(con)
    alarm = {"ts_ms": 1_000 + n, "site": site, "device": device, "device_type": "ups", "source": "test", "code": code,
             "severity": "major", "state": "raise", "text": text, "attributes": {text: device}}
    point = {"ts_ms": 1_000 + n, "site": site, "device": device, "device_type": "pdu", "metric": "it_kw",
             "value": 1.0, "unit": "kW", "source": "test"}
    views.write_batch([Msg("t.alarms.raw", 0, 2 * n, CODEC.encode("Alarm", alarm)),
                       Msg("t.telemetry.raw", 0, 2 * n, CODEC.encode("TelemetryPoint", point))])
    after = _tables(con)
    rows = con.execute("SELECT site, device, text, code FROM alarms_raw WHERE ts_ms = ?", [1_000 + n]).fetchall()
    if after != before or rows != [(site, device, text, code)]:
        injected(f"DuckDB: tables {before ^ after}, rows {rows!r}")
    if action_verdict(LiveViews(views), device) is not None:  # a parameter: matches no action
        injected(f"action lookup {device!r} matched")


# -- pages ----------------------------------------------------------------------------------------------------

class Structure(HTMLParser):
    """The page's elements and attribute names (not their text): what an injection would change."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple] = []
        self.inputs: list[tuple] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, tuple(sorted(name for name, _ in attrs))))
        if tag == "input":
            self.inputs.append(dict(attrs).get("value"))


def viewer(name: str, csrf: str = "tok") -> Caller:
    return Caller(Session("sid", name, csrf, 0.0, 0.0), User(name or "x", Role.OPERATOR, "hash"))


def pages_of(s: str, action_id: str, who: Caller) -> str:
    """Every page's live part with ``s`` in each text a view can hold, and ``action_id`` as the pending action."""
    alarm = {"fingerprint": s, "site": s, "device": s, "code": s, "severity": s, "state": s, "duplicate_count": 2,
             "noise_score": 0.5, "noise": True, "last_seen_ms": 0, "text": s, "label": None, "flapping": False}
    incident = {"incident_id": s, "site": s, "state": s, "root_code": s, "root_device": s, "root_device_type": s,
                "narrative": s, "summary": s, "severity": s, "member_count": 1, "opened": None, "updated": None,
                "resolved": None}
    inc = {"incident": incident, "tz": "UTC", "narrative": {"text": s, "model": s, "grounded": True},
           "sops": [{"sop_id": s, "section": s, "title": s, "text": s, "steps": ()}],
           "members": [{"device": s, "device_type": s, "code": s, "count": 1, "text": s, "log_line": s,
                        "first_seen": None}], "paths": [[s, s]]}
    act = {"action_id": action_id, "site": s, "kind": "slurm_suspend", "target": s, "setpoint_kw": None,
           "shed_kw": 1.0, "reason": s, "risk": "low", "verdict": "needs_approval", "verdict_reasons": s,
           "approved_by": None, "result": None, "result_detail": s, "observed_delta_kw": None, "created": None}
    source = {"site": s, "source": s, "kind": s, "status": s, "last_success_ms": None, "lag_ms": None, "polls": 1,
              "failures": 0, "points": 1, "dead_letters": 0, "dropped": 0, "last_error": s}
    return "".join([
        render_fragment("actions_live.html", who, found={"pending": [act], "history": [], "total": 0, "page": 1},
                        params={"q": s}, page_rows=50),
        render_fragment("incidents_live.html", who, found={"rows": [incident], "total": 1, "page": 1},
                        params={"q": s, "site": s}, page_rows=50),
        render_fragment("incident_live.html", who, inc=inc, incident_id=s),
        render_fragment("alarms_live.html", who, alarms=[alarm]),
        render_fragment("sources_live.html", who, sources=[source], dead_letters=1),
        render_fragment("audit_live.html", who, rows=[{"time": None, "event": s, "actor": s, "role": s, "target": s,
                                                       "client": s, "source": s, "detail": s}]),
    ])


@settings(max_examples=300, **FAST)
@given(s=hostile, action_id=hostile.filter(lambda a: a.strip() != ""))
def test_every_text_on_the_noc_page_is_escaped(s, action_id):
    CASES["NOC page text (sites, devices, alarms, actions)"] += 1
    who = viewer(s, csrf=s)
    page = render_document(who, "/actions", pages_of(s, action_id, who), source=s, notice=s)
    harmless = "x" if s else ""  # an empty text renders as an empty cell: compare like with like
    plain_who = viewer(harmless, csrf=harmless)
    plain = render_document(plain_who, "/actions", pages_of(harmless, "a", plain_who), source=harmless,
                            notice=harmless)
    got = Structure(page)
    if got.tags != Structure(plain).tags or action_id not in got.inputs:
        injected(f"page structure changed by {s!r} / {action_id!r}")


@settings(max_examples=300, **FAST)
@given(notice=hostile)
def test_the_noc_query_and_form_parameters_are_escaped(notice):
    CASES["NOC query and form parameters (notice, action_id, kind)"] += 1
    query = urlencode({"notice": notice, "action_id": notice, "kind": notice})
    form = parse_qs(query)  # as the NOC's handlers read the query string and the form body
    value = form.get("notice", [None])[0]
    page = render_document(viewer("ana"), "/", "", source="db", notice=value)
    plain = render_document(viewer("ana"), "/", "", source="db", notice="x" if value else None)
    if Structure(page).tags != Structure(plain).tags:
        injected(f"notice {notice!r} changed the page")
    action_id, kind = form.get("action_id", [""])[0], form.get("kind", [""])[0]
    error = render_document(viewer("ana"), "/", "", source="db", error=f"Bad feedback: action {action_id!r}, kind {kind!r}.")
    if Structure(error).tags != Structure(render_document(viewer("ana"), "/", "", source="db", error="x")).tags:
        injected(f"form field {notice!r} changed the error page")


# -- files ----------------------------------------------------------------------------------------------------

def _policy_doc() -> dict:
    return yaml.safe_load(Path(Settings().policy).read_text())


@settings(max_examples=200, **FAST)
@given(value=hostile, where=st.sampled_from(["partition", "kind", "mode", "version", "name", "window"]),
       big=st.booleans())
def test_hostile_policy_entries_are_named_and_never_echoed_whole(value, where, big):
    CASES["policy file entries"] += 1
    value = value * 5000 if big and value else value
    doc = _policy_doc()
    if where == "partition":
        doc["slurm"]["touchable_partitions"].append(value)
        doc["slurm"]["protected_partitions"].append(value)
    elif where == "kind":
        doc["actions"][value] = {"mode": "auto"}
    elif where == "mode":
        doc["actions"]["pcs_idle"] = {"mode": value}
    elif where == "version":
        doc["version"] = value
    elif where == "name":
        doc["name"] = value
    else:
        doc["actions"]["pcs_idle"] = {"mode": "auto", "windows": [{"start": value, "end": "24:00"}]}
    try:
        parse_policy(doc)
    except PolicyError as exc:
        if len(str(exc)) > 4000 or (big and len(value) > 1000 and value in str(exc)):
            injected(f"policy error echoes {len(str(exc))} characters")


def test_policy_and_site_files_are_safe_loaded(tmp_path):
    CASES["policy/site YAML tags"] += 1
    marker = tmp_path / "executed"
    evil = f"!!python/object/apply:os.system ['touch {marker}']\n"
    for path, load, error in ((tmp_path / "policy.yaml", load_policy, PolicyError),
                              (tmp_path / "site.yaml", load_site, SiteError)):
        path.write_text(evil)
        with pytest.raises(error):
            load(path)
    assert not marker.exists()


@settings(max_examples=150, **FAST)
@given(value=hostile, big=st.booleans(), where=st.sampled_from(["id", "ess", "pdu"]))
def test_hostile_site_entries_are_named_and_never_echoed_whole(value, big, where):
    CASES["site file entries"] += 1
    value = value * 5000 if big and value else value
    doc = yaml.safe_load(Path(Settings().topology).read_text())
    if where == "id":
        doc["site"]["id"] = value if value else None
    elif where == "ess":
        doc["ess"] = [{"id": value, "capacity_kwh": value}]
    else:
        doc["pdus"] = value
    try:
        parse_site(doc, "site.yaml")
    except (SiteError, KeyError, TypeError, ValueError) as exc:
        if len(str(exc)) > 4000:
            injected(f"site error of {len(str(exc))} characters")


# -- Kafka records --------------------------------------------------------------------------------------------

@settings(max_examples=300, **FAST)
@given(site=hostile, device=hostile, text=hostile)
def test_hostile_record_fields_round_trip_exactly(site, device, text):
    CASES["Kafka record fields"] += 1
    alarm = {"ts_ms": 1, "site": site, "device": device, "device_type": "ups", "source": "t", "code": text,
             "severity": "major", "state": "raise", "text": text, "attributes": {device: text}}
    if CODEC.decode_as("Alarm", CODEC.encode("Alarm", alarm)) != alarm:
        injected(f"record changed: {alarm!r}")


def test_oversized_records_are_refused_with_a_clear_error():
    CASES["oversized records"] += 1
    alarm = {"ts_ms": 1, "site": "s", "device": "d", "device_type": "ups", "source": "t", "code": "c",
             "severity": "major", "state": "raise", "text": "x" * MAX_RECORD_BYTES, "attributes": {}}
    with pytest.raises(RecordTooLarge, match=r"Alarm record of 1,000,0\d\d bytes exceeds the 1,000,000-byte limit"):
        CODEC.encode("Alarm", alarm)
    with pytest.raises(DecodeError, match="exceeds the 1,000,000-byte record limit"):
        CODEC.decode(b"\xc3\x01" + b"\x00" * MAX_RECORD_BYTES)
    small = CODEC.encode("Alarm", {**alarm, "text": "x" * 1000})
    assert CODEC.decode_as("Alarm", small)["text"] == "x" * 1000


def test_every_entry_point_ran_and_nothing_was_injected():
    print("\nhostile-input cases per entry point:", dict(CASES), "injections:", len(INJECTIONS))
    assert INJECTIONS == []
    if len(CASES) < 12:
        pytest.skip("the counts need the whole module (some entry points were deselected)")
    assert all(n >= 1 for n in CASES.values())
