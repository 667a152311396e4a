"""The NOC in a real headless Chromium: the real sink fills DuckDB from Kafka, the page shows an incident's
root cause and narrative and a pending action, and clicking Approve puts a Feedback on operator.feedback."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from actuation import action, approved, publish
from opsloop.streams.views import ViewsSink
from opsloop.ops.noc import make_server
from opsloop.schemas.codec import Codec

pytestmark = pytest.mark.integration
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")  # Debian's packages
SAFETY_NET_S = 60  # page waits fail the test only if ever reached


@pytest.fixture
def chromium():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        reason = f"no {', '.join(missing)}: apt-get install chromium chromium-driver (make system-deps does as root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    # an explicit driver path: Selenium Manager is never asked to find or download one
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def fill_views(settings) -> None:
    """Records on the test's topics, stored by the real views agent until it is caught up."""
    now = int(time.time() * 1000)
    pending, done = action("noc-ask", "slurm_suspend", target="opsloop", shed_kw=240.0), \
        action("noc-auto", "pcs_discharge", setpoint_kw=1500.0)
    publish(settings, "actions.proposed", "Action", [pending, done])
    publish(settings, "actions.approved", "ApprovedAction",
            [approved(pending, "needs_approval"), approved(done, "approved")])
    publish(settings, "incidents", "Incident", [{
        "incident_id": "inc-ups-1", "site": "demo", "state": "open", "opened_ms": now - 60_000, "updated_ms": now,
        "resolved_ms": None, "root_device": "ups-1", "root_device_type": "ups", "root_code": "UPS_ON_BATTERY",
        "severity": "critical", "member_count": 3, "members": [], "summary": "UPS on battery; 2 PDUs follow",
        "merged_into": None}])
    publish(settings, "narratives", "Narrative", [{
        "incident_id": "inc-ups-1", "site": "demo", "ts_ms": now, "text": "Mains lost at ups-1: check the input breaker.",
        "citations": [{"sop_id": "SOP-UPS-01", "section": "2"}], "grounded": True, "model": "deterministic",
        "latency_ms": 1.0}])
    publish(settings, "telemetry.site", "SiteSnapshot", [{
        "site": "demo", "window_start_ms": now - 60_000, "window_end_ms": now, "grid_kw": 30000.0, "it_kw": 25000.0,
        "facility_kw": 30000.0, "ess_soc_pct": 80.0, "ess_soh_pct": 97.0, "ess_kw": 0.0, "gpu_kw": None, "pue": 1.2,
        "price_per_mwh": None, "samples": 3, "devices": 3}])
    publish(settings, "forecasts.peak", "PeakForecast", [{
        "site": "demo", "issued_ms": now, "horizon_s": 3600, "step_s": 900, "predicted_peak_kw": 33000.0,
        "predicted_peak_ms": now + 1_800_000, "threshold_kw": 31000.0, "points": [],
        "explanation": "Grid draw should peak at 33,000 kW in 30 minutes, above the 31,000 kW threshold.",
        "model": "test"}])
    publish(settings, "deadletter", "DeadLetter", [{
        "topic": "alarms.raw", "partition": 0, "offset": 7, "key": None, "value": b"junk", "error_kind": "decode",
        "error": "not Avro", "agent": "dedup", "message_ts_ms": now}])
    stats = ViewsSink(settings).run(threading.Event(), exit_when_idle=True)
    assert stats["rows"].get("actions_approved") == 2, stats


def test_noc_page_in_chromium_approves_an_action(kafka_settings, read_topic, chromium):
    fill_views(kafka_settings)
    server = make_server(kafka_settings, "127.0.0.1", 0, "noc tester")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        chromium.get(server.url)
        body = chromium.find_element(By.TAG_NAME, "body").text
        assert "ups-1 (ups): UPS_ON_BATTERY" in body
        assert "Mains lost at ups-1: check the input breaker." in body and "SOP-UPS-01 §2" in body
        assert "above the 31,000 kW threshold" in body and "1 rejected message" in body
        assert "Actions (1 waiting for approval)" in body
        pending = chromium.find_elements(By.CSS_SELECTOR, "tr.pending")
        assert len(pending) == 1 and "noc-ask" in pending[0].text
        assert "Suspend the selected jobs on opsloop" in pending[0].text  # the advisor's sentence
        pending[0].find_element(By.CSS_SELECTOR, "button[value=approve_action]").click()
        notice = WebDriverWait(chromium, SAFETY_NET_S).until(
            expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, ".notice")))
        assert "noc-ask: approval sent to the guard as noc tester" in notice.text
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    codec = Codec.default()
    sent = [(m.key(), codec.decode_as("Feedback", m.value())) for m in read_topic(kafka_settings, "operator.feedback")]
    assert [(key, fb["target_id"], fb["kind"], fb["operator"]) for key, fb in sent] == \
        [(b"noc-ask", "noc-ask", "approve_action", "noc tester")]


def test_with_views_the_page_reads_while_the_sink_in_the_same_process_writes(kafka_settings):
    from urllib.request import urlopen

    from opsloop.ops.noc import LiveViews

    def incident(incident_id: str, root: str) -> dict:
        now = int(time.time() * 1000)
        return {"incident_id": incident_id, "site": "demo", "state": "open", "opened_ms": now, "updated_ms": now,
                "resolved_ms": None, "root_device": root, "root_device_type": "pdu", "root_code": "PWR_PDU_BREAKER_TRIP",
                "severity": "major", "member_count": 1, "members": [], "summary": f"{root} tripped",
                "merged_into": None}

    def page_once(url: str, text: str) -> str:
        for _ in range(SAFETY_NET_S * 5):  # the sink commits about every batch: poll, never assume a time
            body = urlopen(url, timeout=10).read().decode()
            if text in body:
                break
            time.sleep(0.2)
        return body

    sink, stop = ViewsSink(kafka_settings), threading.Event()
    agent = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    agent.start()
    server = make_server(kafka_settings, "127.0.0.1", 0, "noc tester", LiveViews(sink))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        publish(kafka_settings, "incidents", "Incident", [incident("inc-pdu-1", "pdu-a1")])
        assert "pdu-a1 (pdu): PWR_PDU_BREAKER_TRIP" in page_once(server.url, "pdu-a1 (pdu)")
        publish(kafka_settings, "incidents", "Incident", [incident("inc-pdu-2", "pdu-b2")])  # the sink still runs
        body = page_once(server.url, "pdu-b2 (pdu)")
        assert "pdu-b2 (pdu): PWR_PDU_BREAKER_TRIP" in body and "written by this process" in body
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        stop.set()
        agent.join(30)
