"""The efficiency optimizer: expected cooling power and PUE, learned online, and advice where the plant wastes.

``EfficiencyModel`` is a River-style regressor (``learn_one(x, y)``, ``predict_one(x)``; hyperparameters
in ``__init__``, stored under the same names) of a site's cooling and facility power from its IT load,
the outside temperature and the supply-air setpoint. Two River ``BayesianLinearRegression`` models (exact
online updates, no learning rate to tune) learn on features that follow a chiller plant's physics:
cooling = IT / COP + base, with COP falling as it gets warmer outside and rising with the supply air, so
the features are IT times a quadratic in the outside and supply temperatures, plus a constant.

``EfficiencyAdvisor`` turns each plant sample into advice, by ``decide`` (pure: a reason code and one
plain sentence with the action to take, the kW and the money a day at stake):

- ``cooling_drift``: cooling has drawn ``drift_pct`` or more above what the model expects for this load,
  weather and setpoint (an exponentially weighted mean of the relative residual, weight ``drift_alpha``).
  While it drifts the model stops learning, so a fault is not learnt as normal.
- ``setpoint_low``: the supply-air setpoint is ``setpoint_gap_c`` or more below where the hottest inlet
  would sit at the policy's aim; each degree is worth ``kw_share_per_c`` of the cooling power (a rule of
  thumb: 3 % of chiller COP per degC, chillers about two thirds of cooling power; models/twin.py).
- ``chiller_overstaged``: two or more chillers run, each below ``min_part_load`` of its rated power, and
  one fewer could carry the load; a chiller that far down its part-load curve wastes about
  ``low_load_penalty`` of its power (an estimate, stated as such in the advice).

Each reason is advised at most once per ``repeat_s`` per site. Money is the kW times 24 h times the price
now: the site's ``tariff_by_hour`` when it has one, else the policy's ``cooling.energy_price_per_kwh``.

>>> model = EfficiencyModel()
>>> for t in range(40):
...     it, out = 10_000 + 500 * (t % 7), 12 + t % 11
...     cooling = it / (8 - 0.2 * (out - 18)) + 1500  # a COP of 8 at 18 degC, 0.2 less per degC warmer
...     model.learn_one({"it_kw": it, "outside_c": out, "setpoint_c": 18.0},
...                     {"cooling_kw": cooling, "facility_kw": it + cooling})
>>> {k: round(v, 2) for k, v in model.predict_one({"it_kw": 12_000, "outside_c": 20, "setpoint_c": 18.0}).items()}
{'cooling_kw': 3079.56, 'facility_kw': 15079.4, 'pue': 1.26}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from opsloop.config.policy import CoolingLimits

COOLING_DRIFT = "cooling_drift"
SETPOINT_LOW = "setpoint_low"
CHILLER_OVERSTAGED = "chiller_overstaged"
REASON_CODES = frozenset({COOLING_DRIFT, SETPOINT_LOW, CHILLER_OVERSTAGED})
HOURS_A_DAY = 24


class EfficiencyModel:
    """Expected ``cooling_kw``, ``facility_kw`` and PUE from ``it_kw``, ``outside_c`` and ``setpoint_c``."""

    def __init__(self, alpha: float = 1.0, beta: float = 10_000.0, smoothing: float | None = None,
                 it_scale_kw: float = 10_000.0, outside_ref_c: float = 18.0, setpoint_ref_c: float = 18.0):
        from river.linear_model import BayesianLinearRegression

        self.alpha, self.beta, self.smoothing = alpha, beta, smoothing
        self.it_scale_kw, self.outside_ref_c, self.setpoint_ref_c = it_scale_kw, outside_ref_c, setpoint_ref_c
        self._cooling = BayesianLinearRegression(alpha, beta, smoothing)
        self._facility = BayesianLinearRegression(alpha, beta, smoothing)
        self.n = 0

    def _features(self, x: Mapping) -> dict[str, float]:
        it = x["it_kw"] / self.it_scale_kw
        dt = x["outside_c"] - self.outside_ref_c
        ds = (x.get("setpoint_c") if x.get("setpoint_c") is not None else self.setpoint_ref_c) - self.setpoint_ref_c
        return {"bias": 1.0, "it": it, "it_dt": it * dt, "it_dt2": it * dt * dt / 10, "it_ds": it * ds,
                "it_ds2": it * ds * ds / 10, "it_dt_ds": it * dt * ds / 10}

    def learn_one(self, x: Mapping, y: Mapping) -> None:
        features = self._features(x)
        self._cooling.learn_one(features, y["cooling_kw"] / self.it_scale_kw)
        facility = y.get("facility_kw")
        self._facility.learn_one(features, (x["it_kw"] + y["cooling_kw"] if facility is None else facility)
                                 / self.it_scale_kw)
        self.n += 1

    def predict_one(self, x: Mapping) -> dict[str, float]:
        features = self._features(x)
        cooling = self._cooling.predict_one(features) * self.it_scale_kw
        facility = self._facility.predict_one(features) * self.it_scale_kw
        return {"cooling_kw": cooling, "facility_kw": facility,
                "pue": facility / x["it_kw"] if x["it_kw"] > 0 else float("nan")}


@dataclass(frozen=True)
class PlantSample:
    """One moment of a site's cooling plant, as its meters and BMS read it."""

    ts_ms: int
    site: str
    it_kw: float
    cooling_kw: float
    facility_kw: float
    outside_c: float
    setpoint_c: float | None = None
    inlet_c: Mapping[str, float] = field(default_factory=dict)
    chiller_kw: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Advice:
    reason_code: str
    text: str  # one plain sentence: what is wrong, what it costs, what to do
    device: str  # what to act on: the plant, the setpoint, a chiller
    kw_at_stake: float
    cost_per_day: float
    expected_cooling_kw: float | None = None
    optimal_setpoint_c: float | None = None


def price_now(prices_by_hour: tuple[float, ...] | None, fallback: float, ts_ms: int) -> float:
    """The energy price at ``ts_ms`` (UTC hour of the site's tariff), or ``fallback`` without a tariff.

    >>> price_now(None, 0.15, 0), price_now(tuple(range(24)), 0.15, 5 * 3_600_000)
    (0.15, 5)
    """
    return fallback if not prices_by_hour else prices_by_hour[(ts_ms // 3_600_000) % 24]


def decide(sample: PlantSample, expected_cooling_kw: float | None, drift: float | None, limits: CoolingLimits,
           price_per_kwh: float, rated_kw: Mapping[str, float], drift_pct: float = 0.08,
           setpoint_gap_c: float = 2.0, kw_share_per_c: float = 0.02, min_part_load: float = 0.3,
           low_load_penalty: float = 0.15) -> list[Advice]:
    """Every inefficiency ``sample`` shows, each with its reason code, one sentence, kW and money a day.

    >>> from opsloop.config.policy import CoolingLimits
    >>> limits = CoolingLimits(18, 27, 16, 25, 1.0, 3.0, 1800)
    >>> s = PlantSample(0, "demo", 20_000, 4_400, 24_400, 20.0, 18.0, {"zone-a1": 21.0})
    >>> [a.reason_code for a in decide(s, 4_000, 0.1, limits, 0.15, {})]
    ['cooling_drift', 'setpoint_low']
    >>> print(decide(s, 4_000, 0.1, limits, 0.15, {})[1].text)
    The supply-air setpoint is 18.0 degC but the hottest inlet (zone-a1, 21.0 degC) leaves room up to 22.5 degC: raising it would save about 396 kW (1,426 a day at 0.15 a kWh); raise it in steps of 1 degC, watching the inlets.
    """
    out = []

    def money(kw: float) -> str:
        return f"{kw * HOURS_A_DAY * price_per_kwh:,.0f} a day at {price_per_kwh:g} a kWh"

    if expected_cooling_kw is not None and drift is not None and drift >= drift_pct:
        kw = sample.cooling_kw - expected_cooling_kw
        out.append(Advice(COOLING_DRIFT, f"Cooling draws {sample.cooling_kw:,.0f} kW, {drift:.0%} more than the "
                                         f"{expected_cooling_kw:,.0f} kW expected for {sample.it_kw:,.0f} kW of IT at "
                                         f"{sample.outside_c:.1f} degC outside ({money(kw)}): check the chillers' "
                                         f"condenser approach, fouled coils and valves stuck open.",
                          "cooling", kw, kw * HOURS_A_DAY * price_per_kwh, expected_cooling_kw))
    if sample.setpoint_c is not None and sample.inlet_c:
        hottest = max(sample.inlet_c, key=lambda k: sample.inlet_c[k])
        best = sample.setpoint_c + (limits.inlet_max_c - limits.inlet_margin_c - sample.inlet_c[hottest])
        best = min(max(best, limits.setpoint_min_c), limits.setpoint_max_c)
        gap = best - sample.setpoint_c
        if gap >= setpoint_gap_c:
            kw = gap * kw_share_per_c * sample.cooling_kw
            out.append(Advice(SETPOINT_LOW, f"The supply-air setpoint is {sample.setpoint_c:.1f} degC but the hottest "
                                            f"inlet ({hottest}, {sample.inlet_c[hottest]:.1f} degC) leaves room up to "
                                            f"{best:.1f} degC: raising it would save about {kw:,.0f} kW ({money(kw)}); "
                                            f"raise it in steps of {limits.max_step_c:g} degC, watching the inlets.",
                              "supply-air-setpoint", kw, kw * HOURS_A_DAY * price_per_kwh, expected_cooling_kw, best))
    running = {c: kw for c, kw in sample.chiller_kw.items() if kw > 0 and rated_kw.get(c)}
    if len(running) >= 2:
        loads = {c: kw / rated_kw[c] for c, kw in running.items()}
        spare = min(running, key=lambda c: rated_kw[c])
        rest = sum(rated_kw[c] for c in running if c != spare)
        if max(loads.values()) < min_part_load and sum(running.values()) <= rest:
            kw = low_load_penalty * sum(running.values())
            out.append(Advice(CHILLER_OVERSTAGED, f"{len(running)} chillers run at {max(loads.values()):.0%} of their "
                                                  f"rating or less, and {len(running) - 1} could carry the load: "
                                                  f"stage {spare} off, saving about {kw:,.0f} kW ({money(kw)}, an "
                                                  f"estimate for chillers that far down their part-load curve).",
                              spare, kw, kw * HOURS_A_DAY * price_per_kwh, expected_cooling_kw))
    return out


class EfficiencyAdvisor:
    """One site's efficiency model, drift and advice, sample by sample (``observe``)."""

    def __init__(self, warmup: int = 288, drift_pct: float = 0.08, drift_alpha: float = 0.1,
                 setpoint_gap_c: float = 2.0, kw_share_per_c: float = 0.02, min_part_load: float = 0.3,
                 low_load_penalty: float = 0.15, repeat_s: float = 6 * 3600, model: EfficiencyModel | None = None):
        self.warmup, self.drift_pct, self.drift_alpha = warmup, drift_pct, drift_alpha
        self.setpoint_gap_c, self.kw_share_per_c = setpoint_gap_c, kw_share_per_c
        self.min_part_load, self.low_load_penalty, self.repeat_s = min_part_load, low_load_penalty, repeat_s
        self.model = model or EfficiencyModel()
        self.drift = 0.0
        self._last: dict[str, int] = {}

    def observe(self, sample: PlantSample, limits: CoolingLimits, price_per_kwh: float,
                rated_kw: Mapping[str, float] | None = None) -> list[Advice]:
        x = {"it_kw": sample.it_kw, "outside_c": sample.outside_c, "setpoint_c": sample.setpoint_c}
        expected = self.model.predict_one(x)["cooling_kw"] if self.model.n >= self.warmup else None
        if expected is not None and expected > 0:
            residual = (sample.cooling_kw - expected) / expected
            self.drift += self.drift_alpha * (residual - self.drift)
        drifting = expected is not None and self.drift >= self.drift_pct
        if not drifting:  # a fault is not learnt as normal
            self.model.learn_one(x, {"cooling_kw": sample.cooling_kw, "facility_kw": sample.facility_kw})
        advice = decide(sample, expected, self.drift if expected is not None else None, limits, price_per_kwh,
                        rated_kw or {}, self.drift_pct, self.setpoint_gap_c, self.kw_share_per_c, self.min_part_load,
                        self.low_load_penalty)
        fresh = [a for a in advice if sample.ts_ms - self._last.get(a.reason_code, -10**15) >= self.repeat_s * 1000]
        for a in fresh:
            self._last[a.reason_code] = sample.ts_ms
        return fresh

    @property
    def config(self) -> str:
        m = self.model
        return (f"bayes-linreg(alpha={m.alpha:g}, beta={m.beta:g}) warmup={self.warmup} drift={self.drift_pct:g}/"
                f"{self.drift_alpha:g}")


class SampleAssembler:
    """A site's telemetry points gathered into ``PlantSample``s, one per event time.

    The points of one time arrive together (telemetry.raw is keyed by site, so a site's points stay in
    order); a time is complete when a later one starts. Metrics: ``it_kw`` of PDUs (summed), ``cooling_kw``
    and ``facility_kw`` of the facility meter, ``outside_temp_c``, ``chiller_kw`` per chiller,
    ``inlet_temp_c`` per rack and ``supply_setpoint_c`` of the CRAHs (the highest). A time without IT,
    cooling, facility power and the outside temperature makes no sample.

    >>> asm = SampleAssembler()
    >>> pts = [("pdu-1", "it_kw", 900.0), ("pdu-2", "it_kw", 100.0), ("facility-meter-1", "cooling_kw", 200.0),
    ...        ("facility-meter-1", "facility_kw", 1200.0), ("chiller-1", "outside_temp_c", 21.0)]
    >>> [asm.add({"ts_ms": 0, "site": "s", "device": d, "metric": m, "value": v}) for d, m, v in pts]
    [None, None, None, None, None]
    >>> asm.add({"ts_ms": 60_000, "site": "s", "device": "pdu-1", "metric": "it_kw", "value": 1.0}).it_kw
    1000.0
    """

    METRICS = frozenset({"it_kw", "cooling_kw", "facility_kw", "outside_temp_c", "chiller_kw", "inlet_temp_c",
                         "supply_setpoint_c"})

    def __init__(self):
        self._open: dict[str, tuple[int, dict]] = {}

    def add(self, point: Mapping) -> PlantSample | None:
        """Take one point; the sample of the site's previous time once this point starts a later one."""
        metric = point["metric"]
        if metric not in self.METRICS:
            return None
        site, ts = point["site"], point["ts_ms"]
        done = None
        current = self._open.get(site)
        if current is None or ts > current[0]:
            done = self._sample(site, *current) if current is not None else None
            current = self._open[site] = (ts, {"it": 0.0, "inlet": {}, "chiller": {}})
        elif ts < current[0]:
            return None  # a straggler of a time already closed
        parts, value = current[1], float(point["value"])
        if metric == "it_kw":
            parts["it"] += value
            parts["has_it"] = True
        elif metric == "inlet_temp_c":
            parts["inlet"][point["device"]] = value
        elif metric == "chiller_kw":
            parts["chiller"][point["device"]] = value
        elif metric == "supply_setpoint_c":
            parts["setpoint"] = max(value, parts.get("setpoint", value))
        else:
            parts.setdefault(metric, value)
        return done

    @staticmethod
    def _sample(site: str, ts: int, parts: dict) -> PlantSample | None:
        if not parts.get("has_it") or not all(k in parts for k in ("cooling_kw", "facility_kw", "outside_temp_c")):
            return None
        return PlantSample(ts, site, parts["it"], parts["cooling_kw"], parts["facility_kw"], parts["outside_temp_c"],
                           parts.get("setpoint"), parts["inlet"], parts["chiller"])


def advice_record(sample: PlantSample, advice: Advice, price_per_kwh: float, model: str) -> dict:
    """The ``EfficiencyAdvice`` record of one piece of advice."""
    return {"ts_ms": sample.ts_ms, "site": sample.site, "device": advice.device, "reason_code": advice.reason_code,
            "text": advice.text, "kw_at_stake": advice.kw_at_stake, "cost_per_day": advice.cost_per_day,
            "price_per_kwh": price_per_kwh, "it_kw": sample.it_kw, "cooling_kw": sample.cooling_kw,
            "pue": sample.facility_kw / sample.it_kw if sample.it_kw > 0 else 0.0,
            "expected_cooling_kw": advice.expected_cooling_kw, "setpoint_c": sample.setpoint_c,
            "optimal_setpoint_c": advice.optimal_setpoint_c, "model": model}
