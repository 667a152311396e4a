"""Picks the Slurm backend ``Settings.slurm_backend`` names (kept apart so the backends import no factory)."""

from __future__ import annotations

import os
from typing import Mapping

from opsloop.connectors.slurm import ScontrolBackend, SlurmError

BACKENDS = ("scontrol", "slurmrestd", "pyslurm")


def make_backend(settings, env: Mapping[str, str] | None = None):
    """The backend ``settings.slurm_backend`` names; the REST token is a secret, read from env ``SLURM_JWT`` or,
    without it, from the file ``settings.slurm_jwt_file`` (a mounted secret, or a volume its issuer renews it in)."""
    if settings.slurm_backend == "scontrol":
        return ScontrolBackend(env)
    if settings.slurm_backend == "slurmrestd":
        from opsloop.connectors.slurm_rest import RestBackend

        token = (os.environ if env is None else env).get("SLURM_JWT", "")
        if not token and settings.slurm_jwt_file is None:
            raise SlurmError("slurmrestd backend needs a JWT in env SLURM_JWT (from `scontrol token lifespan=...`) "
                             "or in the file OPSLOOP_SLURM_JWT_FILE names")
        return RestBackend(settings.slurm_rest_url, token, user=settings.slurm_rest_user or None,
                           token_file=None if token else settings.slurm_jwt_file)
    if settings.slurm_backend == "pyslurm":
        from opsloop.connectors.slurm_pyslurm import PyslurmBackend

        return PyslurmBackend()
    raise SlurmError(f"unknown Slurm backend {settings.slurm_backend!r}: choose one of {', '.join(BACKENDS)}")
