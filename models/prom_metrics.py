"""Prometheus samples to opsloop points and alarms: which metric names are read, in which unit, on
which device. Pure: the scrape and remote-write connectors parse their wire formats and hand over
``Sample``s; the clock (a poll's time) is passed in.

A ``MetricMap`` says what one Prometheus metric becomes: the opsloop metric and unit, a scale
(W to kW, fraction to %), whether it is a counter read as a per-second rate, how the series of one
device combine (sum, max or mean), label values a series must have, and the source-side device
name, formatted from the series' labels and the scrape target (``{target}/gpu{gpu}``). The
config's ``devices`` maps that name to a site device.

>>> norm = Normalizer(DEFAULT_MAPPING, {"10.0.0.5:8000": "llm-1"}, site="demo", source="prometheus:vllm")
>>> labels = {"engine": "0", "model_name": "m"}
>>> out = norm.normalize([Sample("vllm:num_requests_running", labels, 4.0, None),
...                       Sample("vllm:kv_cache_usage_perc", labels, 0.25, None),
...                       Sample("vllm:generation_tokens_total", labels, 100.0, None)], 1_000, "10.0.0.5:8000")
>>> [(p["metric"], p["value"], p["unit"]) for p in out.points]
[('llm_requests_running', 4.0, 'requests'), ('kv_cache_usage_pct', 25.0, '%')]
>>> out = norm.normalize([Sample("vllm:generation_tokens_total", labels, 300.0, None)], 3_000, "10.0.0.5:8000")
>>> [(p["metric"], p["value"], p["unit"]) for p in out.points]  # (300 - 100) tokens over 2 s
[('generation_tokens_per_s', 100.0, 'tokens/s')]
>>> out = norm.normalize([Sample("vllm:num_requests_running", labels, float("nan"), None)], 4_000, "10.0.0.5:8000")
>>> [(r.kind, r.reason) for r in out.rejects]
[('invalid', "vllm:num_requests_running on '10.0.0.5:8000' is NaN")]
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from typing import Iterable, Mapping, NamedTuple

from opsloop.models.records import alarm, telemetry_point


class Sample(NamedTuple):
    name: str
    labels: Mapping[str, str]
    value: float
    ts_ms: int | None  # the sample's own timestamp; None: the poll's time

    def line(self) -> bytes:
        """The sample as an exposition line (the dead letter's raw value)."""
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(self.labels.items()))
        stamp = "" if self.ts_ms is None else f" {self.ts_ms}"
        return f"{self.name}{{{labels}}} {self.value!r}{stamp}".encode()


@dataclass(frozen=True)
class MetricMap:
    metric: str
    unit: str
    scale: float = 1.0
    rate: bool = False  # a counter: the per-second increase, counter resets handled
    combine: str = "sum"  # how a device's series combine: sum, max or mean
    where: Mapping[str, str] = field(default_factory=dict)  # label values a series must have to count
    device: str = "{target}"  # the source-side device name, formatted from labels and target
    device_type: str = "node"  # when the site file does not type the device
    xid: bool = False  # the value is the last NVIDIA XID error code: a new non-zero code raises an Alarm


COMBINES = ("sum", "max", "mean")
_GPU = "{target}/gpu{gpu}"

# node-exporter (Debian prometheus-node-exporter 1.5 names)
NODE = {
    "node_load1": MetricMap("load_1m", "processes"),
    "node_memory_MemAvailable_bytes": MetricMap("mem_available_gb", "GB", 1e-9),
    "node_memory_MemTotal_bytes": MetricMap("mem_total_gb", "GB", 1e-9),
    "node_cpu_seconds_total": MetricMap("cpu_idle_cores", "cores", rate=True, where={"mode": "idle"}),
    "node_network_receive_bytes_total": MetricMap("net_rx_mbps", "Mbit/s", 8e-6, rate=True),
    "node_network_transmit_bytes_total": MetricMap("net_tx_mbps", "Mbit/s", 8e-6, rate=True),
    "node_hwmon_temp_celsius": MetricMap("hwmon_temp_c", "degC", combine="max"),
    "node_hwmon_power_average_watt": MetricMap("hwmon_power_kw", "kW", 1e-3),
    "node_rapl_package_joules_total": MetricMap("rapl_power_kw", "kW", 1e-3, rate=True),
}

# vLLM's /metrics (0.6 to 0.32 names; gpu_cache_usage_perc before the v1 engine renamed it)
_LLM = dict(device_type="llm_server")
VLLM = {
    "vllm:num_requests_running": MetricMap("llm_requests_running", "requests", **_LLM),
    "vllm:num_requests_waiting": MetricMap("llm_requests_waiting", "requests", **_LLM),
    "vllm:kv_cache_usage_perc": MetricMap("kv_cache_usage_pct", "%", 100.0, combine="max", **_LLM),
    "vllm:gpu_cache_usage_perc": MetricMap("kv_cache_usage_pct", "%", 100.0, combine="max", **_LLM),
    "vllm:num_preemptions_total": MetricMap("llm_preemptions_per_s", "preemptions/s", rate=True, **_LLM),
    "vllm:prompt_tokens_total": MetricMap("prompt_tokens_per_s", "tokens/s", rate=True, **_LLM),
    "vllm:generation_tokens_total": MetricMap("generation_tokens_per_s", "tokens/s", rate=True, **_LLM),
}

# NVIDIA dcgm-exporter (default counters); one device per GPU
_G = dict(device=_GPU, device_type="gpu")
DCGM = {
    "DCGM_FI_DEV_POWER_USAGE": MetricMap("gpu_power_kw", "kW", 1e-3, **_G),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": MetricMap("gpu_energy_power_kw", "kW", 1e-6, rate=True, **_G),  # mJ
    "DCGM_FI_DEV_GPU_TEMP": MetricMap("gpu_temp_c", "degC", **_G),
    "DCGM_FI_DEV_MEMORY_TEMP": MetricMap("gpu_mem_temp_c", "degC", **_G),
    "DCGM_FI_DEV_GPU_UTIL": MetricMap("gpu_util_pct", "%", **_G),
    "DCGM_FI_DEV_MEM_COPY_UTIL": MetricMap("gpu_mem_copy_util_pct", "%", **_G),
    "DCGM_FI_DEV_SM_CLOCK": MetricMap("sm_clock_mhz", "MHz", **_G),
    "DCGM_FI_DEV_MEM_CLOCK": MetricMap("mem_clock_mhz", "MHz", **_G),
    "DCGM_FI_DEV_FB_USED": MetricMap("fb_used_gb", "GB", 1.048576e-3, **_G),  # MiB
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": MetricMap("ecc_sbe_count", "errors", **_G),
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": MetricMap("ecc_dbe_count", "errors", **_G),
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": MetricMap("rows_remapped_correctable", "rows", **_G),
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": MetricMap("rows_remapped_uncorrectable", "rows", **_G),
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": MetricMap("row_remap_failure", "flag", combine="max", **_G),
    "DCGM_FI_DEV_XID_ERRORS": MetricMap("xid_last", "code", xid=True, **_G),
    # µs throttled for heat, a counter: its rate over 1e6 µs/s is the share of time throttled
    "DCGM_FI_DEV_THERMAL_VIOLATION": MetricMap("thermal_throttle_pct", "%", 1e-4, rate=True, **_G),
}

MAPPINGS = {"node": NODE, "vllm": VLLM, "dcgm": DCGM}
DEFAULT_MAPPING = {**NODE, **VLLM, **DCGM}

# XIDs NVIDIA documents as needing a reset or a drained node; the rest are warnings
_CRITICAL_XIDS = {48, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120}


def xid_severity(code: int) -> str:
    return "critical" if code in _CRITICAL_XIDS else "major"


def metric_map(name: str, spec: Mapping, where: str) -> MetricMap:
    """A ``MetricMap`` from a config entry; ``ValueError`` names what is wrong."""
    unknown = set(spec) - set(MetricMap.__dataclass_fields__)
    if unknown or "metric" not in spec or "unit" not in spec:
        raise ValueError(f"{where}: metrics[{name!r}] needs metric and unit"
                         + (f"; unknown key(s) {', '.join(sorted(unknown))}" if unknown else ""))
    if spec.get("combine", "sum") not in COMBINES:
        raise ValueError(f"{where}: metrics[{name!r}].combine must be one of {', '.join(COMBINES)}")
    return MetricMap(**{**spec, "scale": float(spec.get("scale", 1.0)), "where": dict(spec.get("where") or {})})


@dataclass(frozen=True)
class RelabelRule:
    """Prometheus-style keep/drop: the ``source_labels`` values joined by ``separator`` must match
    ``regex`` in full (keep) or must not (drop)."""

    action: str
    regex: str
    source_labels: tuple[str, ...] = ("__name__",)
    separator: str = ";"

    def __post_init__(self):
        if self.action not in ("keep", "drop"):
            raise ValueError(f"relabel action must be keep or drop, got {self.action!r}")
        object.__setattr__(self, "_pattern", re.compile(self.regex))

    def admits(self, name: str, labels: Mapping[str, str]) -> bool:
        value = self.separator.join(name if k == "__name__" else labels.get(k, "") for k in self.source_labels)
        return (self._pattern.fullmatch(value) is not None) == (self.action == "keep")


class CounterRates:
    """Per-series counter to per-second rate; a counter that went down was reset (the process
    restarted): its new value is what it counted since, as Prometheus' rate() reads it."""

    def __init__(self, max_series: int = 1_000_000):
        self.max_series = max_series
        self.last: dict[tuple, tuple[int, float]] = {}
        self.resets = 0

    def update(self, series: tuple, ts_ms: int, value: float) -> float | None:
        before = self.last.get(series)
        if before is not None and ts_ms <= before[0]:
            return None  # the same sample again (an unchanged timestamp): no new interval
        if before is None and len(self.last) >= self.max_series:
            self.last.clear()  # series churn: every counter restarts its rate rather than memory growing
        self.last[series] = (ts_ms, value)
        if before is None:
            return None
        increase = value - before[1]
        if increase < 0:
            self.resets += 1
            increase = value
        return increase / ((ts_ms - before[0]) / 1000.0)


@dataclass(frozen=True)
class Bad:
    raw: bytes
    kind: str  # DeadLetterKind: decode, invalid or unknown
    reason: str


@dataclass
class Normalized:
    points: list[dict] = field(default_factory=list)
    alarms: list[dict] = field(default_factory=list)
    rejects: list[Bad] = field(default_factory=list)
    filtered: int = 0  # samples not selected (not kept, relabelled away): not errors


def _combine(how: str, values: list[float]) -> float:
    if how == "max":
        return max(values)
    total = math.fsum(values)
    return total / len(values) if how == "mean" else total


class Route(NamedTuple):
    """Where the samples of one series go: ``skip`` (not ``selected``, or not the ``where`` labels),
    ``error`` (a reject's kind and reason), or a mapping and the site ``device`` (None: the
    source-side name ``external`` is not mapped). ``rate_key``: a counter's series key."""

    name: str
    labels: Mapping[str, str]
    target: str
    spec: MetricMap | None = None
    external: str = ""
    device: str | None = None
    device_type: str = ""
    rate_key: tuple | None = None
    skip: bool = False
    error: tuple[str, str] | None = None
    selected: bool = True  # False: relabelled away or not kept (skipped unread); True with skip: not its where labels


class Batch:
    """The samples of one poll or request, taken one by one with their series' ``Route``; ``done``
    combines each device's series and returns the points, alarms and rejects."""

    def __init__(self, norm: "Normalizer", now_ms: int):
        self.norm = norm
        self.now_ms = now_ms
        self.out = Normalized()
        self.groups: dict[tuple[str, str, int], tuple[Route, list[float]]] = {}

    def take(self, route: Route, value: float, ts_ms: int | None) -> None:
        spec = route.spec
        if spec is None or route.device is None or not (value - value == 0.0):  # the rare paths; NaN/inf fail x-x==0
            self._odd(route, value, ts_ms)
            return
        ts = self.now_ms if ts_ms is None else ts_ms
        if spec.xid:
            self.norm._xid(self.out, route.device, spec, int(value), ts, route.labels)
            return
        if route.rate_key is not None:
            value = self.norm.rates.update(route.rate_key, ts, value)
            if value is None:
                return
        key = (route.device, spec.metric, ts)
        group = self.groups.get(key)
        if group is None:
            self.groups[key] = (route, [value * spec.scale])
        else:
            group[1].append(value * spec.scale)

    def _odd(self, route: Route, value: float, ts_ms: int | None) -> None:
        out = self.out
        if route.skip:
            out.filtered += 1
            return
        line = Sample(route.name, route.labels, value, ts_ms).line
        if route.error is not None:
            out.rejects.append(Bad(line(), *route.error))
        elif not math.isfinite(value):
            what = "NaN" if math.isnan(value) else "infinite"
            out.rejects.append(Bad(line(), "invalid", f"{route.name} on {route.external!r} is {what}"))
        else:
            out.rejects.append(Bad(line(), "unknown", f"{route.name}: source name {route.external!r} is not "
                                                      f"mapped to a site device (devices:)"))

    def done(self) -> Normalized:
        norm, out = self.norm, self.out
        for (device, metric, ts), (route, values) in self.groups.items():
            spec = route.spec
            out.points.append(telemetry_point(ts, norm.site, device, route.device_type, metric,
                                              values[0] if len(values) == 1 else _combine(spec.combine, values),
                                              spec.unit, norm.source))
        self.groups = {}
        return out


class Normalizer:
    """Samples of one source to points, XID alarms and rejects; holds counter and XID state.

    ``keep`` (a regex on metric names) selects what is read: by default the mapped names, so a
    scrape's other metrics are skipped; a kept name that has no mapping is rejected as unknown.
    ``relabel`` rules run first. ``device_types`` gives each site device's type.
    """

    def __init__(self, mapping: Mapping[str, MetricMap], devices: Mapping[str, str], site: str, source: str,
                 keep: str | None = None, relabel: Iterable[RelabelRule] = (),
                 device_types: Mapping[str, str] | None = None):
        self.mapping = dict(mapping)
        self.devices = devices
        self.site = site
        self.source = source
        self.keep = keep
        self._keep = re.compile(keep) if keep else None
        self.relabel = tuple(relabel)
        self.device_types = dict(device_types or {})
        self.rates = CounterRates()
        self.last_xid: dict[str, int] = {}
        self._fields: dict[str, tuple[str, ...]] = {}  # a device template's label names
        self._names: dict[tuple, str] = {}  # (template, target, label values) -> device name, formatted once

    def mapped_name(self, name: str) -> str | None:
        """The mapping's key for a sample name: a parser may add ``_total`` to a counter's samples
        (prometheus_client does, for exporters such as DCGM's that declare counters without it)."""
        if name in self.mapping:
            return name
        if name.endswith("_total") and name[:-6] in self.mapping:
            return name[:-6]
        return None

    def selected(self, name: str, labels: Mapping[str, str]) -> bool:
        if self.relabel and not all(rule.admits(name, labels) for rule in self.relabel):
            return False
        return self._keep.fullmatch(name) is not None if self._keep else self.mapped_name(name) is not None

    def _external(self, template: str, labels: Mapping[str, str], target: str) -> str:
        """The source-side device name; ``target`` (the scrape target) or else the series' ``instance``."""
        target = target or labels.get("instance", "")
        if template == "{target}":
            return target
        fields = self._fields.get(template)
        if fields is None:
            fields = self._fields[template] = tuple(f for _, f, _, _ in string.Formatter().parse(template) if f)
        key = (template, target, *(labels[f] for f in fields if f not in ("target", "instance")))
        external = self._names.get(key)
        if external is None:
            if len(self._names) > 100_000:
                self._names.clear()
            external = self._names[key] = template.format_map({**labels, "instance": target, "target": target})
        return external

    def route(self, name: str, labels: Mapping[str, str], target: str = "") -> Route:
        """Where every sample of one series goes (its name and labels decide it, not its value):
        a receiver may keep it per series and hand it to ``take`` for each new sample."""
        if not self.selected(name, labels):
            return Route(name, labels, target, skip=True, selected=False)
        mapped = self.mapped_name(name)
        if mapped is None:
            return Route(name, labels, target, error=("unknown", f"metric {name!r} is kept but not mapped "
                                                                  f"(add it under options.metrics)"))
        spec = self.mapping[mapped]
        if any(labels.get(k) != v for k, v in spec.where.items()):
            return Route(name, labels, target, skip=True)
        try:
            external = self._external(spec.device, labels, target)
        except KeyError as exc:
            return Route(name, labels, target, error=("decode", f"{name}: no label {exc} to name the device "
                                                                f"({spec.device})"))
        device = self.devices.get(external)
        return Route(name, labels, target, spec, external, device, self._type(device, spec) if device else "",
                     (mapped, target, tuple(sorted(labels.items()))) if spec.rate else None)

    def normalize(self, samples: Iterable[Sample], now_ms: int, target: str = "",
                  selected: bool = False) -> Normalized:
        """``selected``: the caller has already applied ``selected`` to every sample."""
        batch = Batch(self, now_ms)
        for sample in samples:
            if not selected and not self.selected(sample.name, sample.labels):
                batch.out.filtered += 1
                continue
            batch.take(self.route(sample.name, sample.labels, target), sample.value, sample.ts_ms)
        return batch.done()

    def _type(self, device: str, spec: MetricMap) -> str:
        return self.device_types.get(device, spec.device_type)

    def _xid(self, out: Normalized, device: str, spec: MetricMap, code: int, ts: int, labels: Mapping) -> None:
        before = self.last_xid.get(device, 0)
        self.last_xid[device] = code
        if code == 0 or code == before:
            return  # no XID, or the one already raised (the exporter repeats the last code)
        attrs = {k: str(labels[k]) for k in ("gpu", "UUID", "Hostname", "modelName", "err_code") if k in labels}
        out.alarms.append(alarm(ts, self.site, device, self._type(device, spec), self.source, f"XID_{code}",
                                f"NVIDIA XID {code} reported by {device}", severity=xid_severity(code),
                                attributes=attrs))
