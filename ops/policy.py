"""Loading the guard-rail policy file, and `opsloop policy check FILE`."""

from __future__ import annotations

from pathlib import Path

import yaml

from models.policy import Policy, PolicyError, parse_policy


def load_policy(path: Path | str) -> Policy:
    """Read and validate a policy file; raises ``PolicyError`` naming the file and every problem."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PolicyError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([f"{path}: not valid YAML: {exc}"]) from None
    try:
        return parse_policy(doc)
    except PolicyError as exc:
        raise PolicyError([f"{path}: {p}" for p in exc.problems]) from None


def _budget_span(policy: Policy) -> str:
    window = policy.slurm.budget_window_s
    return f"per {window:g} s per site" if window > 0 else "per action (no slurm.budget_window_s)"


def check(path: Path | str) -> int:
    """Print a verdict on a policy file; 0 when valid, 1 otherwise."""
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        print(exc)
        return 1
    modes = ", ".join(f"{kind}={rule.mode}" for kind, rule in policy.rules.items())
    print(f"{path}: valid policy {policy.label}; modes: {modes}; "
          f"protected partitions: {', '.join(policy.slurm.protected_partitions) or 'none'}; "
          f"Slurm budgets {_budget_span(policy)}")
    return 0
