"""Kind ``prometheus``: scrape /metrics endpoints (the text exposition format) and map the samples to
site devices (models/prom_metrics.py).

Options: ``url`` or ``urls``; ``mapping``: which built-in mappings apply (``default``: node,
vllm and dcgm together, or a list of those names); ``metrics``: extra or replacing entries
(name -> metric, unit, scale, rate, combine, where, device, device_type); ``keep``: a regex of
metric names to read (default: the mapped ones); ``relabel``: keep/drop rules. ``devices`` maps
each target (``host:port`` of its URL; DCGM GPUs as ``host:port/gpu<N>``) to a site device.

The exposition is parsed by prometheus_client's parser. It reads line by line (a line it cannot
read is one ``decode`` reject with the line kept, every other sample is still read); each
series' name and labels are parsed once and cached (``ExpositionReader``).
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator
from urllib.parse import urlsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from opsloop.config.site import Site
from opsloop.config.sources import SourceConfig
from opsloop.connectors.sources.base import Readings, Reject, SourceUnavailable
from opsloop.models.prom_metrics import (DEFAULT_MAPPING, MAPPINGS, Bad, MetricMap, Normalized, Normalizer,
                                         RelabelRule, Sample, metric_map)
from opsloop.models.names import device_types

log = logging.getLogger("opsloop.source")


def mapping_of(config: SourceConfig) -> dict[str, MetricMap]:
    names = config.option("mapping", "default")
    names = [names] if isinstance(names, str) else list(names)
    mapping: dict[str, MetricMap] = {}
    for name in names:
        if name == "default":
            mapping.update(DEFAULT_MAPPING)
        elif name in MAPPINGS:
            mapping.update(MAPPINGS[name])
        else:
            raise config.error(f"options.mapping: unknown {name!r} (known: default, {', '.join(MAPPINGS)})")
    try:
        for name, spec in (config.option("metrics") or {}).items():
            mapping[str(name)] = metric_map(str(name), spec, "options")
    except (TypeError, ValueError, AttributeError) as exc:
        raise config.error(str(exc)) from None
    return mapping


def relabel_of(config: SourceConfig) -> list[RelabelRule]:
    try:
        return [RelabelRule(r["action"], r["regex"], tuple(r.get("source_labels", ("__name__",))),
                            r.get("separator", ";")) for r in config.option("relabel") or []]
    except (KeyError, TypeError, ValueError) as exc:
        raise config.error(f"options.relabel: each rule needs action (keep|drop) and regex: {exc}") from None


def normalizer(config: SourceConfig, site: Site) -> Normalizer:
    return Normalizer(mapping_of(config), config.devices, config.site, f"{config.kind}:{config.name}",
                      keep=config.option("keep"), relabel=relabel_of(config), device_types=device_types(site))


def _samples(families) -> Iterator[Sample]:
    for family in families:
        for s in family.samples:
            yield Sample(s.name, s.labels, s.value, None if s.timestamp is None else int(float(s.timestamp) * 1000))


def _split(line: str) -> tuple[str, list[str]]:
    """A sample line's series text (name and labels, as written) and what follows it (value, timestamp)."""
    end = line.rfind("}") + 1
    if not end:
        head, *tail = line.split()
        return head, tail
    return line[:end], line[end:].split()


class ExpositionReader:
    """Reads /metrics texts with prometheus_client's parser, one line at a time, so a bad line is one
    reject and not the whole scrape. Scrapes repeat their series: the parser reads each series'
    text (name, labels, escapes) once, and later lines of the same series only have their value and
    timestamp read, which makes a 15,000-line scrape several times cheaper to read."""

    def __init__(self, max_series: int = 500_000):
        self.series: dict[str, tuple[str, dict]] = {}
        self.max_series = max_series

    def read(self, text: str) -> tuple[list[Sample], list[Bad]]:
        samples, bad = [], []
        for line in text.splitlines():
            if not line or line.startswith("#") or line.isspace():
                continue
            head, tail = _split(line)
            known = self.series.get(head)
            if known is not None and 1 <= len(tail) <= 2:
                try:
                    samples.append(Sample(known[0], known[1], float(tail[0]),
                                          int(float(tail[1]) * 1000) if len(tail) == 2 else None))
                    continue
                except ValueError:
                    pass  # the parser says what is wrong with it
            try:
                parsed = list(_samples(text_string_to_metric_families(line + "\n")))
            except ValueError as exc:
                bad.append(Bad(line.encode(), "decode", f"malformed exposition line: {exc}"))
                continue
            samples.extend(parsed)
            if len(parsed) == 1:
                if len(self.series) >= self.max_series:
                    self.series.clear()  # series churn: start over rather than grow
                self.series[head] = (parsed[0].name, parsed[0].labels)
        return samples, bad


def parse_exposition(text: str) -> tuple[list[Sample], list[Bad]]:
    """Every readable sample of a /metrics text, and each line that is not one."""
    return ExpositionReader().read(text)


def readings(out: Normalized, bad: Iterable[Bad] = ()) -> Readings:
    return Readings(points=out.points, alarms=out.alarms,
                    rejects=[Reject(b.raw, b.kind, b.reason) for b in (*bad, *out.rejects)])


class PrometheusScrape:
    """A Poller: one GET per target per poll."""

    def __init__(self, config: SourceConfig, site: Site, client: httpx.Client | None = None):
        urls = config.option("urls") or [config.option("url", required=True)]
        self.targets = [(str(url), urlsplit(str(url)).netloc) for url in urls]
        for url, target in self.targets:
            if not any(key == target or key.startswith(target + "/") for key in config.devices):
                raise config.error(f"devices: nothing maps target {target!r} ({url}) to a site device "
                                   f"(add {target!r}, or '{target}/gpu<N>' per GPU of a DCGM exporter)")
        self.norm = normalizer(config, site)
        self.reader = ExpositionReader()
        logging.getLogger("httpx").setLevel(logging.WARNING)  # else one INFO line per scrape, forever
        self.client = client or httpx.Client(timeout=config.timeout_s,
                                             headers={"Accept": "text/plain;version=0.0.4"})

    def poll(self, now_ms: int) -> Readings:
        out = Readings()
        failed = []
        for url, target in self.targets:
            try:
                response = self.client.get(url)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                failed.append(f"{url}: {exc}")
                continue
            samples, bad = self.reader.read(response.text)
            resets = self.norm.rates.resets
            out.extend(readings(self.norm.normalize(samples, now_ms, target), bad))
            if self.norm.rates.resets > resets:  # not an error: the rate restarts from the new count
                log.info("%s: %d counter reset(s) (the exporter restarted?)", url,
                         self.norm.rates.resets - resets)
        if failed and len(failed) == len(self.targets):
            raise SourceUnavailable("; ".join(failed))
        for why in failed:  # some targets answered: the poll counts, the others are named
            log.warning("scrape failed: %s", why)
        return out

    def close(self) -> None:
        self.client.close()


def build(config: SourceConfig, site: Site, clock) -> PrometheusScrape:
    return PrometheusScrape(config, site)
