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
