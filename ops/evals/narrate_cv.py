"""Cross-validation of the retriever's settings: how well settings chosen on some incidents do on others.

The cases are dealt into ``folds`` folds by position (case ``i`` in fold
``i mod folds``), or, given ``groups``, one fold per group (``--cv-by-file``:
leave one labelled file out). For each fold, every setting in ``GRID`` is
scored on the other folds and the best is judged on the held-out one; the
pooled held-out hits are the estimate for incidents the settings were not
chosen on. A setting is scored on each incident as written and with its
device types removed (sites name their types their own way, or not at all),
by hit@1 + hit@3 averaged over both. Ties keep the shipped defaults.

Settings that only weigh the retriever's evidence are scored without
retrieving again: the evidence of each incident is gathered once per query
setting and weighed for every setting at once, as ``SopRetriever.weigh`` does.
The upstream cause is part of that evidence, so the alarms it reads alone are
read with the shipped weights whatever setting is scored.
"""

from __future__ import annotations

import itertools
from dataclasses import fields
from pathlib import Path

import numpy as np

from opsloop.models.incident_query import IncidentQueryBuilder
from opsloop.models.narrate import Narration
from opsloop.models.sop_retrieval import Evidence, SopRetriever

GRID = {
    "code_weight": [0.6, 1.0, 1.5],
    "phrase_weight": [0.3, 0.6, 1.0],
    "device_weight": [0.2, 0.4, 0.8],
    "member_weight": [0.15, 0.3, 0.6],
    "lead_weight": [0.0, 0.3, 0.6, 1.0],
    "fanout_weight": [0.0, 0.5, 1.0],
    "cause_weight": [0.0, 0.5, 1.0, 1.25, 1.5, 2.0, 3.0],
    "said_weight": [1, 2],
    "vote_weight": [0.0, 0.25, 0.5, 1.0],
}
QUERY_SETTINGS = {"said_weight"}
# Settings that weigh the evidence only (``SopRetriever.weigh``).
WEIGHTS = {"code_weight", "phrase_weight", "device_weight", "member_weight", "lead_weight", "fanout_weight",
           "cause_weight", "vote_weight", "emergency_weight", "shared_cause_weight"}


def without_device_types(incident: dict) -> dict:
    return {**incident, "root_device_type": "device",
            "members": [{**m, "device_type": "device"} for m in incident["members"]]}


VARIANTS = {"as written": lambda incident: incident, "no device types": without_device_types}


def settings_grid(grid: dict) -> list[dict]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def defaults(corpus: dict, grid: dict) -> dict:
    query, retriever = IncidentQueryBuilder(), SopRetriever(corpus)
    return {name: getattr(query if name in QUERY_SETTINGS else retriever, name) for name in grid}


def narration_with(corpus: dict, settings: dict) -> Narration:
    narration = Narration(corpus)
    narration.query = IncidentQueryBuilder(**{k: v for k, v in settings.items() if k in QUERY_SETTINGS})
    narration.retriever = SopRetriever(corpus, **{k: v for k, v in settings.items() if k not in QUERY_SETTINGS})
    return narration


def hits(narration: Narration, cases: list) -> dict[str, list[tuple[bool, bool]]]:
    """(hit@1, hit@3) of every case, per variant."""
    out = {}
    for name, change in VARIANTS.items():
        tops = [(narration.retrieve(change(incident)).sop_ids[:3], expect) for incident, expect in cases]
        out[name] = [(top[0] in expect, any(s in expect for s in top)) for top, expect in tops]
    return out


def _tally(found, fold_of: np.ndarray, folds: int) -> np.ndarray:
    """Hits@1 and @3 of one setting and variant per fold (folds x 2): all cross-validation keeps of it."""
    found = np.asarray(found, dtype=float)
    return np.stack([np.bincount(fold_of, weights=found[:, k], minlength=folds) for k in (0, 1)], axis=1)


def _rates(counts: np.ndarray, cases: int) -> dict:
    """``counts`` (variants x 2) as hit rates over ``cases``."""
    return {name: {"hit_at_1": float(counts[v, 0]) / cases, "hit_at_3": float(counts[v, 1]) / cases}
            for v, name in enumerate(VARIANTS)}


def _weighed(corpus: dict, cases: list, settings_list: list[dict]):
    """(setting index, variant, hits (cases x 2 bool)) of every setting, each incident retrieved once per query
    setting; yielded one at a time, so a large grid is never held whole."""
    sids = sorted(corpus)  # columns in id order: a stable sort breaks ties by id, as ``ranking`` does
    expected = np.array([[sid in expect for sid in sids] for _, expect in cases], dtype=bool)
    by_query: dict[tuple, list[int]] = {}
    for n, settings in enumerate(settings_list):
        by_query.setdefault(tuple(sorted((k, v) for k, v in settings.items() if k in QUERY_SETTINGS)), []).append(n)
    for query_settings, members in by_query.items():
        narration = narration_with(corpus, dict(query_settings))
        for name, change in VARIANTS.items():
            evidence = [narration.retriever.evidence(**narration.query.run(incident=change(incident)))
                        for incident, _ in cases]
            field = {f.name: np.array([[float(getattr(e[sid], f.name)) for sid in sids] for e in evidence])
                     for f in fields(Evidence)}
            for n in members:
                w = {k: getattr(narration.retriever, k) for k in WEIGHTS} | {
                    k: v for k, v in settings_list[n].items() if k in WEIGHTS}
                code = np.where(field["code"] > 0, w["code_weight"],
                                np.maximum(w["code_weight"] * field["code_overlap"],
                                           w["phrase_weight"] * field["phrase"]))
                score = (field["bm25"] + code + w["device_weight"] * field["device"]
                         + w["member_weight"] * field["members"] + w["lead_weight"] * field["lead"]
                         + w["fanout_weight"] * field["fan_out"] + w["cause_weight"] * field["cause"]
                         + w["vote_weight"] * field["vote"] + w["emergency_weight"] * field["emergency"]
                         + w["shared_cause_weight"] * field["shared_cause"])
                top = np.argsort(-score, axis=1, kind="stable")[:, :3]
                found = np.take_along_axis(expected, top, axis=1)
                yield n, name, np.stack([found[:, 0], found.any(axis=1)], axis=1)


def weighed_hits(corpus: dict, cases: list, settings_list: list[dict]) -> list[dict]:
    """``hits`` of every setting (query settings and weights only), each incident retrieved once per query setting."""
    out: list[dict] = [{} for _ in settings_list]
    for n, name, found in _weighed(corpus, cases, settings_list):
        out[n][name] = [(bool(h1), bool(h3)) for h1, h3 in found]
    return out


def cross_validate(corpus: dict, cases: list, folds: int = 4, grid: dict | None = None,
                   groups: list[int] | None = None) -> dict:
    grid, shipped = settings_grid(grid or GRID), defaults(corpus, grid or GRID)
    if shipped not in grid:
        raise ValueError(f"the grid must hold the shipped settings {shipped}: ties keep them")
    fold_of = np.array(groups if groups is not None else [i % folds for i in range(len(cases))], dtype=int)
    folds = int(fold_of.max()) + 1
    in_fold = np.bincount(fold_of, minlength=folds)
    tallies = np.zeros((len(grid), len(VARIANTS), folds, 2))
    if all(k in WEIGHTS | QUERY_SETTINGS for k in shipped):
        variant = {name: v for v, name in enumerate(VARIANTS)}
        for n, name, found in _weighed(corpus, cases, grid):
            tallies[n, variant[name]] = _tally(found, fold_of, folds)
    else:
        for n, settings in enumerate(grid):
            case_hits = hits(narration_with(corpus, settings), cases)
            tallies[n] = [_tally(case_hits[name], fold_of, folds) for name in VARIANTS]
    shipped_n = grid.index(shipped)

    def best(train: np.ndarray) -> int:
        """The setting with the best objective over the ``train`` folds; ties keep the shipped one, then the first."""
        objective = tallies[:, :, train, :].sum(axis=(1, 2, 3))
        top = objective.max()
        if np.isclose(objective[shipped_n], top):
            return shipped_n
        return int(np.flatnonzero(np.isclose(objective, top))[0])

    held_out = np.zeros((len(VARIANTS), 2))
    per_fold = []
    for fold in range(folds):
        chosen = best(np.arange(folds) != fold)
        held_out += tallies[chosen, :, fold, :]
        per_fold.append({"fold": fold, "cases": int(in_fold[fold]), "chosen": grid[chosen],
                         "held_out": _rates(tallies[chosen, :, fold, :], int(in_fold[fold]))})
    everyone = np.ones(folds, dtype=bool)
    all_in = best(everyone)
    return {"cases": len(cases), "folds": folds, "by_group": groups is not None, "grid_size": len(grid),
            "per_fold": per_fold,
            "held_out": _rates(held_out, len(cases)),
            "shipped": {"settings": shipped, "all_in": _rates(tallies[shipped_n].sum(axis=1), len(cases))},
            "best_all_in": {"settings": grid[all_in], "all_in": _rates(tallies[all_in].sum(axis=1), len(cases))}}


def render(report: dict) -> str:
    def rates(r: dict) -> str:
        return "   ".join(f"{name}: hit@1 {v['hit_at_1']:.1%} hit@3 {v['hit_at_3']:.1%}" for name, v in r.items())

    how = "--cv-by-file" if report.get("by_group") else f"--cv {report['folds']}"
    lines = [f"opsloop eval narrate {how}: {report['cases']} labelled incidents, "
             f"{report['grid_size']} settings; judged on:"]
    lines += [f"  {d['path']} ({d['cases']} cases, sha256 {d['sha256'][:12]})" for d in report["judged_on"]]
    for fold in report["per_fold"]:
        left_out = f"{Path(report['judged_on'][fold['fold']]['path']).name}, " if report.get("by_group") else ""
        lines.append(f"  fold {fold['fold']} ({left_out}{fold['cases']} held out): chosen {fold['chosen']}")
        lines.append(f"    held out  {rates(fold['held_out'])}")
    lines.append(f"  pooled held out  {rates(report['held_out'])}")
    lines.append(f"  shipped {report['shipped']['settings']}")
    lines.append(f"    all in  {rates(report['shipped']['all_in'])}")
    lines.append(f"  best all in {report['best_all_in']['settings']}")
    lines.append(f"    all in  {rates(report['best_all_in']['all_in'])}")
    return "\n".join(lines)
