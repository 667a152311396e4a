"""The efficiency optimizer: expected cooling learnt online, drift held as drift, advice with its price."""

import pytest

from opsloop.config.policy import ASHRAE_COOLING as LIMITS
from opsloop.models.efficiency import (CHILLER_OVERSTAGED, COOLING_DRIFT, EfficiencyAdvisor, EfficiencyModel,
                                       PlantSample, decide, price_now)

pytestmark = pytest.mark.unit


def plant(t: int, fouled: bool = False) -> PlantSample:
    it, out = 20_000 + 3_000 * ((t % 24) / 24), 14 + 8 * ((t * 7) % 24) / 24
    cop = (8.0 - 0.25 * (out - 18)) * (0.85 if fouled else 1.0)
    cooling = it / cop + 1500
    return PlantSample(t * 300_000, "s", it, cooling, it + cooling, out, 22.0, {"zone-a1": 25.0})


def test_the_model_keeps_its_hyperparameters_and_predicts_what_it_learnt():
    model = EfficiencyModel(alpha=2.0, beta=500.0)
    assert (model.alpha, model.beta, model.smoothing) == (2.0, 500.0, None)
    for t in range(300):
        s = plant(t)
        model.learn_one({"it_kw": s.it_kw, "outside_c": s.outside_c, "setpoint_c": 22.0},
                        {"cooling_kw": s.cooling_kw, "facility_kw": s.facility_kw})
    s = plant(301)
    expected = model.predict_one({"it_kw": s.it_kw, "outside_c": s.outside_c, "setpoint_c": 22.0})
    assert expected["cooling_kw"] == pytest.approx(s.cooling_kw, rel=0.01)
    assert expected["pue"] == pytest.approx(s.facility_kw / s.it_kw, rel=0.01)


def test_a_fouled_plant_is_advised_as_drift_once_and_the_model_does_not_learn_it_as_normal():
    advisor = EfficiencyAdvisor(warmup=100, repeat_s=10**9)
    before = [a for t in range(300) for a in advisor.observe(plant(t), LIMITS, 0.2)]
    assert before == []  # no false alarm on the healthy plant
    learnt = advisor.model.n
    after = [a for t in range(300, 400) for a in advisor.observe(plant(t, fouled=True), LIMITS, 0.2)]
    assert [a.reason_code for a in after] == [COOLING_DRIFT]
    assert after[0].kw_at_stake > 300 and after[0].cost_per_day == pytest.approx(after[0].kw_at_stake * 24 * 0.2)
    assert advisor.model.n < learnt + 100  # the fouled samples past the threshold were not learnt


def test_two_chillers_idling_where_one_would_do_are_advised_to_stage_one_off():
    s = PlantSample(0, "s", 5_000, 1_400, 6_400, 18.0, None, {}, {"chiller-1": 600.0, "chiller-2": 600.0})
    advice = decide(s, None, None, LIMITS, 0.1, {"chiller-1": 5000, "chiller-2": 5000})
    assert [a.reason_code for a in advice] == [CHILLER_OVERSTAGED]
    assert advice[0].device == "chiller-1" and advice[0].kw_at_stake == pytest.approx(0.15 * 1200)
    assert "stage chiller-1 off" in advice[0].text
    busy = PlantSample(0, "s", 5_000, 4_000, 9_000, 18.0, None, {}, {"chiller-1": 2000.0, "chiller-2": 2000.0})
    assert decide(busy, None, None, LIMITS, 0.1, {"chiller-1": 5000, "chiller-2": 5000}) == []


def test_the_price_is_the_site_tariff_of_the_hour_else_the_policy_fallback():
    prices = tuple(0.1 + 0.01 * h for h in range(24))
    assert price_now(prices, 0.15, 13 * 3_600_000 + 5) == pytest.approx(0.23)
    assert price_now(None, 0.15, 0) == 0.15
