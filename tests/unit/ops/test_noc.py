"""The NOC server without a broker: clear pages when the DuckDB file is missing, and no feedback is
sent for anything but an action waiting for approval (those answers come before any Kafka call)."""

from __future__ import annotations

import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest

from opsloop.connectors.duckdb import open_db
from opsloop.ops.noc import make_server
from opsloop.config.settings import Settings

pytestmark = pytest.mark.unit


@pytest.fixture
def noc(tmp_path):
    settings = Settings(duckdb_path=tmp_path / "ops.duckdb", broker="127.0.0.1:9", topic_prefix="t.")
    server = make_server(settings, "127.0.0.1", 0, "ana")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def fetch(url: str, form: dict | None = None, headers: dict | None = None) -> tuple[int, str]:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers or {}), timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_missing_duckdb_file_is_a_clear_page(noc):
    status, page = fetch(noc.url)
    assert status == 503
    assert "No DuckDB file at" in page and "opsloop worker --agents views" in page
    status, page = fetch(noc.url + "feedback", {"action_id": "a1", "kind": "approve_action"})
    assert status == 503 and "Nothing sent" in page


def test_empty_views_render(noc):
    open_db(noc.settings.duckdb_file).close()  # the sink's tables and views, no rows
    status, page = fetch(noc.url)
    assert status == 200 and "No actions proposed" in page and "approving as <strong>ana</strong>" in page


def test_feedback_only_for_pending_actions(noc):
    open_db(noc.settings.duckdb_file).close()
    status, page = fetch(noc.url + "feedback", {"action_id": "nobody-proposed-this", "kind": "approve_action"})
    assert status == 409 and "not waiting for approval" in page
    status, page = fetch(noc.url + "feedback", {"action_id": "a1", "kind": "delete_everything"})
    assert status == 400 and "Bad feedback" in page
    assert fetch(noc.url + "nowhere")[0] == 404


def test_feedback_from_another_site_is_refused(noc):
    open_db(noc.settings.duckdb_file).close()
    status, page = fetch(noc.url + "feedback", {"action_id": "a1", "kind": "approve_action"},
                         {"Origin": "http://elsewhere.example"})
    assert status == 403 and "Nothing sent" in page
    host = noc.url.split("/")[2]
    assert fetch(noc.url + "feedback", {"action_id": "a1", "kind": "approve_action"},
                 {"Origin": f"http://{host}"})[0] == 409  # same origin: on to the usual checks
