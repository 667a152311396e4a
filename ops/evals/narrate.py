"""Narration: hit@1 and hit@3 of SOP retrieval, grounded share and latency, without and with the LLM.

The labelled set (``ops/evals/data/narrate_incidents.yaml``, or ``--data``)
names for each incident the SOP(s) an operator should be sent to; a hit@k is
one of them among the k best retrieved. Latency is measured per narration
around the whole pipeline (query, retrieval, narration, check); with
``--llm`` (default: when ``OPSLOOP_LLM_URL`` is set) the LLM narrates the
first ``--llm-limit`` incidents and the share of its drafts that pass the
grounding check is printed beside the share of published narrations that are
grounded (rejected drafts fall back to the deterministic narration).
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
import zlib
from pathlib import Path

import yaml

from opsloop.ops.evals.narrate_cv import cross_validate, render, without_device_types

DATA = Path(__file__).resolve().parent / "data" / "narrate_incidents.yaml"
# Development sets beside DATA: vendor wording, another layout (the retriever's author's), and the blind set,
# scored once blind and development data since the retriever was changed for its misses.
DEV_SETS = [DATA, DATA.with_name("narrate_vendor_dev.yaml"), DATA.with_name("narrate_terse_dev.yaml"),
            DATA.with_name("narrate_blind.yaml")]
# Written after the retriever was frozen and scored once; the evidence weighing (leads, fan-out, normal readings) was
# cross-validated over them too, so they are no longer fresh. narrate_blind_notype.yaml is narrate_blind.yaml with
# every device type made generic: the same cases, so not listed twice.
FRESH_SETS = [DATA.with_name("narrate_after_freeze.yaml"), DATA.with_name("narrate_independent.yaml")]
# Written after the evidence weighing by an author who saw only the SOP texts and schemas; scored once against it.
SEALED = DATA.with_name("narrate_sealed.yaml")
# The everyday mix of a third campus by a fifth author (and the same cases with generic device types), scored once
# against the same retriever.
SEALED3, SEALED3_NO_TYPES = DATA.with_name("narrate_sealed3.yaml"), DATA.with_name("narrate_sealed3_notype.yaml")
# Written by a sixth author while the upstream causes were built, scored once after they were frozen.
SEALED4, SEALED4_NO_TYPES = DATA.with_name("narrate_sealed4.yaml"), DATA.with_name("narrate_sealed4_notype.yaml")
# Terse wordings, most types missing, by a seventh author; scored once after the steps that studied sealed4.
SEALED5, SEALED5_NO_TYPES = DATA.with_name("narrate_sealed5.yaml"), DATA.with_name("narrate_sealed5_notype.yaml")
BLIND = DEV_SETS[-1]
BLIND_NO_TYPES = DATA.with_name("narrate_blind_notype.yaml")
BASE_MS = 1_767_225_600_000  # 2026-01-01 00:00 UTC: labelled incidents have fixed, reproducible times


def _member(spec, fingerprint: str, opened: int) -> dict:
    """A member from "device type code count seconds-after-open" or a mapping that may add text and log."""
    if isinstance(spec, str):
        device, device_type, code, count, offset_s = spec.split()
        spec = {"device": device, "type": device_type, "code": code, "count": count, "after_s": offset_s}
    return {"fingerprint": fingerprint, "device": str(spec["device"]), "device_type": str(spec["type"]),
            "code": str(spec["code"]), "count": int(spec.get("count", 1)),
            "first_seen_ms": opened + int(spec.get("after_s", 0)) * 1000,
            "text": str(spec.get("text") or ""), "log_line": str(spec.get("log") or "")}


def _record(case: dict, n: int) -> dict:
    """A case written as an ``Incident`` record (``incident:``), optional fields filled with their defaults."""
    incident = dict(case["incident"])
    opened = int(incident.get("opened_ms", BASE_MS + n * 3_600_000))
    members = [{"fingerprint": f"{incident.get('incident_id', n)}-{i}", "count": 1, "first_seen_ms": opened,
                "text": "", "log_line": "", **m} for i, m in enumerate(incident.get("members") or [])]
    return {"incident_id": str(case.get("id", n)), "site": "site", "state": "open", "opened_ms": opened,
            "updated_ms": max([opened, *(m["first_seen_ms"] for m in members)]), "resolved_ms": None,
            "severity": "major", "summary": "", "merged_into": None, **incident,
            "member_count": len(members), "members": members}


def load_labelled(path: Path = DATA) -> list[tuple[dict, list[str]]]:
    """(Incident record, expected SOP ids) for each labelled case.

    A case is either a whole ``Incident`` record under ``incident:`` or the
    short form: ``root`` is [device, type, code, severity], with optional
    ``root_text`` and ``root_log`` (the root alarm's text and raw log line);
    members are "device type code count seconds-after-open" or mappings with
    those keys (``after_s`` for the offset) and optional ``text`` and ``log``.
    """
    cases = []
    for n, case in enumerate(yaml.safe_load(Path(path).read_text(encoding="utf-8"))):
        if "incident" in case:
            cases.append((_record(case, n), list(case["expect"])))
            continue
        opened = BASE_MS + n * 3_600_000
        device, device_type, code, severity = (str(v) for v in case["root"])  # "0033" is a code, not a number
        root = {"device": device, "type": device_type, "code": code, "count": 1, "after_s": 0,
                "text": case.get("root_text"), "log": case.get("root_log")}
        members = [_member(root, f"{case['id']}-root", opened)]
        members += [_member(spec, f"{case['id']}-{i}", opened) for i, spec in enumerate(case.get("members") or [])]
        incident = {"incident_id": case["id"], "site": case.get("site", "demo"), "state": "open",
                    "opened_ms": opened, "updated_ms": max(m["first_seen_ms"] for m in members),
                    "resolved_ms": None, "root_device": device, "root_device_type": device_type,
                    "root_code": code, "severity": severity, "member_count": len(members),
                    "members": members, "summary": case.get("summary", "")}
        cases.append((incident, list(case["expect"])))
    return cases


def judged_on(paths: list[Path]) -> list[dict]:
    """Which data a report was judged on: each file, its number of cases and its content hash."""
    return [{"path": str(path), "cases": len(yaml.safe_load(Path(path).read_text(encoding="utf-8"))),
             "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()} for path in paths]


def _opaque_codes(incident: dict) -> dict:
    """Every alarm code replaced by a vendor number that no SOP lists: only words and device types remain."""
    number = lambda code: f"E{zlib.crc32(code.encode()) % 10_000:04d}"  # noqa: E731
    return {**incident, "root_code": number(incident["root_code"]),
            "members": [{**m, "code": number(m["code"])} for m in incident["members"]]}


def _anonymous(incident: dict) -> dict:
    """Device types removed and device names replaced by numbers: the kind must come from the words."""
    name = lambda device: f"d{zlib.crc32(device.encode()) % 10_000:04d}"  # noqa: E731
    return {**incident, "root_device_type": "device", "root_device": name(incident["root_device"]),
            "members": [{**m, "device_type": "device", "device": name(m["device"])} for m in incident["members"]]}


ABLATIONS = {  # how much each kind of evidence carries: retrieval with one of them taken away
    "opaque codes": _opaque_codes,
    "no summary": lambda incident: {**incident, "summary": ""},
    "no device types": without_device_types,
    "no types or names": lambda incident: _anonymous(incident),
}


def ablations(narration, cases) -> dict:
    report = {}
    for name, change in ABLATIONS.items():
        tops = [(narration.retrieve(change(incident)).sop_ids[:3], expect) for incident, expect in cases]
        report[name] = {"hit_at_1": sum(top[0] in expect for top, expect in tops) / len(tops),
                        "hit_at_3": sum(any(s in expect for s in top) for top, expect in tops) / len(tops)}
    return report


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))] if ordered else 0.0


def _latency(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": statistics.median(values) if values else 0.0,
            "p99_ms": _percentile(values, 99), "max_ms": max(values, default=0.0)}


def evaluate(narration, cases, llm_limit: int = 0, rounds: int = 3) -> dict:
    """Retrieval hits, grounding and latency. Deterministic latency is the best of ``rounds`` per case."""
    hit1 = hit3 = grounded = 0
    misses, det_ms = [], []
    for incident, expect in cases:
        timings = []
        for _ in range(rounds):
            start = time.perf_counter()
            result = narration.deterministic(incident)
            timings.append((time.perf_counter() - start) * 1000)
        det_ms.append(min(timings))
        grounded += result.grounded
        top = result.sop_ids[:3]
        hit1 += top[0] in expect
        hit3 += any(s in expect for s in top)
        if top[0] not in expect:
            misses.append({"incident": incident["incident_id"], "expected": expect, "top3": top})
    report = {"cases": len(cases), "hit_at_1": hit1 / len(cases), "hit_at_3": hit3 / len(cases),
              "deterministic": {"grounded_share": grounded / len(cases), "latency": _latency(det_ms)},
              "misses_at_1": misses, "ablations": ablations(narration, cases)}
    if llm_limit and narration.llm is not None:
        llm_ms, accepted, published_grounded, reasons = [], 0, 0, {}
        for incident, _ in cases[:llm_limit]:
            start = time.perf_counter()
            result = narration.with_llm(incident)
            llm_ms.append((time.perf_counter() - start) * 1000)
            accepted += result.model != "deterministic"
            published_grounded += result.grounded
            for reason in result.rejected[:1]:
                kind = reason.split(":")[0]
                reasons[kind] = reasons.get(kind, 0) + 1
        n = len(llm_ms)
        report["llm"] = {"model": narration.model_name, "narrations": n, "draft_accepted_share": accepted / n,
                         "published_grounded_share": published_grounded / n, "latency": _latency(llm_ms),
                         "first_rejection_reasons": reasons}
    return report


def add_arguments(parser) -> None:
    parser.add_argument("--data", type=Path, nargs="+", default=[DATA],
                        help="labelled incidents (YAML), one or more files judged together")
    parser.add_argument("--cv", type=int, default=0, metavar="FOLDS",
                        help="cross-validate the retriever's settings over FOLDS folds of the data instead")
    parser.add_argument("--cv-by-file", action="store_true",
                        help="cross-validate with one fold per --data file (leave one file out) instead")
    parser.add_argument("--site", type=Path, default=None,
                        help="read alarms with this site file's glossary: (its own alarm and device-type words)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--llm", choices=["auto", "on", "off"], default="auto",
                        help="narrate with the LLM at OPSLOOP_LLM_URL too (auto: when it is set)")
    parser.add_argument("--llm-limit", type=int, default=20, help="incidents narrated by the LLM (it is slow on CPU)")


def main(args) -> int:
    from opsloop.connectors.llm import chat_generator
    from opsloop.config.assets import sop_texts
    from opsloop.config.site import load_site
    from opsloop.models.narrate import Narration
    from opsloop.models.sops import parse_corpus

    settings = args.settings
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per LLM request otherwise
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    use_llm = args.llm == "on" or (args.llm == "auto" and settings.llm_url)
    if use_llm and not settings.llm_url:
        raise SystemExit("opsloop eval narrate: --llm on needs OPSLOOP_LLM_URL")
    generator = chat_generator(settings) if use_llm else None
    corpus = parse_corpus(sop_texts())
    by_file = [load_labelled(path) for path in args.data]
    cases = [case for file_cases in by_file for case in file_cases]
    by_file_cv = getattr(args, "cv_by_file", False)
    if args.cv or by_file_cv:
        groups = [n for n, file_cases in enumerate(by_file) for _ in file_cases] if by_file_cv else None
        report = {"judged_on": judged_on(args.data), **cross_validate(corpus, cases, args.cv or 4, groups=groups)}
        print(json.dumps(report, indent=2) if args.json else render(report))
        return 0
    glossary = load_site(args.site).glossary if getattr(args, "site", None) else None
    narration = Narration(corpus, chat_generator=generator, model_name=settings.llm_model, glossary=glossary)
    report = {"judged_on": judged_on(args.data), **({"glossary_of": str(args.site)} if glossary else {}),
              **evaluate(narration, cases, llm_limit=args.llm_limit if use_llm else 0)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    det = report["deterministic"]
    print(f"opsloop eval narrate: {report['cases']} labelled incidents, {len(narration.corpus)} SOPs; judged on:")
    for data in report["judged_on"]:
        print(f"  {data['path']} ({data['cases']} cases, sha256 {data['sha256'][:12]})")
    if "glossary_of" in report:
        print(f"  alarm words also read with the glossary of {report['glossary_of']}")
    print(f"  retrieval      hit@1 {report['hit_at_1']:.1%}   hit@3 {report['hit_at_3']:.1%}")
    print(f"  deterministic  grounded {det['grounded_share']:.1%}   latency p50 {det['latency']['p50_ms']:.2f} ms"
          f"   p99 {det['latency']['p99_ms']:.2f} ms   max {det['latency']['max_ms']:.2f} ms")
    for name, hits in report["ablations"].items():
        print(f"    {name:<18} hit@1 {hits['hit_at_1']:.1%}   hit@3 {hits['hit_at_3']:.1%}")
    if "llm" in report:
        llm = report["llm"]
        print(f"  llm ({llm['model']})  {llm['narrations']} narrations: drafts accepted {llm['draft_accepted_share']:.1%}"
              f"   published grounded {llm['published_grounded_share']:.1%}   latency p50 {llm['latency']['p50_ms']:.0f} ms"
              f"   p99 {llm['latency']['p99_ms']:.0f} ms")
        for reason, count in llm["first_rejection_reasons"].items():
            print(f"    rejected {count}x: {reason}")
    for miss in report["misses_at_1"]:
        print(f"  miss@1 {miss['incident']}: expected {', '.join(miss['expected'])}, got {', '.join(miss['top3'])}")
    return 0
