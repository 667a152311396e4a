"""`opsloop eval rul`: the generator follows Wang et al.'s model and the scoring can fail."""

from __future__ import annotations

import pytest

from opsloop.models.rul import DAY_MS
from opsloop.ops.cli import main
from opsloop.ops.evals import rul

pytestmark = pytest.mark.unit


def test_generated_cells_age_faster_hot_and_are_repeatable():
    cells = rul.generate(cells=1, noise=0.0, seed=1)
    life = {t.condition: t.eol_day for t in cells}
    assert len(cells) == 16 and life["2C 60°C"] < life["2C 45°C"] < life["2C 25°C"]
    assert life["10C 25°C"] < life["0.5C 25°C"]  # the exponent's 370.3 c term
    assert all(t.readings[t.eol_day] <= rul.MIN_SOH <= t.readings[t.eol_day - 1] for t in cells)  # 0.1 % steps
    assert rul.generate(cells=1, seed=1) == rul.generate(cells=1, seed=1)


def test_a_wrong_forecast_scores_as_an_error_and_a_miss():
    from opsloop.models.rul import Forecast

    late = Forecast(200 * DAY_MS, 190 * DAY_MS, 210 * DAY_MS, 0.8, 90.0, 100.0, -0.1, 50, 49.0, 50 * DAY_MS)
    made = rul.Made(late, day=50, eol_day=100)
    assert made.score(0.0) == rul.Score(2.0, False)  # 100 days late on 50 left
    assert made.score(2.0).covered  # a wide enough band holds it
    assert rul.Made(None, 50, 100).score(0.1) == rul.Score(1.0, False)


def test_the_cli_runs_the_leave_one_condition_out_evaluation(capsys):
    code = main(["eval", "rul", "--cells", "1", "--seed", "3"])
    out = capsys.readouterr().out
    assert "leave-one-condition-out" in out and "at 50% of life: median |date error|" in out
    assert code in (0, 1) and ("targets at 50%" in out)
