"""The LLM-serving lever, pure: balancer weights for a shift, the serving SLO check, the kW an action sheds.

Two actions steer the OpenAI-compatible servers behind the balancer (HAProxy in
tests, in front of vLLM in production):

* ``llm_shift`` moves ``params.shift_pct`` % of the large model's present share of
  the traffic to the small model, by server weights (``shifted_weights``);
* ``llm_cap`` caps the concurrent requests of ``params.servers`` at
  ``params.maxconn``; requests over the cap wait in the balancer's queue instead
  of growing the server's batch (the batch-size lever vLLM has no runtime knob for).

While one holds, the balancer's own Prometheus metrics are checked against the
policy's SLO (``slo_verdict``); the sink reverts the action on a breach.

>>> shifted_weights(100, 0, 50)
(50, 50)
>>> shifted_weights(1, 1, 50)
(25, 75)
>>> load = BalancerLoad(queue=0, queue_time_s=0.0, connect_time_s=0.001, response_time_s=0.4)
>>> slo_verdict(load, slo_ttfb_s=2.0, slo_queue=8)
SloVerdict(code='within_slo', text='first byte in 0.401 s (SLO 2 s), 0 queued (SLO 8)')
>>> slo_verdict(BalancerLoad(12, 1.5, 0.001, 0.4), slo_ttfb_s=2.0, slo_queue=8).code
'slo_breach'
>>> round(shift_shed_kw(tokens_per_s=2000, shift_pct=50, large_params_b=70, small_params_b=8), 3)
3.1
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

WEIGHT_SCALE = 100  # shifted weights are shares in percent (HAProxy takes 0..256)

# Reason codes of the SLO check (the sink's revert carries them):
WITHIN_SLO = "within_slo"
SLO_BREACH = "slo_breach"  # first-byte time or queue above the policy's SLO
SLO_UNKNOWN = "slo_unknown"  # the balancer's metrics could not be read: the guard cannot see, so it reverts
SLO_CODES = frozenset({WITHIN_SLO, SLO_BREACH, SLO_UNKNOWN})


def shifted_weights(large_weight: int, small_weight: int, shift_pct: float) -> tuple[int, int]:
    """(large, small) weights that send ``shift_pct`` % of the large server's present share to the small one.

    The result is in shares of ``WEIGHT_SCALE``; weights both zero (no traffic) raise ``ValueError``.

    >>> shifted_weights(100, 0, 0)
    (100, 0)
    >>> shifted_weights(30, 70, 100)
    (0, 100)
    """
    total = large_weight + small_weight
    if total <= 0 or large_weight < 0 or small_weight < 0:
        raise ValueError(f"weights {large_weight} and {small_weight} send no traffic to shift")
    if not 0 <= shift_pct <= 100:
        raise ValueError(f"shift of {shift_pct:g}% is not between 0 and 100")
    large_share = large_weight / total * (1 - shift_pct / 100)
    large = round(WEIGHT_SCALE * large_share)
    return large, WEIGHT_SCALE - large


@dataclass(frozen=True)
class BalancerLoad:
    """One backend as the balancer's metrics show it: queued requests now and the averages of its last requests.

    HAProxy keeps the time averages over the last 1024 requests and exposes no percentile, so the
    first-byte time is their sum: waiting in the queue, connecting, and the server's time to its first
    response byte (headers; for a streamed completion the server sends them with its first token).
    """

    queue: float
    queue_time_s: float
    connect_time_s: float
    response_time_s: float
    p99_ttft_s: float | None = None  # vLLM's p99 time to first token since the last check, where vLLM serves

    @property
    def ttfb_s(self) -> float:
        return self.queue_time_s + self.connect_time_s + self.response_time_s


# HAProxy 2.x Prometheus exporter names (label ``proxy`` is the backend).
_BACKEND_METRICS = {"haproxy_backend_current_queue": "queue",
                    "haproxy_backend_queue_time_average_seconds": "queue_time_s",
                    "haproxy_backend_connect_time_average_seconds": "connect_time_s",
                    "haproxy_backend_response_time_average_seconds": "response_time_s"}


def balancer_load(samples: Iterable[tuple[str, Mapping[str, str], float]], backend: str) -> BalancerLoad | None:
    """The backend's load from parsed exporter samples ``(name, labels, value)``; None when any is missing.

    Requests queued on one server (``haproxy_server_current_queue``) count with the backend's own queue.

    >>> samples = [("haproxy_backend_current_queue", {"proxy": "llm"}, 2.0),
    ...            ("haproxy_server_current_queue", {"proxy": "llm", "server": "large"}, 3.0),
    ...            ("haproxy_backend_queue_time_average_seconds", {"proxy": "llm"}, 0.1),
    ...            ("haproxy_backend_connect_time_average_seconds", {"proxy": "llm"}, 0.0),
    ...            ("haproxy_backend_response_time_average_seconds", {"proxy": "llm"}, 0.3)]
    >>> balancer_load(samples, "llm")
    BalancerLoad(queue=5.0, queue_time_s=0.1, connect_time_s=0.0, response_time_s=0.3, p99_ttft_s=None)
    >>> balancer_load(samples[:2], "llm") is None
    True
    """
    found: dict[str, float] = {}
    server_queue = 0.0
    for name, labels, value in samples:
        if labels.get("proxy") != backend:
            continue
        if name == "haproxy_server_current_queue":
            server_queue += value
        elif name in _BACKEND_METRICS:
            found[_BACKEND_METRICS[name]] = value
    if len(found) < len(_BACKEND_METRICS):
        return None
    return BalancerLoad(queue=found["queue"] + server_queue, queue_time_s=found["queue_time_s"],
                        connect_time_s=found["connect_time_s"], response_time_s=found["response_time_s"])


@dataclass(frozen=True)
class SloVerdict:
    code: str
    text: str

    @property
    def breached(self) -> bool:
        return self.code != WITHIN_SLO


def slo_verdict(load: BalancerLoad | None, slo_ttfb_s: float, slo_queue: float) -> SloVerdict:
    """Is serving within the SLO? A load that could not be read is no proof that it is.

    >>> slo_verdict(None, 2.0, 8).code
    'slo_unknown'
    >>> slo_verdict(BalancerLoad(0, 0.0, 0.0, 2.5), 2.0, 8).text
    'first byte in 2.5 s, over the SLO of 2 s'
    """
    if load is None:
        return SloVerdict(SLO_UNKNOWN, "the balancer's metrics could not be read")
    over = []
    if load.ttfb_s > slo_ttfb_s:
        over.append(f"first byte in {load.ttfb_s:.3g} s, over the SLO of {slo_ttfb_s:g} s")
    if load.p99_ttft_s is not None and load.p99_ttft_s > slo_ttfb_s:
        over.append(f"vLLM's p99 time to first token {load.p99_ttft_s:.3g} s, over the SLO of {slo_ttfb_s:g} s")
    if load.queue > slo_queue:
        over.append(f"{load.queue:g} requests queued, over the SLO of {slo_queue:g}")
    if over:
        return SloVerdict(SLO_BREACH, "; ".join(over))
    return SloVerdict(WITHIN_SLO, f"first byte in {load.ttfb_s:.3g} s (SLO {slo_ttfb_s:g} s), "
                                  f"{load.queue:g} queued (SLO {slo_queue:g})")


_WITHIN_TEXT = re.compile(r"first byte in (?P<ttfb>[0-9.e+-]+) s \(SLO (?P<slo_ttfb>[0-9.e+-]+) s\), "
                          r"(?P<queue>[0-9.e+-]+) queued \(SLO (?P<slo_queue>[0-9.e+-]+)\)")


@dataclass(frozen=True)
class SloMargin:
    """How far serving was from the SLO when a within-SLO verdict was given (the LLM sink's verification)."""

    ttfb_s: float
    slo_ttfb_s: float
    queue: float
    slo_queue: float

    @property
    def ttfb_margin_s(self) -> float:
        return self.slo_ttfb_s - self.ttfb_s

    @property
    def queue_margin(self) -> float:
        return self.slo_queue - self.queue


def slo_margin(text: str | None) -> SloMargin | None:
    """The margin a within-SLO sentence of ``slo_verdict`` states (the LLM sink publishes it as its verification
    result's observed effect); None for any other sentence.

    >>> m = slo_margin(slo_verdict(BalancerLoad(2, 0.1, 0.0, 0.4), 2.0, 8).text)
    >>> round(m.ttfb_margin_s, 3), m.queue_margin
    (1.5, 6.0)
    >>> slo_margin(slo_verdict(BalancerLoad(0, 0.0, 0.0, 2.5), 2.0, 8).text) is None
    True
    """
    found = _WITHIN_TEXT.search(text or "")
    if found is None:
        return None
    return SloMargin(*(float(found[k]) for k in ("ttfb", "slo_ttfb", "queue", "slo_queue")))


VLLM_TTFT = "vllm:time_to_first_token_seconds_bucket"


def histogram_buckets(samples: Iterable[tuple[str, Mapping[str, str], float]], name: str = VLLM_TTFT
                      ) -> dict[float, float]:
    """A cumulative Prometheus histogram's counts by upper bound (``le``), summed over its other labels.

    >>> histogram_buckets([(VLLM_TTFT, {"le": "0.5", "model_name": "a"}, 3.0), (VLLM_TTFT, {"le": "+Inf"}, 4.0)])
    {0.5: 3.0, inf: 4.0}
    """
    buckets: dict[float, float] = {}
    for sample_name, labels, value in samples:
        if sample_name == name and "le" in labels:
            bound = float(labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    return buckets


def interval_quantile(q: float, before: Mapping[float, float], now: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of what a cumulative histogram observed between two scrapes, interpolated within its
    bucket as Prometheus' ``histogram_quantile`` does; None without observations (or after a counter reset).
    A quantile in the open top bucket is reported as the highest finite bound.

    >>> interval_quantile(0.99, {0.1: 0, 0.5: 0, 1.0: 0, float("inf"): 0},
    ...                   {0.1: 50, 0.5: 90, 1.0: 100, float("inf"): 100})
    0.95
    >>> interval_quantile(0.99, {0.1: 5, float("inf"): 5}, {0.1: 5, float("inf"): 5}) is None
    True
    """
    counts = sorted((bound, now[bound] - before.get(bound, 0.0)) for bound in now)
    if not counts or any(c < 0 for _, c in counts) or counts[-1][1] <= 0:
        return None
    rank, lower, below = q * counts[-1][1], 0.0, 0.0
    finite = [b for b, _ in counts if b != float("inf")]
    for bound, cumulative in counts:
        if cumulative >= rank:
            if bound == float("inf"):
                return finite[-1] if finite else None
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return None


@dataclass(frozen=True)
class EnergyPerToken:
    """Energy of one generated token, linear in the model's size: ``joules_per_token_per_bparam`` × billions.

    Source of the default: Samsi et al., "From Words to Watts: Benchmarking the Energy Costs of Large
    Language Model Inference" (IEEE HPEC 2023), measured about 3 to 4 J per output token for LLaMA-65B on
    NVIDIA V100 and A100 GPUs, about 0.05 J per token per billion parameters; decoding is bound by reading
    the weights, so energy grows roughly with their size. It is the GPUs' dynamic energy only (idle draw
    stays whatever the traffic), an order of magnitude to plan with: replace it with J/token measured
    from DCGM's power and the servers' token counters where GPUs are present.

    >>> EnergyPerToken().joules_per_token(65)
    3.25
    """

    joules_per_token_per_bparam: float = 0.05

    def joules_per_token(self, params_b: float) -> float:
        return self.joules_per_token_per_bparam * params_b


def shift_shed_kw(tokens_per_s: float, shift_pct: float, large_params_b: float, small_params_b: float,
                  energy: EnergyPerToken = EnergyPerToken()) -> float:
    """kW shed by generating ``shift_pct`` % of the large model's ``tokens_per_s`` on the small model instead."""
    moved = tokens_per_s * shift_pct / 100
    saved_j = energy.joules_per_token(large_params_b) - energy.joules_per_token(small_params_b)
    return max(0.0, moved * saved_j / 1000)


def cap_shed_kw(tokens_per_s: float, concurrency: float, maxconn: int, params_b: float,
                energy: EnergyPerToken = EnergyPerToken()) -> float:
    """kW shed by capping a server at ``maxconn`` concurrent requests where ``concurrency`` run now.

    First order: below saturation a server's token rate grows with the requests it runs, so the cap
    defers that share of its tokens to later (they wait in the balancer's queue).

    >>> round(cap_shed_kw(tokens_per_s=1000, concurrency=16, maxconn=8, params_b=70), 3)
    1.75
    >>> cap_shed_kw(1000, 4, 8, 70)
    0.0
    """
    if concurrency <= 0:
        return 0.0
    deferred = tokens_per_s * max(0.0, 1 - maxconn / concurrency)
    return deferred * energy.joules_per_token(params_b) / 1000


def lever_plan(kind: str, params: Mapping[str, str], present: Mapping[str, tuple[int, int]]
               ) -> tuple[list[list], list[list]]:
    """(changes, undo) for an ``llm_shift`` or ``llm_cap``: ``[setting, server, value]`` rows, in order.

    ``present``: server → (weight, maxconn) now (maxconn 0: no limit). A shift raises the small server
    before it lowers the large one, and its undo restores the large one first, so no moment sends
    traffic nowhere. A cap never raises a lower limit already there. Raises ``ValueError`` when a
    server it names is not in ``present``.

    >>> lever_plan("llm_shift", {"shift_pct": "50"}, {"large": (100, 64), "small": (0, 64)})
    ([['weight', 'small', 50], ['weight', 'large', 50]], [['weight', 'large', 100], ['weight', 'small', 0]])
    >>> lever_plan("llm_cap", {"servers": "large,small", "maxconn": "4"}, {"large": (100, 64), "small": (0, 2)})
    ([['maxconn', 'large', 4], ['maxconn', 'small', 2]], [['maxconn', 'large', 64], ['maxconn', 'small', 2]])
    """
    if kind == "llm_shift":
        names = [params.get("large", "large"), params.get("small", "small")]
    else:
        names = [s.strip() for s in params.get("servers", "").split(",") if s.strip()]
    missing = [n for n in names if n not in present]
    if missing:
        raise ValueError(f"the balancer has no server {', '.join(repr(m[:40]) for m in missing)} "
                         f"(it has {', '.join(sorted(present))})")
    if kind == "llm_shift":
        large, small = names
        new_large, new_small = shifted_weights(present[large][0], present[small][0], float(params["shift_pct"]))
        return ([["weight", small, new_small], ["weight", large, new_large]],
                [["weight", large, present[large][0]], ["weight", small, present[small][0]]])
    cap = int(params["maxconn"])
    changes = [["maxconn", n, cap if present[n][1] == 0 else min(cap, present[n][1])] for n in names]
    return changes, [["maxconn", n, present[n][1]] for n in names]


def applied(changes: Iterable[list], present: Mapping[str, tuple[int, int]]) -> bool:
    """Does the balancer read back every ``[setting, server, value]``?

    >>> applied([["weight", "small", 50]], {"small": (50, 64)}), applied([["maxconn", "small", 4]], {"small": (50, 64)})
    (True, False)
    """
    column = {"weight": 0, "maxconn": 1}
    return all(server in present and present[server][column[setting]] == value for setting, server, value in changes)
