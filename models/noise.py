"""Online alarm-noise score learned from operator labels (River).

Operators label alarms ``alarm_noise`` or ``alarm_actionable`` on ``operator.feedback``,
by fingerprint. The features are what a fingerprint tells (source, device type, device,
code), one-hot encoded, into an online logistic regression. Until it has seen labels of
both kinds the score is ``prior``. The score is a probability; ``is_noise`` flags it
against ``threshold``. Nothing is ever dropped because of it.

>>> scorer = NoiseScorer()
>>> alarm = {"source": "bms", "device_type": "rack", "device": "r1", "code": "TEMP_INLET_WARN"}
>>> ups_fault = {"source": "bms", "device_type": "ups", "device": "ups-1", "code": "PWR_UPS_FAULT"}
>>> scorer.score_one(alarm)
0.1
>>> for _ in range(20):
...     scorer = scorer.learn_one(alarm, True)
...     scorer = scorer.learn_one(ups_fault, False)
>>> scorer.score_one(alarm) > 0.7, scorer.score_one(ups_fault) < 0.3
(True, True)
"""

from __future__ import annotations

from typing import Mapping

from river import linear_model, optim, preprocessing

FEATURES = ("source", "device_type", "device", "code")


class NoiseScorer:
    def __init__(self, threshold: float = 0.7, prior: float = 0.1, learning_rate: float = 0.1):
        self.threshold = threshold
        self.prior = prior
        self.learning_rate = learning_rate
        self.model = preprocessing.OneHotEncoder() | linear_model.LogisticRegression(
            optimizer=optim.SGD(learning_rate))
        self.labels = {True: 0, False: 0}

    @staticmethod
    def features(alarm: Mapping) -> dict[str, str]:
        return {name: str(alarm[name]) for name in FEATURES if alarm.get(name)}

    def learn_one(self, alarm: Mapping, is_noise: bool) -> "NoiseScorer":
        self.model.learn_one(self.features(alarm), bool(is_noise))
        self.labels[bool(is_noise)] += 1
        return self

    def score_one(self, alarm: Mapping) -> float:
        if not (self.labels[True] and self.labels[False]):
            return self.prior
        return float(self.model.predict_proba_one(self.features(alarm)).get(True, 0.0))

    def is_noise(self, score: float) -> bool:
        return score >= self.threshold
