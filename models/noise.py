"""Online alarm-noise score learned from operator labels (River).

Operators label alarms ``alarm_noise`` or ``alarm_actionable`` on ``operator.feedback``,
by fingerprint. The features are what a fingerprint tells (source, device type, device,
code), one-hot encoded, into an online logistic regression. Until it has seen labels of
both kinds the score is ``prior``. The score is a probability; ``is_noise`` flags it
against ``threshold``, and ``reason_code`` says why in one code. Nothing is ever dropped
because of it.

A River classifier: ``learn_one(x, y)`` (x an alarm, y True for noise) returns nothing,
``predict_proba_one`` and ``predict_one`` (the flag) answer, and the hyperparameters
are the ``__init__`` arguments, kept under the same names.

>>> scorer = NoiseScorer()
>>> alarm = {"source": "bms", "device_type": "rack", "device": "r1", "code": "TEMP_INLET_WARN"}
>>> ups_fault = {"source": "bms", "device_type": "ups", "device": "ups-1", "code": "PWR_UPS_FAULT"}
>>> scorer.score_one(alarm), scorer.reason_code(scorer.score_one(alarm))
(0.1, 'no_labels')
>>> for _ in range(20):
...     scorer.learn_one(alarm, True)
...     scorer.learn_one(ups_fault, False)
>>> scorer.score_one(alarm) > 0.7, scorer.score_one(ups_fault) < 0.3
(True, True)
>>> scorer.predict_one(alarm), scorer.reason_code(scorer.score_one(alarm))
(True, 'noise')
>>> scorer.predict_one(ups_fault), scorer.reason_code(scorer.score_one(ups_fault))
(False, 'actionable')
"""

from __future__ import annotations

from typing import Mapping

from river import base, linear_model, optim, preprocessing

FEATURES = ("source", "device_type", "device", "code")

# Reason codes of the noise flag:
NOISE = "noise"  # the learned score is at or over the threshold
ACTIONABLE = "actionable"  # the learned score is under the threshold
NO_LABELS = "no_labels"  # no labels of both kinds yet: the score is the prior
REASON_CODES = frozenset({NOISE, ACTIONABLE, NO_LABELS})


class NoiseScorer(base.Classifier):
    def __init__(self, threshold: float = 0.7, prior: float = 0.1, learning_rate: float = 0.1):
        self.threshold = threshold
        self.prior = prior
        self.learning_rate = learning_rate
        self._model = preprocessing.OneHotEncoder() | linear_model.LogisticRegression(
            optimizer=optim.SGD(learning_rate))
        self._labels = {True: 0, False: 0}

    @staticmethod
    def features(alarm: Mapping) -> dict[str, str]:
        return {name: str(alarm[name]) for name in FEATURES if alarm.get(name)}

    @property
    def learned(self) -> bool:
        """Whether labels of both kinds have been seen (before that, every score is the prior)."""
        return bool(self._labels[True] and self._labels[False])

    def learn_one(self, x: Mapping, y: bool) -> None:
        """Learn an operator's label ``y`` (True: noise) of the alarm ``x``."""
        self._model.learn_one(self.features(x), bool(y))
        self._labels[bool(y)] += 1

    def score_one(self, x: Mapping) -> float:
        """The probability that the alarm ``x`` is noise."""
        if not self.learned:
            return self.prior
        return float(self._model.predict_proba_one(self.features(x)).get(True, 0.0))

    def predict_proba_one(self, x: Mapping) -> dict[bool, float]:
        score = self.score_one(x)
        return {True: score, False: 1.0 - score}

    def predict_one(self, x: Mapping) -> bool:
        """The noise flag: the score against ``threshold`` (not the more likely class)."""
        return self.is_noise(self.score_one(x))

    def is_noise(self, score: float) -> bool:
        return score >= self.threshold

    def reason_code(self, score: float) -> str:
        """Why ``score`` flags what it flags: one of ``REASON_CODES``."""
        if not self.learned:
            return NO_LABELS
        return NOISE if self.is_noise(score) else ACTIONABLE
