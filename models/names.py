"""Which sites and devices the site files declare: points and alarms naming others are refused.

Pure: built from parsed ``config.site.Site`` objects, no files read. A site declares its
devices through any of its blocks: ``pdus``, ``gpu_pods`` (and their Slurm partitions),
``ess``, ``devices`` (meters, collectors, nodes read by live sources), ``replay.streams`` and ``topology`` (every element, with each rack's nodes
``<rack>-n<i>`` and GPUs ``<rack>-n<i>-g<j>`` as models/topology.py expands them). A site
file that declares none of them (only a ``site:`` block) has no device list: every device
of that site is taken (lenient). A site no file declares is always refused.

>>> from opsloop.config.site import parse_site
>>> demo = parse_site({"site": {"id": "demo"}, "ess": [{"id": "ess-1", "capacity_kwh": 1,
...                    "pcs_charge_kw": 1, "pcs_discharge_kw": 1}]}, "sites/demo")
>>> open_site = parse_site({"site": {"id": "lab"}}, "sites/lab")
>>> names = SiteNames([demo, open_site])
>>> names.check("demo", "ess-1") is None, names.check("lab", "anything") is None
(True, True)
>>> names.check("demo", "ess-9")
"device 'ess-9' is not declared by site demo (sites/demo)"
>>> names.check("mars", "ess-1")
"site 'mars' is not declared by any site file (known: demo, lab)"
"""

from __future__ import annotations

from typing import Iterable

from opsloop.config.site import Site
from opsloop.models.topology import Topology


def declared_devices(site: Site) -> frozenset[str] | None:
    """Every device a site declares, or None when its file lists no devices at all."""
    names: set[str] = set()
    names.update(p.id for p in site.pdus)
    names.update(p.id for p in site.gpu_pods)
    names.update(site.slurm_partitions)
    names.update(e.id for e in site.ess)
    names.update(d.id for d in site.devices)
    if site.replay is not None:
        names.update(s.device for s in site.replay.streams)
    if site.topology is not None:
        names.update(Topology.from_site(site).types)
    return frozenset(names) if names else None


class SiteNames:
    """The sites and devices described by site files; ``check`` says what is wrong with a name."""

    def __init__(self, sites: Iterable[Site]):
        self.sites = {site.id: site for site in sites}
        self.devices = {site_id: declared_devices(site) for site_id, site in self.sites.items()}

    def check(self, site: str, device: str) -> str | None:
        """Why ``device`` of ``site`` is unknown, or None when the site files declare it."""
        if site not in self.devices:
            return f"site {site!r} is not declared by any site file (known: {', '.join(sorted(self.devices))})"
        devices = self.devices[site]
        if devices is not None and device not in devices:
            return f"device {device!r} is not declared by site {site} ({self.sites[site].source})"
        return None


def device_types(site: Site) -> dict[str, str]:
    """Device id -> device type for every device the site declares with a type (live sources label
    their points with it): topology first, then the blocks that name a type of their own."""
    types: dict[str, str] = dict(Topology.from_site(site).types) if site.topology is not None else {}
    types.update({p.id: "pdu" for p in site.pdus})
    types.update({p.id: "gpu_node" for p in site.gpu_pods})
    types.update({e.id: "ess" for e in site.ess})
    if site.replay is not None:
        types.update({s.device: s.device_type for s in site.replay.streams})
    types.update({d.id: d.type for d in site.devices})
    return types
