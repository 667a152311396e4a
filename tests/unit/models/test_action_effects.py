import pytest

from opsloop.models.action_effects import ActionsInForce

pytestmark = pytest.mark.unit


def verdict(action_id: str, kind: str = "pcs_discharge", verdict: str = "approved", site: str = "s",
            target: str = "ess-1", created_ms: int = 0, expires_ms: int = 600_000) -> dict:
    return {"verdict": verdict, "action": {"action_id": action_id, "kind": kind, "site": site, "target": target,
                                           "created_ms": created_ms, "expires_ms": expires_ms}}


def test_only_an_approved_battery_action_explains_and_only_its_ess_and_the_sites_grid_meters():
    effects = ActionsInForce(settle_s=0)
    effects.learn_one(verdict("refused", verdict="rejected"))
    effects.learn_one(verdict("hold", kind="slurm_hold", target="batch"))
    assert effects.explains("s", "ess-1", "ess", 60_000) is None
    assert effects.explains("s", "batch", "partition", 60_000) is None
    effects.learn_one(verdict("a"))
    assert effects.explains("s", "ess-1", "ess", 60_000) == "a"
    assert effects.explains("s", "grid-2", "grid_meter", 60_000) == "a"
    assert effects.explains("s", "ess-2", "ess", 60_000) is None  # another battery
    assert effects.explains("t", "ess-1", "ess", 60_000) is None  # another site
    assert effects.explains("s", "ess-1", "ess", 600_001) is None  # expired, no settle time


def test_the_settle_time_extends_an_action_and_the_latest_one_names_the_change():
    effects = ActionsInForce(settle_s=300)
    effects.learn_one(verdict("a", expires_ms=600_000))
    effects.learn_one(verdict("b", created_ms=500_000, expires_ms=1_200_000))
    assert effects.explains("s", "ess-1", "ess", 550_000) == "b"
    assert effects.explains("s", "ess-1", "ess", 1_400_000) == "b"
    assert effects.explains("s", "ess-1", "ess", 1_500_001) is None


def test_actions_long_over_are_forgotten():
    effects = ActionsInForce(settle_s=0)
    for i in range(1000):
        effects.learn_one(verdict(f"a{i}", created_ms=i * 1_000_000, expires_ms=i * 1_000_000 + 600_000))
    assert len(effects._sites["s"]) == 1
