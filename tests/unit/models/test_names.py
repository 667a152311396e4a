"""Which sites and devices the site files declare (models/names.py), without a broker."""

from pathlib import Path

import pytest

from opsloop.config.assets import DEMO_SITE
from opsloop.config.site import load_site, parse_site
from opsloop.models.names import SiteNames, declared_devices

pytestmark = pytest.mark.unit
COLO = Path(__file__).resolve().parents[2] / "data" / "topology_colo.yaml"


def test_the_demo_site_declares_what_its_sources_send():
    demo = load_site(DEMO_SITE)
    devices = declared_devices(demo)
    assert {s.device for s in demo.replay.streams} <= devices  # the replay
    assert {"ess-1", "pdu-a1", "gpu-pod-4", "ups-a", "rack-a01", "rack-a01-n8", "rack-a01-n8-g7"} <= devices
    assert "train-a" in devices  # Slurm partitions the guard and the Slurm sink act on


def test_unknown_sites_and_devices_are_named_in_the_reason():
    names = SiteNames([load_site(DEMO_SITE), load_site(COLO)])
    assert names.check("demo", "grid-meter-1") is None and names.check("colo", "r101-n1-g3") is None
    reason = names.check("demo", "r101")  # a colo rack is not a demo device
    assert "'r101'" in reason and "site demo" in reason and "demo.yaml" in reason
    reason = names.check("phantom", "grid-meter-1")
    assert "'phantom'" in reason and "colo, demo" in reason


def test_a_site_file_without_a_device_list_takes_any_device_of_its_site():
    lab = parse_site({"site": {"id": "lab", "name": "no devices listed"}}, "lab")
    assert declared_devices(lab) is None
    names = SiteNames([lab])
    assert names.check("lab", "whatever-1") is None
    assert names.check("other", "whatever-1") is not None  # the site itself must still be declared
