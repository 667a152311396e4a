"""The scale bench's peers: the same rollup in another Python stream processor, beside ours, in the same run.

Quix Streams (``ops/bench/quix_rollup.py``) cannot share opsloop's environment: quixstreams 3.28 requires
confluent-kafka < 2.13 and opsloop pins 2.16. The bench installs it once into a venv of its own in the
opsloop cache (``<cache>/peers/quixstreams-<version>``, from the pins in ``quix-requirements.txt``) and runs
the peer there as a child process; nothing of it reaches opsloop's environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
import venv
from pathlib import Path

from opsloop.config.settings import Settings

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "quix-requirements.txt"
QUIX_VERSION = next(line.split("==")[1].strip() for line in REQUIREMENTS.read_text().splitlines()
                    if line.startswith("quixstreams=="))


def quix_python(cache_dir: Path) -> Path:
    """The Python of the Quix peer's venv, created and installed on first use (a marker file says it finished)."""
    home = Path(cache_dir) / "peers" / f"quixstreams-{QUIX_VERSION}"
    python, done = home / "bin" / "python", home / ".complete"
    if not done.exists():
        print(f"bench: installing Quix Streams {QUIX_VERSION} into a venv of its own ({home}) ...", flush=True)
        venv.create(home, with_pip=True, clear=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
        done.touch()
    return python


def quix_rollup(settings: Settings, points: int, grace_s: float = 3600.0, timeout_s: float = 600.0) -> dict:
    """Run the Quix rollup over ``settings``' telemetry.raw until ``points`` are folded in (or dropped as late);
    its report (points, late, wall_s, cpu_s, first, last)."""
    from opsloop.schemas.codec import SCHEMA_DIR

    python = quix_python(settings.cache_dir)
    cmd = [str(python), str(HERE / "quix_rollup.py"), "--broker", settings.broker,
           "--topic", settings.topic("telemetry.raw"), "--output", settings.topic("telemetry.site"),
           "--schema", str(SCHEMA_DIR / "TelemetryPoint.avsc"), "--points", str(points), "--grace-s", str(grace_s),
           "--window-s", str(settings.window_s), "--group", f"bench-quix-{uuid.uuid4().hex[:6]}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"the Quix rollup failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if report["points"] + report["late"] < points:
        print(done.stderr[-2000:], file=sys.stderr)
    return report
