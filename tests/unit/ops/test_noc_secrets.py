"""The NOC's signing key never reaches its page, its errors or its logs; without a key nothing is sent."""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request

import pytest

from opsloop.config.settings import Settings
from opsloop.models.signing import SigningError
from opsloop.ops.noc import FeedbackSender, make_server

pytestmark = pytest.mark.unit
FEEDBACK_SECRET = "NOCUNITFEEDBACKSECRET-" + "5" * 20
VERDICT_SECRET = "NOCUNITVERDICTSECRET-" + "6" * 20


def test_the_page_and_its_errors_show_no_key(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    settings = Settings(data_dir=tmp_path, feedback_key=f"f1:{FEEDBACK_SECRET}", verdict_key=f"v1:{VERDICT_SECRET}")
    server = make_server(settings, "127.0.0.1", 0, "ana")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    pages = []
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for request in (urllib.request.Request(base + "/?notice=hello"),
                        urllib.request.Request(base + "/feedback", data=b"action_id=a-1&kind=approve_action",
                                               method="POST")):
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    pages.append(response.read().decode())
            except urllib.error.HTTPError as exc:  # no views yet: an error page, which must not leak either
                pages.append(exc.read().decode())
    finally:
        server.shutdown()
        server.server_close()
    assert len(pages) == 2
    for text in pages + [caplog.text, repr(server.sender.settings)]:
        assert FEEDBACK_SECRET not in text and VERDICT_SECRET not in text


def test_without_a_feedback_key_the_noc_sends_nothing_and_says_why(tmp_path):
    sender = FeedbackSender(Settings(data_dir=tmp_path))
    with pytest.raises(SigningError, match="OPSLOOP_FEEDBACK_KEY"):
        sender.send("a-1", "approve_action", "ana", 1)
    assert sender._prod is None  # no producer was even made
