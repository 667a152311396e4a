"""Site topology: which element feeds which, per chain, from a site's ``topology:`` block.

Chains (each element names what feeds it with ``fed_by``, an id or a list):

* ``power``: utility → switchgear → UPS → PDU → rack → node → GPU
* ``cooling``: chiller → CRAH → zone → rack → node → GPU
* ``network``: spine → top-of-rack switch → node → GPU
* ``gpu``: a node's GPU-level symptoms (job failures, degraded node) come from its GPUs,
  so in this chain each GPU feeds its node.

Racks name their ``pdu``, ``zone`` and ``switch`` (an id or a list: A/B feeds, redundant
CRAHs); ``nodes: N`` and ``gpus_per_node: M`` expand to nodes ``<rack>-n<i>`` and GPUs
``<rack>-n<i>-g<j>``. Any chain may be missing. An element fed by several parents in a
chain fails in that chain only when all of them fail (redundancy).

The chain of an alarm comes from its ``chain`` attribute, else its code's prefix (``PWR_``,
``TEMP_``, ``NET_``, ``GPU_``; a site may add prefixes under ``alarm_chains:``), else the
chain of the element it is on; otherwise it is unknown and may relate through any chain.

>>> topo = Topology.from_dict("s1", {
...     "power": [{"id": "ups-1", "type": "ups"}, {"id": "pdu-1", "type": "pdu", "fed_by": "ups-1"}],
...     "racks": [{"id": "r1", "pdu": "pdu-1", "nodes": 1, "gpus_per_node": 2}]})
>>> topo.ancestors("r1-n1-g0", "power")
('r1-n1', 'r1', 'pdu-1', 'ups-1')
>>> topo.ancestors("r1-n1", "gpu"), topo.type_of("r1-n1-g1"), topo.depth("pdu-1")
(('r1-n1-g0', 'r1-n1-g1'), 'gpu', 1)
>>> topo.chain_of({"code": "PWR_INPUT_LOSS", "device": "r1", "attributes": {}})
'power'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from opsloop.config.site import Site, SiteError

CHAINS = ("power", "cooling", "network", "gpu")
CODE_PREFIX_CHAINS = {"PWR": "power", "UPS": "power", "PDU": "power", "TEMP": "cooling", "COOL": "cooling",
                      "HUM": "cooling", "NET": "network", "LINK": "network", "GPU": "gpu", "XID": "gpu"}
RACK_LINKS = {"pdu": "power", "zone": "cooling", "switch": "network"}


class TopologyError(SiteError):
    """The topology block is unusable; the message names the file and the entry."""


@dataclass
class Topology:
    site: str
    types: dict[str, str] = field(default_factory=dict)  # element → type
    home_chain: dict[str, str] = field(default_factory=dict)  # infrastructure element → its chain
    parents: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)  # chain → element → parents
    code_chains: dict[str, str] = field(default_factory=lambda: dict(CODE_PREFIX_CHAINS))
    _ancestors: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict, repr=False)
    _children: dict[str, dict[str, list[str]]] = field(default_factory=dict, repr=False)
    _depth: dict[str, int] = field(default_factory=dict, repr=False)

    # -- building ----------------------------------------------------------------------

    @classmethod
    def from_site(cls, site: Site) -> "Topology":
        """The topology of a site (its ``topology:`` and ``alarm_chains:`` blocks)."""
        if site.topology is None:
            raise TopologyError(f"{site.source}: no topology: block (power, cooling, network, racks)")
        return cls.from_dict(site.id, site.topology, site.alarm_chains, where=f"{site.source}: topology")

    @classmethod
    def from_dict(cls, site: str, block: Mapping, code_chains: Mapping[str, str] | None = None,
                  where: str = "topology") -> "Topology":
        topo = cls(site)
        topo.parents = {chain: {} for chain in CHAINS}
        if code_chains:
            topo.code_chains.update({str(k).upper(): str(v) for k, v in code_chains.items()})
        if not isinstance(block, Mapping):
            raise TopologyError(f"{where}: expected a mapping with power/cooling/network/racks lists")
        for chain in ("power", "cooling", "network"):
            for i, entry in enumerate(block.get(chain) or []):
                spot = f"{where}.{chain}[{i}]"
                if not isinstance(entry, Mapping) or not entry.get("id") or not entry.get("type"):
                    raise TopologyError(f"{spot}: expected a mapping with id and type, got {entry!r}")
                topo._add(str(entry["id"]), str(entry["type"]), spot)
                topo.home_chain[str(entry["id"])] = chain
                topo.parents[chain][str(entry["id"])] = _ids(entry.get("fed_by"))
        for i, rack in enumerate(block.get("racks") or []):
            spot = f"{where}.racks[{i}]"
            if not isinstance(rack, Mapping) or not rack.get("id"):
                raise TopologyError(f"{spot}: expected a mapping with an id, got {rack!r}")
            rack_id = str(rack["id"])
            topo._add(rack_id, str(rack.get("type", "rack")), spot)
            for key, chain in RACK_LINKS.items():
                topo.parents[chain][rack_id] = _ids(rack.get(key))
            for n in range(1, int(rack.get("nodes", 0)) + 1):
                node = f"{rack_id}-n{n}"
                topo._add(node, str(rack.get("node_type", "gpu_node")), spot)
                topo.parents["power"][node] = topo.parents["cooling"][node] = (rack_id,)
                topo.parents["network"][node] = _ids(rack.get("switch"))
                gpus = [f"{node}-g{g}" for g in range(int(rack.get("gpus_per_node", 0)))]
                for gpu in gpus:
                    topo._add(gpu, "gpu", spot)
                    for chain in ("power", "cooling", "network"):
                        topo.parents[chain][gpu] = (node,)
                topo.parents["gpu"][node] = tuple(gpus)
        topo._check(where)
        return topo

    def _add(self, element: str, kind: str, spot: str) -> None:
        if element in self.types:
            raise TopologyError(f"{spot}: element {element!r} is declared twice")
        self.types[element] = kind

    def _check(self, where: str) -> None:
        for chain, links in self.parents.items():
            for element, parents in links.items():
                for parent in parents:
                    if parent not in self.types:
                        raise TopologyError(f"{where}: {element} names {parent!r} in the {chain} chain, "
                                            f"which is not declared")
        for element in self.types:  # also rejects cycles
            self.depth(element)

    # -- queries -----------------------------------------------------------------------

    def __contains__(self, element: str) -> bool:
        return element in self.types

    def __len__(self) -> int:
        return len(self.types)

    def type_of(self, element: str) -> str | None:
        return self.types.get(element)

    def parents_of(self, element: str, chain: str) -> tuple[str, ...]:
        return self.parents.get(chain, {}).get(element, ())

    def children_of(self, element: str, chain: str) -> list[str]:
        if not self._children:
            for ch, links in self.parents.items():
                kids = self._children.setdefault(ch, {})
                for child, parents in links.items():
                    for parent in parents:
                        kids.setdefault(parent, []).append(child)
        return self._children.get(chain, {}).get(element, [])

    def ancestors(self, element: str, chain: str) -> tuple[str, ...]:
        """Everything upstream of ``element`` in ``chain``, nearest first (cached)."""
        key = (element, chain)
        found = self._ancestors.get(key)
        if found is None:
            seen: dict[str, None] = {}
            frontier = list(self.parents_of(element, chain))
            while frontier:
                nxt = []
                for parent in frontier:
                    if parent not in seen and parent != element:
                        seen[parent] = None
                        nxt.extend(self.parents_of(parent, chain))
                frontier = nxt
            found = self._ancestors[key] = tuple(seen)
        return found

    def depth(self, element: str, _path: tuple[str, ...] = ()) -> int:
        """Longest way up to the top of the power/cooling/network chains (0 = a top element)."""
        if element in self._depth:
            return self._depth[element]
        if element in _path:
            raise TopologyError(f"topology of site {self.site}: cycle through {' -> '.join(_path + (element,))}")
        parents = [p for chain in ("power", "cooling", "network") for p in self.parents_of(element, chain)]
        value = 1 + max((self.depth(p, _path + (element,)) for p in parents), default=-1)
        self._depth[element] = value
        return value

    def chain_of(self, alarm: Mapping) -> str | None:
        """The chain an alarm travels along, or None when it cannot be told (then any chain)."""
        named = (alarm.get("attributes") or {}).get("chain")
        if named in CHAINS:
            return named
        prefix = str(alarm.get("code", "")).split("_", 1)[0].upper()
        return self.code_chains.get(prefix) or self.home_chain.get(alarm.get("device", ""))

    def elements(self, kind: str | None = None) -> list[str]:
        return [e for e, t in self.types.items() if kind is None or t == kind]


def _ids(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return (str(value),)


def site_topologies(sites: Iterable[Site]) -> dict[str, Topology]:
    """Site id -> topology for every site with a topology block (others are skipped)."""
    return {site.id: Topology.from_site(site) for site in sites if site.topology is not None}
