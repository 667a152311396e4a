"""The live sources that read a site twin as they would read a site, as one sources file.

A twin run "as in production" reads no number from the twin's process directly: the twin shows its meters and
PDUs on the protocols a site speaks (ops/twin_protocols.py, its Prometheus page) and ``opsloop source`` reads them:

- ``sunspec-pcs`` (kind sunspec, two targets polled at once): the twin's grid and facility meters (models 203),
  and the PCS's inverter, storage controls and battery (103, 124, 802) for the ESS power and state of charge.
  The PCS's own meters are ignored: the site's meters are the twin's.
- ``prom-twin`` (kind prometheus): the rest of the site from the twin's page: PDUs, GPU pods, racks, zones,
  chillers, CRAH setpoints and the cooling meter.

Both poll far faster than a site would (``interval_s``), because the twin's time runs many times faster than the
wall clock: a poll every 50 ms is a minute of twin time at 1440x.
"""

from __future__ import annotations

from opsloop.config.site import Site

METER, PCS = "meter", "pcs"
SUNSPEC_METRICS = ("grid_kw", "facility_kw", "ess_kw", "ess_soc_pct", "ess_soh_pct")  # not read from the page
PAGE_METRICS = {"it_kw": "kW", "gpu_kw": "kW", "rack_kw": "kW", "cooling_kw": "kW", "chiller_kw": "kW",
                "inlet_temp_c": "degC", "temp_c": "degC", "outside_temp_c": "degC", "supply_setpoint_c": "degC"}


def page_devices(points: list[dict]) -> list[str]:
    """The devices whose page metrics the Prometheus source maps (from one twin sample's points)."""
    return sorted({p["device"] for p in points if p["metric"] in PAGE_METRICS})


def twin_sources(site: Site, meter: str, pcs: str, page_url: str, devices: list[str],
                 interval_s: float = 0.05) -> dict:
    """The sources file (as a mapping) reading the twin's SunSpec meters at ``meter`` and the PCS at ``pcs`` (each
    ``host:port``) and the twin's Prometheus page at ``page_url``; ``devices``: those the page shows."""
    from urllib.parse import urlsplit

    ess = site.ess[0].id if site.ess else None
    sunspec_devices = {f"{METER}/203": "grid-meter-1", f"{METER}/203:2": "facility-meter-1"}
    targets = [_target(METER, meter)]
    if ess is not None:
        sunspec_devices.update({f"{PCS}/{model}": ess for model in ("103", "124", "802")})
        targets.append(_target(PCS, pcs))
    page = urlsplit(page_url).netloc
    metrics = {f"opsloop_twin_{metric}": {"metric": metric, "unit": unit, "device": f"{page}/{{device}}",
                                          "combine": "mean"}
               for metric, unit in PAGE_METRICS.items()}
    common = {"timeout_s": 1, "fail_after": 3, "interval_s": interval_s, "backoff_max_s": max(interval_s, 1.0)}
    return {"site": site.id, "sources": [
        {"kind": "sunspec", "name": "sunspec-pcs", **common, "devices": sunspec_devices,
         "options": {"targets": targets, "ignore": [f"{PCS}/203", f"{PCS}/203:2"]}},
        {"kind": "prometheus", "name": "prom-twin", **common, "interval_s": 2 * interval_s,
         "devices": {f"{page}/{device}": device for device in devices},
         "options": {"url": page_url, "mapping": [], "metrics": metrics}},
    ]}


def _target(name: str, endpoint: str) -> dict:
    host, _, port = endpoint.rpartition(":")
    return {"name": name, "host": host, "port": int(port)}
