"""The keyed agents refuse event times out of bounds for their state (streams/keyed.py ``refuse``), without a broker."""

import pytest

from opsloop.config.settings import Settings
from opsloop.config.site import load_site
from opsloop.models.records import alarm
from opsloop.streams.correlate import CorrelateProcessor
from opsloop.streams.dedup import DedupProcessor

pytestmark = pytest.mark.unit
NOW_S = 1_780_000_000.0  # 2026
Y2100 = 4_102_444_800_000


def raw(ts_ms, device="pdu-a1"):
    return alarm(ts_ms, "demo", device, "pdu", "bms", "PWR_INPUT_LOST", "input lost", severity="major")


def test_dedup_refuses_2100_and_the_distant_past_of_a_device_but_not_a_replay():
    settings = Settings(max_future_s=3600, max_past_s=86_400)
    proc = DedupProcessor(settings)
    proc.wall_clock = lambda: NOW_S
    state = proc.load_state(b"pdu-a1", None)
    assert proc.refuse(state, raw(960_163_200_000)) is None  # no history: a replayed storm of 2000 is fine
    assert proc.fold(state, b"pdu-a1", raw(int(NOW_S * 1000)), 0)
    assert "ahead of the processing clock" in proc.refuse(state, raw(Y2100))
    assert "behind its stream" in proc.refuse(state, raw(int(NOW_S * 1000) - 2 * 86_400_000))


def test_correlate_refuses_an_alarm_dated_2100_for_the_site():
    settings = Settings()
    proc = CorrelateProcessor(settings, [load_site(settings.topology)])
    proc.wall_clock = lambda: NOW_S
    state = proc.load_state(b"demo", None)
    clean = {"alarm": raw(Y2100), "fingerprint": "bms|demo|pdu-a1|pdu|PWR_INPUT_LOST", "duplicate_count": 1,
             "flapping": False}
    assert "ahead of the processing clock" in proc.refuse(state, clean)
    assert proc.refuse(state, {**clean, "alarm": raw(int(NOW_S * 1000))}) is None
