"""Slurm job control over slurmrestd's REST API (for a pipeline that runs off the head node).

The API version is discovered from the server's OpenAPI document: the newest
``/slurm/v0.0.NN/jobs`` it serves. Authentication is a JWT (``scontrol token``)
sent as ``X-SLURM-USER-TOKEN`` with ``X-SLURM-USER-NAME`` (by default the user
the token was issued for, read from its ``sun`` claim). The token is given, or
kept in a file that is read again for every request, so that whoever issues it
can renew it there (``opsloop slurm up --foreground --token-file``).

What the API can do decides what this backend does; measured on Slurm 22.05
(plugin v0.0.38): list jobs (``GET /jobs``), hold and release (``POST
/job/{id}`` with ``{"hold": true|false}``), cancel (``DELETE /job/{id}``). It
has no suspend, resume or requeue: those raise ``UnsupportedCommand`` naming the
Slurm release and the ``scontrol`` backend, which can.

The standard library's urllib is used on purpose: three verbs on one host, no
extra dependency for the pipeline's image.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

from opsloop.connectors.slurm import SlurmError, UnsupportedCommand, check_job_id, parse_gpus
from opsloop.models.jobs import Job

HOLD_BODY = {"hold": {"hold": True}, "release": {"hold": False}}
SUPPORTED = frozenset({"hold", "release", "cancel"})
JOBS_PATH = re.compile(r"^/slurm/(v\d+\.\d+\.\d+)/jobs$")


def newest_version(openapi: dict) -> str:
    """The newest ``vX.Y.Z`` with a jobs listing among the document's paths.

    >>> newest_version({"paths": {"/slurm/v0.0.37/jobs": {}, "/slurm/v0.0.38/jobs": {}, "/openapi": {}}})
    'v0.0.38'
    """
    versions = [m.group(1) for path in openapi.get("paths", {}) if (m := JOBS_PATH.match(path))]
    if not versions:
        raise SlurmError("slurmrestd serves no /slurm/v*/jobs: is an openapi/v* plugin loaded (-s)?")
    return max(versions, key=lambda v: tuple(int(x) for x in v[1:].split(".")))


def token_user(token: str) -> str:
    """The user a Slurm JWT was issued for (its ``sun`` claim); the signature is the server's to check."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["sun"])
    except (IndexError, ValueError, KeyError) as exc:
        raise SlurmError("SLURM_JWT is not a Slurm token (no 'sun' claim); set slurm_rest_user") from exc


def read_token_file(path: Path) -> str:
    """The JWT in a file (a mounted secret, or one its issuer renews); a clear error names the file, never a token.

    >>> read_token_file(Path("/nonexistent/jwt"))
    Traceback (most recent call last):
    ...
    opsloop.connectors.slurm.SlurmError: Slurm token file /nonexistent/jwt: cannot read it (No such file or directory)
    """
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise SlurmError(f"Slurm token file {path}: cannot read it ({exc.strerror})") from None
    if not token:
        raise SlurmError(f"Slurm token file {path}: empty")
    return token


def job_from_rest(row: dict) -> Job:
    """One entry of ``GET /jobs`` as a ``Job``; array tasks get squeue's ``<array job>_<task>`` id."""
    task = row.get("array_task_id")
    job_id = f"{row['array_job_id']}_{task}" if row.get("array_job_id") and task is not None else str(row["job_id"])
    priority = row.get("priority")
    return Job(job_id, row.get("partition") or "", row.get("job_state") or "",
               int(priority) if isinstance(priority, int) else 0, parse_gpus(row.get("tres_per_node") or ""),
               row.get("name") or "")


class RestBackend:
    name = "slurmrestd"

    def __init__(self, url: str, token: str, user: str | None = None, timeout_s: float = 30.0,
                 token_file: Path | None = None):
        self.url = url.rstrip("/")
        self._token = token
        self.token_file = Path(token_file) if token_file is not None else None  # read per request: it may be renewed
        self.user = user or token_user(self._current_token())
        self.timeout_s = timeout_s
        self._version: str | None = None
        self.slurm_release = "unknown"
        self._numeric: dict[str, str] = {}  # "123_4" → the task's own job id, which the job endpoints take

    def __repr__(self) -> str:  # never print the token
        return f"RestBackend({self.url!r}, user={self.user!r})"

    # -- HTTP -----------------------------------------------------------------------------

    def _current_token(self) -> str:
        return read_token_file(self.token_file) if self.token_file is not None else self._token

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "X-SLURM-USER-NAME": self.user, "X-SLURM-USER-TOKEN": self._current_token(),
            "Accept": "application/json", **({"Content-Type": "application/json"} if data else {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                text = response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace").strip()
            raise SlurmError(f"slurmrestd {method} {path}: HTTP {exc.code} {_errors(detail) or detail[:200]}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SlurmError(f"slurmrestd at {self.url} unreachable: {getattr(exc, 'reason', exc)}") from None
        try:
            doc = json.loads(text)
        except ValueError:
            raise SlurmError(f"slurmrestd {method} {path}: not JSON: {text[:200]!r}") from None
        release = doc.get("meta", {}).get("Slurm", {}).get("release")
        if release:
            self.slurm_release = release
        if doc.get("errors"):  # 22.05 answers some failures with HTTP 200 and an errors list
            raise SlurmError(f"slurmrestd {method} {path}: {_errors(doc)}")
        return doc

    def _base(self) -> str:
        if self._version is None:
            version = newest_version(self._request("GET", "/openapi/v3"))
            try:  # the first call that reaches slurmctld: a bad token fails here (22.05 says HTTP 500)
                self._request("GET", f"/slurm/{version}/ping")
            except SlurmError as exc:
                source = f"the token in {self.token_file}" if self.token_file is not None else "SLURM_JWT"
                raise SlurmError(f"{exc}; is {source} a valid, unexpired token for user {self.user!r}?") from None
            self._version = version
        return f"/slurm/{self._version}"

    # -- the backend interface ------------------------------------------------------------

    def check(self, command: str) -> None:
        base = self._base()
        if command not in SUPPORTED:
            raise UnsupportedCommand(
                f"{command} is not offered by the REST API of Slurm {self.slurm_release} (slurmrestd "
                f"openapi/{base.rsplit('/', 1)[1]}: jobs, hold, release, cancel only); "
                f"use slurm_backend=scontrol on a host with the Slurm client")

    def jobs(self) -> list[Job]:
        rows = self._request("GET", f"{self._base()}/jobs").get("jobs", [])
        jobs = [job_from_rest(row) for row in rows]
        self._numeric = {job.job_id: str(row["job_id"]) for job, row in zip(jobs, rows)}
        return jobs

    def act(self, command: str, job_id: str) -> None:
        self.check(command)
        check_job_id(job_id)
        target = check_job_id(self._numeric.get(job_id, job_id))  # the server's id too: only digits reach the URL
        if "_" in target:  # never act on a whole array for one task
            raise SlurmError(f"array task {job_id} not in the last job listing; list jobs first")
        if command == "cancel":
            self._request("DELETE", f"{self._base()}/job/{target}")
        else:
            self._request("POST", f"{self._base()}/job/{target}", HOLD_BODY[command])


def _errors(doc) -> str:
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except ValueError:
            return ""
    return "; ".join(f"{e.get('error', '')} ({e.get('description') or e.get('source', '')})".strip()
                     for e in doc.get("errors", []) if isinstance(e, dict))
