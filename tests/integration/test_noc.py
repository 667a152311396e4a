"""The NOC in a real headless Chromium: the real sink fills DuckDB from Kafka. The overview's chart draws
the site's power and forecast band; an incident page shows its narration, cited SOP steps, member alarms,
log lines and topology path; clicking Approve puts a Feedback naming the operator on operator.feedback, the
real guard answers, and the verdict shows on the page without a reload; labelling an alarm puts
alarm_noise on operator.feedback; hostile text in alarms and incidents shows as text and never runs. A
viewer sees no buttons; forged and malformed POSTs put nothing on the topic."""

from __future__ import annotations

import http.client
import os
import re
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
from argon2 import PasswordHasher
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from actuation import Running, action, approved, publish
from opsloop.config.policy import load_policy
from opsloop.config.site import load_site
from opsloop.streams.guard import GuardProcessor
from opsloop.streams.views import ViewsSink
from opsloop.connectors.duckdb import open_db
from opsloop.ops.noc import LiveViews, make_access, make_server
from opsloop.ops.noc_auth import Role, UserStore
from opsloop.schemas.codec import Codec

pytestmark = pytest.mark.integration
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")  # Debian's packages
SAFETY_NET_S = 60  # page waits fail the test only if ever reached
PASSWORDS = {"noc-tester": "tester's long password", "vic": "viewer's long password",
             "ada": "admin's long password"}


def users(settings) -> UserStore:
    store = UserStore(settings.data_dir / "users.json", hasher=PasswordHasher(time_cost=1, memory_cost=8,
                                                                                parallelism=1))
    for name, role in (("noc-tester", Role.OPERATOR), ("vic", Role.VIEWER), ("ada", Role.ADMIN)):
        store.add(name, role, PASSWORDS[name])
    return store


def start_noc(settings, views=None):
    server = make_server(settings, "127.0.0.1", 0, views)
    server.access = make_access(settings, "127.0.0.1", server.server_address[1], users(settings))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for _ in range(200):  # uvicorn starts in its thread; the socket is bound already
        try:
            with socket.create_connection(server.server_address[:2], timeout=1):
                break
        except OSError:
            time.sleep(0.05)
    return server, thread


def stop_noc(server, thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join()


def browser_login(driver, url: str, name: str) -> None:
    driver.delete_all_cookies()
    driver.get(url)  # no session: the NOC sends the browser to its login form
    driver.find_element(By.ID, "username").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORDS[name])
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    WebDriverWait(driver, SAFETY_NET_S).until(expected_conditions.presence_of_element_located((By.ID, "logout")))


def http_login(server, name: str) -> tuple[str, str]:
    """(Cookie header, CSRF token) of a fresh session, as a form-posting client gets them."""
    host, port = server.server_address[:2]
    jar = {}

    def call(method, path, form=None):
        conn = http.client.HTTPConnection(host, port, timeout=30)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())}
        if form is not None:
            headers.update({"Origin": f"http://{host}:{port}", "Content-Type": "application/x-www-form-urlencoded"})
        conn.request(method, path, urlencode(form) if form is not None else None, headers)
        resp = conn.getresponse()
        page = resp.read().decode()
        for cookie in resp.headers.get_all("Set-Cookie") or []:
            key, value = cookie.split(";")[0].split("=", 1)
            jar[key] = value
        conn.close()
        return page

    token = re.search(r'name="csrf_token" value="([^"]*)"', call("GET", "/login")).group(1)
    call("POST", "/login", {"csrf_token": token, "username": name, "password": PASSWORDS[name]})
    page = call("GET", "/")
    return f"noc_session={jar['noc_session']}", re.search(r'name="csrf_token" value="([^"]*)"', page).group(1)


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
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP violations and script errors
    # an explicit driver path: Selenium Manager is never asked to find or download one
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


HOSTILE = "<img src=x onerror=\"document.title='pwned'\"><script>window.pwned = 1</script>"


def fill_views(settings, hostile: str = "") -> None:
    """Records on the test's topics, stored by the real views agent until it is caught up: two hours of site
    power a minute apart, a forecast with its band, an incident with a narration citing a real SOP, a pending
    and a decided action, an alarm and a source's health."""
    now = int(time.time() * 1000) // 60_000 * 60_000
    pending, done = action("noc-ask", "slurm_suspend", target="opsloop", shed_kw=240.0), \
        action("noc-auto", "pcs_discharge", setpoint_kw=1500.0)
    publish(settings, "actions.proposed", "Action", [pending, done])
    publish(settings, "actions.approved", "ApprovedAction",
            [approved(pending, "needs_approval"), approved(done, "approved")])
    publish(settings, "incidents", "Incident", [{
        "incident_id": "inc-ups-1", "site": "demo", "state": "open", "opened_ms": now - 60_000, "updated_ms": now,
        "resolved_ms": None, "root_device": "ups-a", "root_device_type": "ups", "root_code": "UPS_ON_BATTERY",
        "severity": "critical", "member_count": 2, "summary": "UPS on battery; a PDU follows " + hostile,
        "merged_into": None, "members": [
            {"fingerprint": "fp-ups", "device": "ups-a", "device_type": "ups", "code": "UPS_ON_BATTERY", "count": 2,
             "first_seen_ms": now - 60_000, "text": "on battery", "log_line": ""},
            {"fingerprint": "fp-pdu", "device": "pdu-a1", "device_type": "pdu", "code": "PWR_PDU_INPUT_LOSS",
             "count": 1, "first_seen_ms": now - 50_000, "text": hostile,
             "log_line": "kernel: pdu-a1 input voltage lost " + hostile}]}])
    publish(settings, "narratives", "Narrative", [{
        "incident_id": "inc-ups-1", "site": "demo", "ts_ms": now, "text": "Mains lost at ups-a: check the input breaker.",
        "citations": [{"sop_id": "SOP-PWR-001", "section": "Steps"}], "grounded": True, "model": "deterministic",
        "latency_ms": 1.0}])
    publish(settings, "telemetry.site", "SiteSnapshot", [{
        "site": "demo", "window_start_ms": now - (120 - i) * 60_000, "window_end_ms": now - (119 - i) * 60_000,
        "grid_kw": 28000.0 + 20 * i, "it_kw": 23000.0 + 15 * i, "facility_kw": 28000.0 + 20 * i, "ess_soc_pct": 80.0,
        "ess_soh_pct": 97.0, "ess_kw": 0.0, "gpu_kw": None, "pue": 1.2, "price_per_mwh": None, "samples": 3,
        "devices": 3} for i in range(120)])
    publish(settings, "forecasts.peak", "PeakForecast", [{
        "site": "demo", "issued_ms": now, "horizon_s": 3600, "step_s": 900, "predicted_peak_kw": 33000.0,
        "predicted_peak_ms": now + 1_800_000, "threshold_kw": 31000.0,
        "points": [{"ts_ms": now + k * 900_000, "kw": 30000.0 + 500 * k, "lower_kw": 29000.0 + 400 * k,
                    "upper_kw": 31000.0 + 600 * k} for k in range(1, 5)],
        "explanation": "Grid draw should peak at 33,000 kW in 30 minutes, above the 31,000 kW threshold.",
        "model": "test"}])
    publish(settings, "alarms.clean", "CleanAlarm", [{
        "alarm": {"ts_ms": now, "site": "demo", "device": "pdu-a1", "device_type": "pdu", "source": "test",
                  "code": "PWR_PDU_INPUT_LOSS", "severity": "major", "state": "raise", "text": "input lost " + hostile,
                  "attributes": {}},
        "fingerprint": "fp-pdu", "duplicate_count": 4, "first_seen_ms": now - 50_000, "last_seen_ms": now,
        "flapping": False, "noise_score": 0.2, "noise": False, "decision_reason": "first raise",
        "reason_code": None, "noise_reason_code": None}])
    publish(settings, "deadletter", "DeadLetter", [{
        "topic": "alarms.raw", "partition": 0, "offset": 7, "key": None, "value": b"junk", "error_kind": "decode",
        "error": "not Avro", "agent": "dedup", "message_ts_ms": now}])
    stats = ViewsSink(settings).run(threading.Event(), exit_when_idle=True)
    assert stats["rows"].get("actions_approved") == 2, stats


def wait_text(driver, css: str, text: str, timeout_s: float = SAFETY_NET_S):
    return WebDriverWait(driver, timeout_s).until(
        expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_overview_chart_renders_with_data(kafka_settings, chromium):
    fill_views(kafka_settings)
    server, thread = start_noc(kafka_settings)
    try:
        browser_login(chromium, server.url, "vic")
        WebDriverWait(chromium, SAFETY_NET_S).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#chart[data-points] .scatterlayer .trace"))
        assert chromium.find_element(By.ID, "chart").get_attribute("data-points") == str(120 + 4)
        traces = chromium.find_elements(By.CSS_SELECTOR, "#chart .scatterlayer .trace")
        assert len(traces) == 6  # grid, facility, IT, the band's two edges, the forecast
        legend = chromium.find_element(By.CSS_SELECTOR, "#chart .legend").text
        assert "grid import" in legend and "forecast band" in legend
        chart_text = chromium.find_element(By.ID, "chart").text
        assert "planner's target 31,000 kW" in chart_text and "time (UTC)" in chart_text
        body = chromium.find_element(By.TAG_NAME, "body").text
        assert "above the 31,000 kW threshold" in body and "30,380 kW" in body  # the last minute's grid import
        assert "1.23" in body and "80 %" in body and "health 97 %" in body and "1 rejected message" in body  # PUE 30,380 / 24,785 kW
        # plotly.js runs under the page's Content-Security-Policy; the one refusal left is the stylesheet of the
        # map library bundled in plotly.min.js, which the chart does not use
        errors = [e for e in console_errors(chromium) if "plotly.min.js" not in e or "inline style" not in e]
        assert not errors, errors
        layers = chromium.find_elements(By.CSS_SELECTOR, "#chart .main-svg")
        assert layers and {layer.value_of_css_property("position") for layer in layers} == {"absolute"}
    finally:
        stop_noc(server, thread)


def test_incident_page_shows_narration_sop_steps_members_and_path(kafka_settings, chromium):
    fill_views(kafka_settings)
    server, thread = start_noc(kafka_settings)
    try:
        browser_login(chromium, server.url, "vic")
        chromium.get(server.url + "incidents")
        row = chromium.find_element(By.CSS_SELECTOR, "tr.sev-critical")
        assert "ups-a (ups): UPS_ON_BATTERY" in row.text and "Mains lost at ups-a" in row.text
        row.find_element(By.LINK_TEXT, "inc-ups-1").click()
        narration = WebDriverWait(chromium, SAFETY_NET_S).until(
            expected_conditions.presence_of_element_located((By.ID, "narration")))
        assert "Mains lost at ups-a: check the input breaker." in narration.text
        sops = chromium.find_element(By.ID, "sops").text
        assert "SOP-PWR-001 §Steps" in sops and "Check the remaining UPS battery runtime" in sops
        members = chromium.find_element(By.ID, "members").text
        assert members.index("UPS_ON_BATTERY") < members.index("PWR_PDU_INPUT_LOSS")  # in time order
        assert "kernel: pdu-a1 input voltage lost" in chromium.find_element(By.ID, "log-lines").text
        assert "ups-a → pdu-a1" in chromium.find_element(By.ID, "paths").text
    finally:
        stop_noc(server, thread)


def test_hostile_text_in_alarms_and_incidents_renders_inert(kafka_settings, chromium):
    fill_views(kafka_settings, hostile=HOSTILE)
    server, thread = start_noc(kafka_settings)
    try:
        browser_login(chromium, server.url, "noc-tester")
        for path, where in (("incidents", "tr.sev-critical"), ("incidents/inc-ups-1", "#members"),
                            ("alarms", "#alarms")):
            chromium.get(server.url + path)
            wait_text(chromium, where, "<script>window.pwned = 1</script>")  # shown as text
            time.sleep(0.5)  # a live update swaps the same markup in again: it must not run either
            assert chromium.execute_script("return window.pwned === undefined")
            assert chromium.title != "pwned" and not chromium.find_elements(By.CSS_SELECTOR, "#live img")
    finally:
        stop_noc(server, thread)


def test_labelling_an_alarm_reaches_operator_feedback(kafka_settings, read_topic, chromium):
    fill_views(kafka_settings)
    server, thread = start_noc(kafka_settings)
    try:
        browser_login(chromium, server.url, "noc-tester")
        chromium.get(server.url + "alarms")
        row = chromium.find_element(By.CSS_SELECTOR, "#alarms tbody tr")
        assert "PWR_PDU_INPUT_LOSS" in row.text and "4" in row.text.split()  # the dedup count
        row.find_element(By.CSS_SELECTOR, "button[value=alarm_noise]").click()
        flash = WebDriverWait(chromium, SAFETY_NET_S).until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#flash .banner")))
        assert "fp-pdu labelled noise by noc-tester" in flash.text
        codec = Codec.default()
        sent = [codec.decode_as("Feedback", m.value()) for m in read_topic(kafka_settings, "operator.feedback")]
        assert [(fb["target_id"], fb["kind"], fb["operator"]) for fb in sent] == [("fp-pdu", "alarm_noise", "noc-tester")]
        assert sent[0]["signature"]  # signed like approvals
    finally:
        stop_noc(server, thread)


def test_approving_updates_the_page_live_and_reaches_the_guard(kafka_settings, read_topic, chromium):
    """The real guard asks for approval, the operator clicks Approve on a page that is never reloaded, and the
    guard's verdict (approved, by the operator) replaces the buttons in place."""
    settings = kafka_settings
    now = int(time.time() * 1000)
    publish(settings, "telemetry.site", "SiteSnapshot", [{
        "site": "demo", "window_start_ms": now - 60_000, "window_end_ms": now, "grid_kw": 30000.0, "it_kw": 25000.0,
        "facility_kw": 30000.0, "ess_soc_pct": 80.0, "ess_soh_pct": 97.0, "ess_kw": 0.0, "gpu_kw": None, "pue": 1.2,
        "price_per_mwh": None, "samples": 3, "devices": 3}])
    guard = GuardProcessor(settings, load_policy(settings.policy), load_site(settings.topology))
    sink = ViewsSink(settings)
    server = None
    with Running(guard, safety_net_s=300), Running(sink, safety_net_s=300):
        server, thread = start_noc(settings, LiveViews(sink))
        try:
            browser_login(chromium, server.url, "noc-tester")
            chromium.get(server.url + "actions")
            chromium.execute_script("window.sameDocument = true")  # gone if the page ever reloads
            publish(settings, "actions.proposed", "Action",
                    [action("live-ask", "slurm_suspend", target="opsloop", partitions="batch", max_jobs=4, gpus=8)])
            button = WebDriverWait(chromium, SAFETY_NET_S).until(expected_conditions.element_to_be_clickable(
                (By.CSS_SELECTOR, "#action-live-ask button[value=approve_action]")))
            clicked = time.monotonic()
            button.click()
            wait_text(chromium, "#flash", "live-ask: approval sent to the guard as noc-tester")
            wait_text(chromium, "#action-live-ask .verdict", "approved by noc-tester")
            print(f"approval click to verdict on the page: {time.monotonic() - clicked:.2f} s")
            assert chromium.execute_script("return window.sameDocument === true")
            assert not chromium.find_elements(By.CSS_SELECTOR, "#action-live-ask button")
        finally:
            stop_noc(server, thread)
    codec = Codec.default()
    verdicts = [codec.decode_as("ApprovedAction", m.value()) for m in read_topic(settings, "actions.approved")]
    assert [(v["verdict"], v["approved_by"]) for v in verdicts if v["action"]["action_id"] == "live-ask"] == \
        [("needs_approval", None), ("approved", "noc-tester")]


def test_noc_pages_in_chromium_approve_an_action_and_show_the_audit_trail(kafka_settings, read_topic, chromium):
    fill_views(kafka_settings)
    server, thread = start_noc(kafka_settings)
    try:
        browser_login(chromium, server.url, "vic")  # a viewer sees the action but gets no buttons
        chromium.get(server.url + "actions")
        pending = chromium.find_elements(By.CSS_SELECTOR, "tr.pending")
        assert len(pending) == 1 and "waiting for an operator" in pending[0].text
        assert not chromium.find_elements(By.CSS_SELECTOR, "button[value=approve_action]")
        browser_login(chromium, server.url, "noc-tester")
        body = chromium.find_element(By.TAG_NAME, "body").text
        assert "approving as noc-tester (operator)" in body
        assert "above the 31,000 kW threshold" in body and "1 rejected message" in body
        assert "1 action waiting for approval" in body
        chromium.get(server.url + "actions")
        assert "Actions (1 waiting for approval)" in chromium.find_element(By.TAG_NAME, "body").text
        pending = chromium.find_elements(By.CSS_SELECTOR, "tr.pending")
        assert len(pending) == 1 and "noc-ask" in pending[0].text
        assert "Suspend the selected jobs on opsloop" in pending[0].text  # the advisor's sentence
        pending[0].find_element(By.CSS_SELECTOR, "button[value=approve_action]").click()
        notice = WebDriverWait(chromium, SAFETY_NET_S).until(
            expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, ".notice")))
        assert "noc-ask: approval sent to the guard as noc-tester" in notice.text
        codec = Codec.default()
        sent = [(m.key(), codec.decode_as("Feedback", m.value()))
                for m in read_topic(kafka_settings, "operator.feedback")]
        assert [(key, fb["target_id"], fb["kind"], fb["operator"]) for key, fb in sent] == \
            [(b"noc-ask", "noc-ask", "approve_action", "noc-tester")]
        # the audit trail reaches its view, and an admin reads it on the page
        ViewsSink(kafka_settings, topics=["noc.audit"]).run(threading.Event(), exit_when_idle=True)
        con = open_db(kafka_settings.duckdb_file, read_only=True)
        try:
            audit = con.execute("SELECT event, actor, role, target, client FROM v_audit ORDER BY time").fetchall()
        finally:
            con.close()
        assert [row[:4] for row in audit] == [("login", "vic", "viewer", None), ("login", "noc-tester", "operator", None),
                                              ("approve_action", "noc-tester", "operator", "noc-ask")]
        assert {row[4] for row in audit} == {"127.0.0.1"}
        browser_login(chromium, server.url, "ada")
        chromium.find_element(By.LINK_TEXT, "Audit trail").click()
        trail = WebDriverWait(chromium, SAFETY_NET_S).until(
            expected_conditions.presence_of_element_located((By.ID, "audit"))).text
        assert "approve_action noc-tester operator noc-ask" in trail
    finally:
        stop_noc(server, thread)


def test_forged_and_malformed_posts_send_nothing(kafka_settings, read_topic):
    fill_views(kafka_settings)
    server, thread = start_noc(kafka_settings)
    host, port = server.server_address[:2]
    origin = f"http://{host}:{port}"
    try:
        cookie, token = http_login(server, "noc-tester")
        viewer_cookie, viewer_token = http_login(server, "vic")
        form = {"action_id": "noc-ask", "kind": "approve_action"}
        base = {"Host": f"{host}:{port}", "Origin": origin, "Content-Type": "application/x-www-form-urlencoded"}
        forged = [
            ({**base}, {**form, "csrf_token": token}, 401),  # no session
            ({**base, "Cookie": cookie}, {**form, "csrf_token": "forged"}, 403),  # bad CSRF token
            ({**base, "Cookie": cookie, "Origin": "null"}, {**form, "csrf_token": token}, 403),
            ({k: v for k, v in base.items() if k != "Origin"} | {"Cookie": cookie}, {**form, "csrf_token": token}, 403),
            ({**base, "Cookie": cookie, "Host": f"rebound.example:{port}", "Origin": f"http://rebound.example:{port}"},
             {**form, "csrf_token": token}, 421),  # DNS rebinding: the attacker's name, the NOC's address
            ({**base, "Cookie": viewer_cookie}, {**form, "csrf_token": viewer_token}, 403),  # a viewer
        ]
        for headers, body, status in forged:
            conn = http.client.HTTPConnection(host, port, timeout=30)
            conn.request("POST", "/feedback", urlencode(body), headers)
            resp = conn.getresponse()
            assert resp.status == status, (headers, body, resp.status, resp.read()[:200])
            conn.close()
        for length, status in (("abc", 400), ("-1", 400), (str(200 * 1024 * 1024), 413)):
            conn = http.client.HTTPConnection(host, port, timeout=30)
            conn.putrequest("POST", "/feedback")
            for name, value in {**base, "Cookie": cookie, "Content-Length": length}.items():
                if name != "Host":
                    conn.putheader(name, value)
            conn.endheaders()
            assert conn.getresponse().status == status, length
            conn.close()
    finally:
        stop_noc(server, thread)
    assert read_topic(kafka_settings, "operator.feedback") == []
    codec = Codec.default()
    audit = sorted((codec.decode_as("AuditEvent", m.value()) for m in read_topic(kafka_settings, "noc.audit")),
                   key=lambda a: a["ts_ms"])
    assert [(a["event"], a["actor"]) for a in audit] == [("login", "noc-tester"), ("login", "vic"), ("denied", "vic")]


def test_with_views_the_page_reads_while_the_sink_in_the_same_process_writes(kafka_settings):
    from urllib.request import Request, urlopen

    def incident(incident_id: str, root: str) -> dict:
        now = int(time.time() * 1000)
        return {"incident_id": incident_id, "site": "demo", "state": "open", "opened_ms": now, "updated_ms": now,
                "resolved_ms": None, "root_device": root, "root_device_type": "pdu", "root_code": "PWR_PDU_BREAKER_TRIP",
                "severity": "major", "member_count": 1, "members": [], "summary": f"{root} tripped",
                "merged_into": None}

    def page_once(url: str, text: str) -> str:
        for _ in range(SAFETY_NET_S * 5):  # the sink commits about every batch: poll, never assume a time
            body = urlopen(Request(url, headers={"Cookie": cookie}), timeout=10).read().decode()
            if text in body:
                break
            time.sleep(0.2)
        return body

    sink, stop = ViewsSink(kafka_settings), threading.Event()
    agent = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    agent.start()
    server, thread = start_noc(kafka_settings, LiveViews(sink))
    cookie, _ = http_login(server, "vic")
    try:
        publish(kafka_settings, "incidents", "Incident", [incident("inc-pdu-1", "pdu-a1")])
        assert "pdu-a1 (pdu): PWR_PDU_BREAKER_TRIP" in page_once(server.url + "incidents", "pdu-a1 (pdu)")
        publish(kafka_settings, "incidents", "Incident", [incident("inc-pdu-2", "pdu-b2")])  # the sink still runs
        body = page_once(server.url + "incidents", "pdu-b2 (pdu)")
        assert "pdu-b2 (pdu): PWR_PDU_BREAKER_TRIP" in body and "written by this process" in body
    finally:
        stop_noc(server, thread)
        stop.set()
        agent.join(30)


def test_sources_page_shows_each_running_agents_health(kafka_settings, chromium):
    """The real guard and views agents report on agents.health from their own consumers (no admin client anywhere);
    the Sources page shows each as a row: consumer group, lag, messages handled, last input, commit and output, and
    the guard's dead letters of the last hour, updated live."""
    settings = kafka_settings
    publish(settings, "deadletter", "DeadLetter", [{
        "topic": "actions.proposed", "partition": 0, "offset": 3, "key": None, "value": b"junk", "error_kind": "decode",
        "error": "not Avro", "agent": "guard", "message_ts_ms": int(time.time() * 1000)}])
    publish(settings, "actions.proposed", "Action",
            [action("health-ask", "slurm_suspend", target="opsloop", partitions="batch", max_jobs=1, gpus=1)])
    guard = GuardProcessor(settings, load_policy(settings.policy), load_site(settings.topology))
    sink = ViewsSink(settings)
    guard.health_every_s = sink.health_every_s = 0.5
    with Running(guard, safety_net_s=300), Running(sink, safety_net_s=300):
        server, thread = start_noc(settings, LiveViews(sink))
        try:
            browser_login(chromium, server.url, "vic")
            chromium.get(server.url + "sources")

            def agent_rows(driver):  # read in one go: the live part may be swapped in meanwhile
                return driver.execute_script("return Array.from(document.querySelectorAll('#agents tbody tr'), "
                                             "r => Array.from(r.cells, c => c.textContent.trim()))")

            def guard_row(driver):
                rows = agent_rows(driver)
                guard = [r for r in rows if r[0] == "guard" and r[7] != "0" and r[9] and r[10]]
                return (guard[0], rows) if guard and "views" in [r[0] for r in rows] else False

            cells, rows = WebDriverWait(chromium, SAFETY_NET_S).until(guard_row)
            assert cells[1].startswith("guard@") and cells[2] == "reporting" and cells[4] == settings.group("guard")
            assert cells[6] == "0 messages" and cells[11] == "1", cells  # caught up; the one dead letter naming it
            assert [r[2] for r in rows if r[0] == "views"] == ["reporting"]  # the views agent reports too
        finally:
            stop_noc(server, thread)
