"""Fetch and cache the Compose Specification JSON schema.

No Docker engine is available where the tests run, so docker-compose.yml is
checked against the official Compose Specification schema instead. The schema
is not vendored: the `docker-compose==1.29.2` wheel on PyPI ships it as
``compose/config/compose_spec.json``, so it is fetched with pip once and cached.

Prefetch (the Makefile does this at install time)::

    python -m opsloop.ops.compose_schema [CACHE_DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SPEC_REQUIREMENT = "docker-compose==1.29.2"
SPEC_MEMBER = "compose/config/compose_spec.json"
CACHE_NAME = "compose_spec.json"


def _download_spec() -> bytes:
    """Download the docker-compose wheel with pip and return the schema bytes."""
    with tempfile.TemporaryDirectory(prefix="opsloop-compose-spec-") as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps",
             "--only-binary=:all:", SPEC_REQUIREMENT, "-d", tmp],
            check=True,
        )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download produced no wheel for {SPEC_REQUIREMENT}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            return wheel.read(SPEC_MEMBER)


def load_compose_schema(cache_dir: Path) -> dict:
    """Return the Compose Specification schema, downloading it on first use.

    The schema is cached as ``cache_dir/compose_spec.json``; later calls only
    read that file and need no network.
    """
    cache_dir = Path(cache_dir)
    cached = cache_dir / CACHE_NAME
    if not cached.is_file():
        data = _download_spec()
        json.loads(data)  # never cache something that is not JSON
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Write-then-rename so a concurrent or interrupted run never leaves half a file.
        fd, tmp_name = tempfile.mkstemp(dir=cache_dir, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp_name, cached)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
    return json.loads(cached.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m opsloop.ops.compose_schema",
        description="Prefetch the Compose Specification JSON schema into CACHE_DIR.",
    )
    parser.add_argument("cache_dir", type=Path, metavar="CACHE_DIR", nargs="?",
                        help="default: the settings' cache dir (OPSLOOP_CACHE_DIR)")
    args = parser.parse_args(argv)
    if args.cache_dir is None:
        from opsloop.config.settings import Settings

        args.cache_dir = Settings.from_env().cache_dir
    load_compose_schema(args.cache_dir)
    print(args.cache_dir / CACHE_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
