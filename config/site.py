"""One site file (config/sites/*.yaml) read once into a frozen, validated ``Site``.

Every consumer gets the parsed ``Site``: the peaks loop, the guard, the PCS sink and
simulator, the replay source, the local Slurm and the alarm topology. The ESS defaults
live here and nowhere else (``EssSpec``). A bad entry raises ``SiteError`` naming the
file and the entry, e.g. ``demo.yaml: ess[0].capacity_kwh: expected a positive number,
got 'x'``. The ``topology:`` and ``alarm_chains:`` blocks are kept as read-only data;
``models.topology.Topology.from_site`` checks their graph.

>>> site = load_site(DEMO_SITE)
>>> site.id, site.ess[0].capacity_kwh, site.ess[0].round_trip_efficiency, site.slurm_partitions
('demo', 10000.0, 0.9, ('train-a', 'train-b', 'batch', 'inference'))
>>> try:
...     parse_site({"site": {"id": "x"}, "ess": [{"id": "e", "capacity_kwh": "x"}]}, "x.yaml")
... except SiteError as exc:
...     print(exc)
x.yaml: ess[0].capacity_kwh: expected a positive number, got 'x'
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

import yaml

from opsloop.config import strict_yaml

from opsloop.config.assets import DEMO_SITE

BILLING_PERIODS = ("month", "week", "day")
ONE_WORD = re.compile(r"[^\W_]+")  # one word of a site glossary; the query builder finds alarm words the same way
TOP_KEYS = ("site", "pdus", "gpu_pods", "ess", "devices", "replay", "topology", "alarm_chains", "flexible_load",
            "glossary")
SITE_KEYS = ("id", "name", "timezone", "grid_import_cap_kw", "tariff", "tariff_by_hour", "demand_billing_period",
             "country")
STREAM_KEYS = ("device", "device_type", "metric", "unit", "column", "scale", "offset", "constant")


class SiteError(ValueError):
    """A site file is unusable; the message names the file and the entry (a huge value is cut, never echoed
    whole)."""

    def __init__(self, message: str):
        super().__init__(message if len(message) <= 600 else f"{message[:600]}… ({len(message) - 600} more "
                                                              f"characters)")


@dataclass(frozen=True)
class EssSpec:
    """An energy storage system and its PCS. The defaults here are the only ones."""

    id: str
    capacity_kwh: float  # nameplate; usable = nameplate x state of health
    pcs_charge_kw: float
    pcs_discharge_kw: float
    round_trip_efficiency: float = 0.90  # split evenly: sqrt each way
    reserve_soc_pct: float = 10.0  # never discharge below this
    soh_pct: float = 100.0


@dataclass(frozen=True)
class Pdu:
    id: str
    hall: str | None
    share: float  # of the site's IT load


@dataclass(frozen=True)
class Device:
    """Any other device the site declares (meters, collectors, nodes a live source reads)."""

    id: str
    type: str
    description: str = ""


@dataclass(frozen=True)
class GpuPod:
    id: str
    hall: str | None
    nodes: int
    gpus_per_node: int
    slurm_partition: str | None
    it_share: float  # of the site's IT load
    description: str = ""
    kw_per_gpu: float = 0.7  # a busy GPU with its share of the node (fans, CPUs, NICs): a job's estimated kW

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class TrainingLoad:
    """Slurm training jobs the levers may touch: data-parallel ones shrink, the rest are held whole."""

    share: float  # of the site's load
    partition: str  # where they run (the policy must let it be touched)
    data_parallel: float = 0.5  # share of it in data-parallel jobs, which may release nodes (slurm_shrink)
    min_replicas: float = 0.5  # a data-parallel job keeps at least this share of its replicas
    node_kw: float = 5.6  # nodes are released whole
    job_kw: float = 45.0  # tensor- and expert-parallel jobs are held whole: one job's draw


@dataclass(frozen=True)
class LlmServingLoad:
    """LLM serving behind the balancer: what a shift to the small model and a concurrency cap save."""

    share: float  # of the site's load
    backend: str = "llm"  # the balancer's backend (the actions' target)
    shift_pct: float = 50.0  # the largest shift the planner proposes (the policy's llm.max_shift_pct bounds it)
    shift_saving: float = 0.3  # share of the serving load saved at that shift
    cap_servers: tuple[str, ...] = ("large",)
    cap_maxconn: int = 4  # concurrent requests per server under a cap
    cap_saving: float = 0.1  # share of the serving load saved by the cap


@dataclass(frozen=True)
class ClockLoad:
    """GPUs whose clocks may be locked lower (load no other lever touches)."""

    share: float  # of the site's load
    saving: float = 0.15  # share of their power saved at the locked clock
    throughput_loss: float = 0.05  # share of their throughput lost


@dataclass(frozen=True)
class FlexibleLoad:
    """What the levers beside the battery can act on (``models.levers``); shares of the site's load,
    each part counted once (together at most 1)."""

    training: TrainingLoad | None = None
    llm_serving: LlmServingLoad | None = None
    clock_lock: ClockLoad | None = None


@dataclass(frozen=True)
class Glossary:
    """The site's own alarm words, read in the English words of the SOPs before the shipped glossary
    (``models/alarm_glossary.py``): ``words`` maps a word of its alarm texts to English words ("napajanje":
    "power supply"), ``kinds`` a device-type word or acronym of its inventory to the equipment kind the SOPs name
    ("ABP": "ups"). Keys are single words, matched without case or accents."""

    words: Mapping[str, str]
    kinds: Mapping[str, str]


@dataclass(frozen=True)
class ReplayStream:
    """One replayed metric: value = column x scale + offset, or a constant."""

    device: str
    device_type: str
    metric: str
    unit: str
    column: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    constant: float | None = None


@dataclass(frozen=True)
class ReplaySpec:
    site: str
    time_column: str
    streams: tuple[ReplayStream, ...]

    @property
    def columns(self) -> list[str]:
        return sorted({s.column for s in self.streams if s.column is not None})


@dataclass(frozen=True)
class Site:
    id: str
    source: str  # the file it was read from, for messages
    name: str = ""
    timezone: str = "UTC"
    grid_import_cap_kw: float | None = None  # contracted import limit
    tariff: str = ""  # what the tariff is, in words
    prices_by_hour: tuple[float, ...] | None = None  # energy price per hour of day (24 values)
    demand_billing_period: str = "month"  # the period whose highest import is billed
    country: str | None = None  # ISO code, optionally with a subdivision ("GB-ENG"): whose public holidays apply
    pdus: tuple[Pdu, ...] = ()
    gpu_pods: tuple[GpuPod, ...] = ()
    ess: tuple[EssSpec, ...] = ()
    devices: tuple[Device, ...] = ()
    replay: ReplaySpec | None = None
    topology: Mapping | None = None  # read-only; models.topology builds the graph
    alarm_chains: Mapping | None = None  # alarm code prefix -> chain
    flexible_load: FlexibleLoad | None = None  # what the levers beside the battery may shed
    glossary: Glossary | None = None  # the site's own alarm and device-type words, for narration

    def holiday_calendar(self):
        """The site's public holidays (a ``holidays`` package calendar, years filled in on demand; it tests
        ``date in calendar``), or None when the file names no country."""
        if self.country is None:
            return None
        import holidays

        code, _, subdivision = self.country.partition("-")
        return holidays.country_holidays(code, subdiv=subdivision or None)

    @property
    def slurm_partitions(self) -> tuple[str, ...]:
        """Slurm partitions named by the GPU pods, in file order, each once."""
        return tuple(dict.fromkeys(p.slurm_partition for p in self.gpu_pods if p.slurm_partition))

    def error(self, where: str, why: str) -> SiteError:
        """An error about this site's ``where`` entry, for consumers that need a block it lacks."""
        return SiteError(f"{self.source}: {where}: {why}")


def load_site(path: Path | str) -> Site:
    """Read and validate one site file."""
    try:
        doc = strict_yaml.load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SiteError(f"{path}: cannot read: {exc}") from exc
    return parse_site(doc, str(path))


def load_sites(directory: Path | str, known: Iterable[Site] = ()) -> dict[str, Site]:
    """Site id -> site, for ``known`` sites and every ``*.yaml`` in ``directory`` (name order).

    A known site's file is not read again; two files with the same site id are an error.
    """
    sites = {site.id: site for site in known}
    read = {Path(site.source).resolve() for site in sites.values()}
    for path in sorted(Path(directory).glob("*.yaml")):
        if path.resolve() in read:
            continue
        site = load_site(path)
        if site.id in sites:
            raise SiteError(f"{path}: site.id: {site.id!r} is also the id of {sites[site.id].source}")
        sites[site.id] = site
    return sites


def parse_site(doc: Any, source: str) -> Site:
    """The ``Site`` of an already-read YAML document; ``source`` names it in errors."""
    check = _Checker(source)
    if not isinstance(doc, Mapping):
        raise check.fail("(root)", f"expected a mapping with a site: block, got {doc!r}")
    check.keys("(root)", doc, TOP_KEYS)
    block = doc.get("site")
    if not isinstance(block, Mapping):
        raise check.fail("site", "missing block (id, name, ...)")
    check.keys("site", block, SITE_KEYS)
    site_id = check.text("site.id", block.get("id"))
    period = block.get("demand_billing_period", "month")
    if period not in BILLING_PERIODS:
        raise check.fail("site.demand_billing_period", f"is {period!r}; expected one of {', '.join(BILLING_PERIODS)}")
    prices = block.get("tariff_by_hour")
    if prices is not None:
        if not isinstance(prices, list) or len(prices) != 24:
            raise check.fail("site.tariff_by_hour", f"expected 24 prices (one per hour of day), got {prices!r}")
        prices = tuple(check.number(f"site.tariff_by_hour[{h}]", p, minimum=None) for h, p in enumerate(prices))
    cap = block.get("grid_import_cap_kw")
    country = block.get("country")
    if country is not None:
        country = check.text("site.country", country)
        try:
            Site(id=site_id, source=source, country=country).holiday_calendar()
        except NotImplementedError as exc:  # the holidays package knows no such country or subdivision
            raise check.fail("site.country", f"is {country!r}: {exc}") from None
    return Site(
        id=site_id, source=source, name=str(block.get("name", "")), timezone=str(block.get("timezone", "UTC")),
        grid_import_cap_kw=None if cap is None else check.number("site.grid_import_cap_kw", cap),
        tariff=str(block.get("tariff", "")), prices_by_hour=prices, demand_billing_period=period, country=country,
        pdus=tuple(_pdu(check, f"pdus[{i}]", e) for i, e in enumerate(check.entries("pdus", doc.get("pdus")))),
        gpu_pods=tuple(_pod(check, f"gpu_pods[{i}]", e)
                       for i, e in enumerate(check.entries("gpu_pods", doc.get("gpu_pods")))),
        ess=tuple(_ess(check, f"ess[{i}]", e) for i, e in enumerate(check.entries("ess", doc.get("ess")))),
        devices=tuple(_device(check, f"devices[{i}]", e)
                      for i, e in enumerate(check.entries("devices", doc.get("devices")))),
        replay=None if doc.get("replay") is None else _replay(check, site_id, doc["replay"]),
        topology=_topology(check, doc.get("topology")),
        alarm_chains=_alarm_chains(check, doc.get("alarm_chains")),
        flexible_load=_flexible_load(check, doc.get("flexible_load")),
        glossary=_glossary(check, doc.get("glossary")))


def _ess(check: "_Checker", where: str, entry: Mapping) -> EssSpec:
    check.keys(where, entry, tuple(EssSpec.__dataclass_fields__))
    return EssSpec(
        id=check.text(f"{where}.id", entry.get("id")),
        capacity_kwh=check.number(f"{where}.capacity_kwh", entry.get("capacity_kwh")),
        pcs_charge_kw=check.number(f"{where}.pcs_charge_kw", entry.get("pcs_charge_kw")),
        pcs_discharge_kw=check.number(f"{where}.pcs_discharge_kw", entry.get("pcs_discharge_kw")),
        round_trip_efficiency=check.share(f"{where}.round_trip_efficiency",
                                          entry.get("round_trip_efficiency", EssSpec.round_trip_efficiency)),
        reserve_soc_pct=check.percent(f"{where}.reserve_soc_pct",
                                      entry.get("reserve_soc_pct", EssSpec.reserve_soc_pct)),
        soh_pct=check.percent(f"{where}.soh_pct", entry.get("soh_pct", EssSpec.soh_pct), positive=True))


def _device(check: "_Checker", where: str, entry: Mapping) -> Device:
    check.keys(where, entry, tuple(Device.__dataclass_fields__))
    return Device(check.text(f"{where}.id", entry.get("id")), check.text(f"{where}.type", entry.get("type")),
                  str(entry.get("description", "")))


def _pdu(check: "_Checker", where: str, entry: Mapping) -> Pdu:
    check.keys(where, entry, ("id", "hall", "share"))
    return Pdu(check.text(f"{where}.id", entry.get("id")), _optional_text(entry.get("hall")),
               check.share(f"{where}.share", entry.get("share"), zero=True))


def _pod(check: "_Checker", where: str, entry: Mapping) -> GpuPod:
    check.keys(where, entry, tuple(GpuPod.__dataclass_fields__))
    partition = entry.get("slurm_partition")
    return GpuPod(
        id=check.text(f"{where}.id", entry.get("id")), hall=_optional_text(entry.get("hall")),
        nodes=check.count(f"{where}.nodes", entry.get("nodes", 0)),
        gpus_per_node=check.count(f"{where}.gpus_per_node", entry.get("gpus_per_node", 0)),
        slurm_partition=None if partition is None else check.text(f"{where}.slurm_partition", partition),
        it_share=check.share(f"{where}.it_share", entry.get("it_share", 0.0), zero=True),
        description=str(entry.get("description", "")),
        kw_per_gpu=check.number(f"{where}.kw_per_gpu", entry.get("kw_per_gpu", GpuPod.kw_per_gpu)))


def _flexible_load(check: "_Checker", block: Any) -> FlexibleLoad | None:
    if block is None:
        return None
    check.keys("flexible_load", block, tuple(FlexibleLoad.__dataclass_fields__))
    parts = {}
    for name, kind in (("training", TrainingLoad), ("llm_serving", LlmServingLoad), ("clock_lock", ClockLoad)):
        entry = block.get(name)
        if entry is None:
            continue
        where = f"flexible_load.{name}"
        check.keys(where, entry, tuple(kind.__dataclass_fields__))
        values = {}
        for key, value in entry.items():
            if key in ("partition", "backend"):
                values[key] = check.text(f"{where}.{key}", value)
            elif key == "cap_servers":
                if not isinstance(value, list) or not value:
                    raise check.fail(f"{where}.{key}", f"expected a non-empty list of server names, got {value!r}")
                values[key] = tuple(check.text(f"{where}.{key}[{i}]", v) for i, v in enumerate(value))
            elif key == "cap_maxconn":
                values[key] = check.count(f"{where}.{key}", value)
            elif key == "shift_pct":
                values[key] = check.percent(f"{where}.{key}", value, positive=True)
            elif key in ("node_kw", "job_kw"):
                values[key] = check.number(f"{where}.{key}", value)
            else:  # shares: the part itself must be some load, what a lever saves of it may be none
                values[key] = check.share(f"{where}.{key}", value, zero=key != "share")
        if name == "training" and "partition" not in values:
            raise check.fail(where, "partition missing (where the training jobs run)")
        parts[name] = kind(**values)
    total = sum(p.share for p in parts.values())
    if total > 1 + 1e-9:
        raise check.fail("flexible_load", f"shares add up to {total:g}; each part of the load counts once, so at most 1")
    serving = parts.get("llm_serving")
    if serving and serving.shift_saving + serving.cap_saving > 1:
        raise check.fail("flexible_load.llm_serving", "shift_saving and cap_saving add up to more than 1")
    return FlexibleLoad(**parts)


def _replay(check: "_Checker", site_id: str, block: Any) -> ReplaySpec:
    if not isinstance(block, Mapping):
        raise check.fail("replay", "missing block (time_column, streams)")
    time_column = check.text("replay.time_column", block.get("time_column"))
    entries = block.get("streams")
    if not isinstance(entries, list) or not entries:
        raise check.fail("replay.streams", "missing or empty list")
    streams, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"replay.streams[{i}]" + (f" ({entry.get('device')} {entry.get('metric')})"
                                          if isinstance(entry, Mapping) else "")
        if not isinstance(entry, Mapping):
            raise check.fail(where, f"expected a mapping, got {entry!r}")
        if unknown := set(entry) - set(STREAM_KEYS):
            raise check.fail(where, f"unknown keys {sorted(unknown)}; allowed: {sorted(STREAM_KEYS)}")
        for key in ("device", "device_type", "metric", "unit"):
            if not _is_text(entry.get(key)):
                raise check.fail(where, f"{key} missing (a non-empty string)")
        if ("column" in entry) == ("constant" in entry):
            raise check.fail(where, "needs exactly one of column (with scale, offset) or constant")
        if "column" in entry and not _is_text(entry["column"]):
            raise check.fail(where, "column must be a non-empty string")
        if "constant" in entry and ("scale" in entry or "offset" in entry):
            raise check.fail(where, "scale and offset apply to a column, not to a constant")
        for key in ("scale", "offset", "constant"):
            if key in entry and not _is_number(entry[key]):
                raise check.fail(where, f"{key} must be a finite number, got {entry[key]!r}")
        if (entry["device"], entry["metric"]) in seen:
            raise check.fail(where, "duplicate device and metric")
        seen.add((entry["device"], entry["metric"]))
        streams.append(ReplayStream(**{k: float(v) if k in ("scale", "offset", "constant") else v
                                       for k, v in entry.items()}))
    return ReplaySpec(site_id, time_column, tuple(streams))


def _topology(check: "_Checker", block: Any) -> Mapping | None:
    if block is None:
        return None
    if not isinstance(block, Mapping):
        raise check.fail("topology", "expected a mapping with power/cooling/network/racks lists")
    return _frozen(block)


def _alarm_chains(check: "_Checker", block: Any) -> Mapping | None:
    if block is None:
        return None
    if not isinstance(block, Mapping) or not all(_is_text(v) for v in block.values()):
        raise check.fail("alarm_chains", f"expected a mapping of code prefix to chain, got {block!r}")
    return MappingProxyType({str(k): str(v) for k, v in block.items()})


def _glossary(check: "_Checker", block: Any) -> Glossary | None:
    if block is None:
        return None
    check.keys("glossary", block, ("words", "kinds"))
    tables = {}
    for name in ("words", "kinds"):
        table = block.get(name) or {}
        if not isinstance(table, Mapping):
            raise check.fail(f"glossary.{name}", f"expected a mapping of a word to its English, got {table!r}")
        for key, meaning in table.items():
            if not isinstance(key, str) or not ONE_WORD.fullmatch(key):
                raise check.fail(f"glossary.{name}", f"{key!r} is not one word (letters and digits only)")
            check.text(f"glossary.{name}.{key}", meaning)
        tables[name] = MappingProxyType({k: str(v).strip() for k, v in table.items()})
    return Glossary(**tables)


class _Checker:
    """Type and range checks that raise a ``SiteError`` naming the file and the entry."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, why: str) -> SiteError:
        return SiteError(f"{self.source}: {where}: {why}")

    def keys(self, where: str, entry: Any, allowed: tuple[str, ...]) -> None:
        if not isinstance(entry, Mapping):
            raise self.fail(where, f"expected a mapping, got {entry!r}")
        if unknown := [k for k in entry if k not in allowed]:  # a typo would otherwise fall back to a default
            raise self.fail(where, f"unknown keys {sorted(map(str, unknown))}; allowed: {', '.join(allowed)}")

    def entries(self, where: str, value: Any) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list, got {value!r}")
        return value

    def text(self, where: str, value: Any) -> str:
        if not _is_text(value):
            raise self.fail(where, f"expected a non-empty string, got {value!r}")
        return value

    def number(self, where: str, value: Any, minimum: float | None = 0.0) -> float:
        """A finite number, above ``minimum`` (positive by default; None: any)."""
        if not _is_number(value) or (minimum is not None and value <= minimum):
            kind = "a finite number" if minimum is None else "a positive number"
            raise self.fail(where, f"expected {kind}, got {value!r}")
        return float(value)

    def share(self, where: str, value: Any, zero: bool = False) -> float:
        if not _is_number(value) or not (0 <= value <= 1 if zero else 0 < value <= 1):
            raise self.fail(where, f"expected a number in {'[0' if zero else '(0'}, 1], got {value!r}")
        return float(value)

    def percent(self, where: str, value: Any, positive: bool = False) -> float:
        if not _is_number(value) or not (0 < value <= 100 if positive else 0 <= value < 100):
            raise self.fail(where, f"expected a percentage in {'(0, 100]' if positive else '[0, 100)'}, got {value!r}")
        return float(value)

    def count(self, where: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(where, f"expected a whole number >= 0, got {value!r}")
        return value


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _frozen(value: Any) -> Any:
    """A read-only copy: mappings become mapping proxies, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value
