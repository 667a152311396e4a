"""The sources bench's inputs are what the kinds read: every series of its DCGM exposition and remote-write
bodies maps to a demo GPU, nothing is rejected."""

from __future__ import annotations

import io

import pytest

from opsloop.config.settings import Settings
from opsloop.config.site import load_site
from opsloop.config.sources import parse_sources
from opsloop.connectors.sources.prometheus import normalizer, parse_exposition
from opsloop.connectors.sources.remote_write import RemoteWriteReceiver, Token
from opsloop.ops.bench.sources import GAUGES, dcgm_text, demo_gpus, remote_write_bodies

pytestmark = pytest.mark.unit


def test_the_bench_exposition_and_bodies_map_every_series_to_a_demo_gpu():
    gpus = demo_gpus()[:16]
    site = load_site(Settings().topology)
    block = {"kind": "prometheus", "name": "prom-dcgm", "options": {"url": "u", "mapping": "dcgm",
                                                                    "listen": "127.0.0.1:0"},
             "devices": {f"{target}/gpu{g}": n for target in ("t", "dcgm:9400") for g, n in enumerate(gpus)}}
    norm = normalizer(parse_sources({"site": "demo", "sources": [block]}, "b")[0], site)
    samples, bad = parse_exposition(dcgm_text(len(gpus), 0).decode())
    norm.normalize(samples, 0, "t")
    samples, _ = parse_exposition(dcgm_text(len(gpus), 1).decode())
    out = norm.normalize(samples, 15_000, "t")
    assert bad == [] and out.rejects == [] and len(out.points) == len(gpus) * (len(GAUGES) - 1 + 1)  # XID: no point
    rx = RemoteWriteReceiver(parse_sources({"site": "demo", "sources": [{**block, "kind": "remote-write",
                                                                         "name": "prom-remote-write"}]}, "b")[0],
                             site, token=Token("t"))
    got = []
    rx.deliver = lambda r: got.append(r) or True
    for body in remote_write_bodies(len(gpus), 2, per_request=100, mapped_in=10):
        assert rx.handle("Bearer t", len(body), io.BytesIO(body).read, 0)[0] == 204
    rx.close()
    assert sum(len(r.points) for r in got) == 20 and all(not r.rejects for r in got)
    assert rx.stats["skipped"] == 180
