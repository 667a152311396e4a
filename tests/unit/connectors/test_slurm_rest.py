"""The REST backend's pure parts: version discovery, token user, job rows (no server needed)."""

from __future__ import annotations

import base64
import json

import pytest

from opsloop.connectors.slurm import SlurmError
from opsloop.connectors.slurm_rest import RestBackend, job_from_rest, newest_version, token_user
from opsloop.models.jobs import Job

pytestmark = pytest.mark.unit


def test_the_newest_plugin_version_with_a_jobs_listing_wins():
    paths = {"/slurm/v0.0.9/jobs": {}, "/slurm/v0.0.38/jobs": {}, "/slurm/v0.0.39/ping": {}, "/slurmdb/v0.0.40/jobs": {}}
    assert newest_version({"paths": paths}) == "v0.0.38"
    with pytest.raises(SlurmError, match="no /slurm/v\\*/jobs"):
        newest_version({"paths": {"/openapi": {}}})


def _token(claims: dict) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJIUzI1NiJ9.{body}.sig"


def test_the_user_comes_from_the_token_unless_given():
    token = _token({"exp": 1, "iat": 0, "sun": "opsloop"})
    assert token_user(token) == "opsloop"
    backend = RestBackend("http://127.0.0.1:1/", token)
    assert backend.user == "opsloop" and backend.url == "http://127.0.0.1:1"
    assert token not in repr(backend)
    assert RestBackend("http://h", "x", user="svc").user == "svc"
    with pytest.raises(SlurmError, match="not a Slurm token"):
        token_user("not-a-token")


def test_rows_become_jobs_like_squeues():
    row = {"job_id": 41, "partition": "batch", "job_state": "PENDING", "priority": 4294901759,
           "tres_per_node": "gres:gpu:2", "name": "x;y", "array_job_id": 0, "array_task_id": None}
    assert job_from_rest(row) == Job("41", "batch", "PENDING", 4294901759, 2, "x;y")
    task = {**row, "job_id": 43, "array_job_id": 40, "array_task_id": 3, "tres_per_node": None, "priority": None}
    assert job_from_rest(task) == Job("40_3", "batch", "PENDING", 0, 0, "x;y")


def test_an_unreachable_server_is_a_clear_error():
    with pytest.raises(SlurmError, match="unreachable"):
        RestBackend("http://127.0.0.1:9", "t", user="u", timeout_s=2).jobs()


class _FakeSlurmrestd:
    """Just enough of slurmrestd on a loopback port: the OpenAPI paths, ping and one job; it keeps every token sent."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        tokens = self.tokens = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                tokens.append(self.headers["X-SLURM-USER-TOKEN"])
                doc = {"/openapi/v3": {"paths": {"/slurm/v0.0.38/jobs": {}}},
                       "/slurm/v0.0.38/ping": {"pings": []},
                       "/slurm/v0.0.38/jobs": {"jobs": [{"job_id": 7, "partition": "batch", "job_state": "PENDING",
                                                         "priority": 1, "tres_per_node": "gres:gpu:1", "name": "j"}]}}
                body = json.dumps(doc[self.path]).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slurmrestd():
    server = _FakeSlurmrestd()
    yield server
    server.close()


def test_a_token_file_is_read_again_for_each_request_so_its_issuer_can_renew_it(tmp_path, slurmrestd):
    token_file = tmp_path / "jwt"
    first, renewed = _token({"sun": "root", "n": 1}), _token({"sun": "root", "n": 2})
    token_file.write_text(first + "\n")
    backend = RestBackend(slurmrestd.url, "", token_file=token_file)
    assert backend.user == "root" and first not in repr(backend)
    assert [job.job_id for job in backend.jobs()] == ["7"]
    token_file.write_text(renewed + "\n")
    backend.jobs()
    assert slurmrestd.tokens[:3] == [first] * 3 and slurmrestd.tokens[-1] == renewed


def test_a_missing_or_empty_token_file_is_a_clear_error_that_names_the_file(tmp_path):
    from opsloop.connectors.slurm_rest import read_token_file

    with pytest.raises(SlurmError, match=f"{tmp_path / 'jwt'}: cannot read it"):
        RestBackend("http://127.0.0.1:9", "", token_file=tmp_path / "jwt")
    (tmp_path / "jwt").write_text("\n")
    with pytest.raises(SlurmError, match="jwt: empty"):
        read_token_file(tmp_path / "jwt")


def test_the_token_comes_from_env_slurm_jwt_first_then_from_the_file_the_settings_name(tmp_path):
    from opsloop.config.settings import Settings
    from opsloop.connectors.slurm_backends import make_backend

    token_file = tmp_path / "jwt"
    token_file.write_text(_token({"sun": "from-file"}))
    settings = Settings.from_env({"OPSLOOP_SLURM_BACKEND": "slurmrestd", "OPSLOOP_SLURM_JWT_FILE": str(token_file)})
    assert settings.slurm_jwt_file == token_file
    by_file = make_backend(settings, env={})
    assert (by_file.user, by_file.token_file) == ("from-file", token_file)
    by_env = make_backend(settings, env={"SLURM_JWT": _token({"sun": "from-env"})})
    assert (by_env.user, by_env.token_file) == ("from-env", None)
    with pytest.raises(SlurmError, match="SLURM_JWT.*or in the file OPSLOOP_SLURM_JWT_FILE names"):
        make_backend(Settings(slurm_backend="slurmrestd"), env={})
