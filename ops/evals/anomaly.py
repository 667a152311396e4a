"""`opsloop eval anomaly`: the anomaly detector scored with the NAB method on a NAB-layout directory.

Layout: ``DIR/<family>/<file>.csv`` (``timestamp,value``) and a labels file whose keys
are those paths (``<family>/<file>.csv``) and whose values are lists of
``[start, end]`` window timestamps. ``profiles.json`` is looked for next to the
labels file's folder (NAB ships it at the root) unless ``--profiles`` is given; without
one, NAB's published three profiles are used (and a note says so).

``--fold 0`` or ``--fold 1`` scores one half of the files only: within each family,
files sorted by name alternate between fold 0 and fold 1.

``--lofo`` (leave one family out) estimates the score on families never seen: each
family is scored at the threshold chosen on all the *other* families, and the
held-out families' scores are summed. The detector's hyperparameters were chosen
by that estimate (see models/anomaly.py); the all-in score, whose threshold has
seen every family, is printed beside it. Every report names the data it was judged on.

Each file is run through a fresh detector in time order (score, then learn: the
score never sees the point it judges). Per profile, one threshold is chosen for
the whole corpus (NAB's threshold optimisation); family scores use that threshold.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from river import stats, utils
from river.base import AnomalyDetector

from opsloop.models.anomaly import SeriesDetector
from opsloop.ops.evals.nab import CostMatrix, EMPTY, LabelledSeries, Score, best_threshold, label_series, score_series

#: NAB's three application profiles (its profiles.json), used when no profiles file is found.
NAB_PROFILES = {
    "standard": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.11, "tnWeight": 1.0}},
    "reward_low_FP_rate": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 1.0, "fpWeight": 0.22, "tnWeight": 1.0}},
    "reward_low_FN_rate": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 2.0, "fpWeight": 0.11, "tnWeight": 1.0}},
}
DEFAULT_DATA = Path("../shared/data/nab/data")
DEFAULT_LABELS = Path("../shared/data/nab/labels/combined_windows.json")


@dataclass(frozen=True)
class DataFile:
    path: str  # "<family>/<file>.csv", as in the labels
    timestamps: list[datetime]
    values: list[float]
    windows: list[tuple[datetime, datetime]]

    @property
    def family(self) -> str:
        return self.path.split("/", 1)[0]


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.strip())


def load_corpus(data_dir: Path, labels_file: Path) -> list[DataFile]:
    """Every labelled CSV under ``data_dir``; a labelled file that is missing or unreadable is an error."""
    labels = json.loads(labels_file.read_text())
    files = []
    for path in sorted(labels):
        csv_path = data_dir / path
        if not csv_path.is_file():
            raise FileNotFoundError(f"{csv_path} is labelled in {labels_file} but missing")
        timestamps, values = [], []
        with csv_path.open(newline="") as f:
            for n, row in enumerate(csv.DictReader(f), start=2):
                try:
                    timestamps.append(_time(row["timestamp"]))
                    values.append(float(row["value"]))
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"{csv_path}:{n}: expected timestamp,value: {exc}") from exc
        windows = [(_time(a), _time(b)) for a, b in labels[path]]
        files.append(DataFile(path, timestamps, values, windows))
    return files


class WindowedGaussian(AnomalyDetector):
    """Reference baseline (NAB's "windowed Gaussian" idea): how far out in a Gaussian fitted to the last
    ``window`` values the new value lies: -log10 of its two-sided tail probability / 300 (monotone in
    1 - p, without 1 - p's rounding to 1.0 far out). For comparison only."""

    def __init__(self, window: int = 6400):
        self.window = window
        self._stats = utils.Rolling(stats.Var, window_size=window)

    def score_one(self, x: dict) -> float:
        if self._stats.mean.n < 2:
            return 0.0
        std = math.sqrt(max(self._stats.get(), 0.0))
        if std == 0.0:
            return 0.0 if x["value"] == self._stats.mean.get() else 1.0
        z = abs(x["value"] - self._stats.mean.get()) / std
        return min(1.0, -math.log10(max(math.erfc(z / math.sqrt(2.0)), 1e-300)) / 300.0)

    def learn_one(self, x: dict) -> None:
        self._stats.update(x["value"])


DETECTORS = {"series": SeriesDetector, "gaussian": WindowedGaussian}


def fold(files: list[DataFile], which: int) -> list[DataFile]:
    """Every other file of each family (by name), starting with the first (0) or the second (1)."""
    seen: dict[str, int] = {}
    out = []
    for f in sorted(files, key=lambda f: f.path):
        n = seen[f.family] = seen.get(f.family, -1) + 1
        if n % 2 == which:
            out.append(f)
    return out


def detect(make_detector: Callable[[], AnomalyDetector], values: list[float]) -> list[float]:
    """Anomaly scores of one series from a fresh detector, score before learn."""
    detector = make_detector()
    scores = []
    for v in values:
        x = {"value": v}
        scores.append(detector.score_one(x))
        detector.learn_one(x)
    return scores


def evaluate(files: list[DataFile], scores: dict[str, list[float]], profiles: dict) -> dict:
    """Per profile: the corpus threshold, then the total and per-family scores at it."""
    labelled: dict[str, LabelledSeries] = {f.path: label_series(f.timestamps, f.windows) for f in files}
    report = {}
    for name, profile in profiles.items():
        cost = CostMatrix.from_profile(profile)
        threshold, _ = best_threshold([(labelled[f.path], scores[f.path]) for f in files], cost)
        families: dict[str, Score] = {}
        for f in files:
            families[f.family] = families.get(f.family, EMPTY) + score_series(
                labelled[f.path], scores[f.path], threshold, cost)
        total = sum(families.values(), EMPTY)
        report[name] = {
            "threshold": threshold,
            "total": _row(total, cost),
            "families": {fam: _row(s, cost) for fam, s in sorted(families.items())},
        }
    return report


def evaluate_lofo(files: list[DataFile], scores: dict[str, list[float]], profiles: dict) -> dict:
    """Per profile: each family scored at the threshold chosen on every other family, and their sum."""
    labelled: dict[str, LabelledSeries] = {f.path: label_series(f.timestamps, f.windows) for f in files}
    families = sorted({f.family for f in files})
    report = {}
    for name, profile in profiles.items():
        cost = CostMatrix.from_profile(profile)
        rows, total = {}, EMPTY
        for held_out in families:
            others = [(labelled[f.path], scores[f.path]) for f in files if f.family != held_out]
            threshold, _ = best_threshold(others, cost) if others else (math.inf, 0.0)
            score = sum((score_series(labelled[f.path], scores[f.path], threshold, cost)
                         for f in files if f.family == held_out), EMPTY)
            total = total + score
            rows[held_out] = {"threshold": threshold if math.isfinite(threshold) else None, **_row(score, cost)}
        report[name] = {"families": rows, "total": _row(total, cost)}
    return report


def _row(s: Score, cost: CostMatrix) -> dict:
    norm = s.normalised(cost)
    return {"score": None if norm is None else round(norm, 2), "raw": round(s.raw, 4),
            "windows": s.windows, "tp": s.tp, "fn": s.fn, "fp": s.fp}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="NAB-layout data folder (<family>/<file>.csv)")
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS, help="combined_windows.json")
    parser.add_argument("--profiles", type=Path, help="profiles.json (default: beside the labels folder)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--detector", choices=sorted(DETECTORS), default="series",
                        help="series: the agent's detector (default); gaussian: the windowed-Gaussian baseline")
    parser.add_argument("--fold", type=int, choices=(0, 1), help="score one half of the files (0: tuning, 1: check)")
    parser.add_argument("--lofo", action="store_true",
                        help="leave one family out: each family scored at the threshold chosen on the others")


def main(args: argparse.Namespace) -> int:
    profiles_file = args.profiles or args.labels.resolve().parent.parent / "profiles.json"
    for p in (args.data, args.labels, *([profiles_file] if args.profiles else [])):
        if not p.exists():
            print(f"opsloop eval anomaly: {p} not found")
            return 2
    if profiles_file.exists():
        profiles = json.loads(profiles_file.read_text())
    else:
        print(f"opsloop eval anomaly: no {profiles_file}; using NAB's published profiles", file=sys.stderr)
        profiles = NAB_PROFILES
    files = load_corpus(args.data, args.labels)
    if args.fold is not None:
        files = fold(files, args.fold)
    make = DETECTORS[args.detector]
    scores = {f.path: detect(make, f.values) for f in files}
    report = evaluate(files, scores, profiles)
    judged_on = {"data": str(args.data), "labels": str(args.labels), "files": len(files),
                 "families": {fam: sum(1 for f in files if f.family == fam) for fam in sorted({f.family for f in files})},
                 "fold": args.fold}
    lofo = evaluate_lofo(files, scores, profiles) if args.lofo else None
    if args.json:
        out = {"detector": detector_name(make), "files": len(files), "judged_on": judged_on, "profiles": report}
        if lofo is not None:
            out["lofo"] = lofo
        print(json.dumps(out, indent=2))
    else:
        print(format_report(report, len(files), detector_name(make), judged_on))
        if lofo is not None:
            print(format_lofo(lofo, report))
    return 0


def detector_name(make: Callable[[], AnomalyDetector]) -> str:
    params = make()._get_params()
    return f"{make.__name__}(" + ", ".join(f"{k}={v!r}" for k, v in params.items()) + ")"


def format_report(report: dict, n_files: int, name: str, judged_on: dict | None = None) -> str:
    lines = [f"NAB scores of {name} on {n_files} files "
             "(100 = perfect, 0 = no detections; families without windows: raw score only)"]
    if judged_on is not None:
        families = ", ".join(f"{fam} ({n})" for fam, n in judged_on["families"].items())
        fold_note = "" if judged_on["fold"] is None else f", fold {judged_on['fold']}"
        lines.append(f"judged on {judged_on['data']} with labels {judged_on['labels']}{fold_note}: {families}")
    for name, r in report.items():
        lines.append(f"\n{name} (threshold {r['threshold']:.4f})")
        lines.append(f"  {'family':<24} {'score':>7} {'raw':>9} {'windows':>8} {'tp':>4} {'fn':>4} {'fp':>5}")
        for fam, row in [*r["families"].items(), ("TOTAL", r["total"])]:
            score = "-" if row["score"] is None else f"{row['score']:.1f}"
            lines.append(f"  {fam:<24} {score:>7} {row['raw']:>9.3f} {row['windows']:>8} "
                         f"{row['tp']:>4} {row['fn']:>4} {row['fp']:>5}")
    return "\n".join(lines)


def _fmt(score: float | None) -> str:
    return "-" if score is None else f"{score:.1f}"


def format_lofo(lofo: dict, allin: dict) -> str:
    lines = ["\nleave one family out: each family scored at the threshold chosen on the other families "
             "(the estimate for families never seen)"]
    for name, r in lofo.items():
        total, all_in = r["total"], allin[name]["total"]
        lines.append(f"\n{name}: leave-one-family-out {_fmt(total['score'])}, all-in {_fmt(all_in['score'])}")
        lines.append(f"  {'held-out family':<24} {'threshold':>9} {'score':>7} {'raw':>9} {'windows':>8} "
                     f"{'tp':>4} {'fn':>4} {'fp':>5}")
        for fam, row in [*r["families"].items(), ("TOTAL", {**total, "threshold": None})]:
            threshold = "" if row["threshold"] is None else f"{row['threshold']:.4f}"
            lines.append(f"  {fam:<24} {threshold:>9} {_fmt(row['score']):>7} {row['raw']:>9.3f} {row['windows']:>8} "
                         f"{row['tp']:>4} {row['fn']:>4} {row['fp']:>5}")
    return "\n".join(lines)
