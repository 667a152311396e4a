"""The one typed, frozen settings object, built at the entry point from ``OPSLOOP_*`` env vars.

Nothing else in opsloop reads the environment: agents and connectors get a
``Settings`` (or the few fields they need) passed in.

>>> s = Settings.from_env({"OPSLOOP_BROKER": "kafka:9092", "OPSLOOP_WINDOW_S": "300"})
>>> s.broker, s.window_s, s.topic("telemetry.raw")
('kafka:9092', 300, 'telemetry.raw')
>>> Settings.from_env({"OPSLOOP_WINDOW_S": "soon"})
Traceback (most recent call last):
...
ValueError: OPSLOOP_WINDOW_S: expected int, got 'soon'
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

from opsloop.config.assets import DEMO_SITE, POLICY_FILE, TOPICS_FILE

ENV_PREFIX = "OPSLOOP_"


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "opsloop"


@dataclass(frozen=True)
class Settings:
    """Deployment settings; each field ``x`` is read from env ``OPSLOOP_X``."""

    broker: str = "127.0.0.1:9092"  # Kafka bootstrap servers
    app_id: str = "opsloop"  # consumer-group and Faust app prefix
    topic_prefix: str = ""  # namespaces every topic (tests, side-by-side deployments)
    topics_file: Path = TOPICS_FILE
    topology: Path = DEMO_SITE
    policy: Path = POLICY_FILE
    data_dir: Path = Path("var")
    duckdb_path: Path | None = None  # default: <data_dir>/opsloop.duckdb
    cache_dir: Path = field(default_factory=_default_cache)  # Kafka distribution, downloads
    kafka_port: int = 9092  # local broker started by `opsloop up`
    window_s: int = 60  # rollup tumbling window
    grace_s: int = 120  # how long a window waits for out-of-order data
    idle_close_s: float = 10.0  # close all windows after this long with every input caught up
    # Event times a stream may believe (models/event_time.py): at most max_future_s ahead of the processing
    # clock and of the stream's latest time (clock skew, gaps in a replayed file), at most max_past_s behind its
    # watermark (the retention of the raw topics). Outside them a record is dead-lettered as invalid.
    max_future_s: int = 86_400
    max_past_s: int = 7 * 86_400
    batch_size: int = 5000  # max messages per consume batch
    deadletter_max_bytes: int = 262_144  # key + value a dead letter keeps; beyond it: cut, with size and hash
    unknown_names: str = "deadletter"  # deadletter: points and alarms of undeclared sites/devices; accept: keep them
    peaks_step_s: int = 900  # peaks agent planning step (15 min = the billing interval)
    anomaly_checkpoint_s: float = 5.0  # how often the anomaly agent checkpoints detectors and commits
    llm_url: str | None = None  # OpenAI-compatible endpoint (vLLM in production)
    llm_model: str | None = None
    llm_timeout_s: float = 30.0  # one LLM narration; the deterministic one is published meanwhile
    llm_max_tokens: int = 400  # longest LLM draft, in tokens
    llm_concurrency: int = 2  # LLM narrations in flight per worker; more incidents get the deterministic one
    log_level: str = "info"
    pcs_modbus: str = "127.0.0.1:1502"  # host:port of the PCS's Modbus TCP server (the simulator by default)
    slurm_backend: str = "scontrol"  # scontrol | slurmrestd (REST; token in env SLURM_JWT) | pyslurm
    slurm_rest_url: str = "http://127.0.0.1:6820"  # slurmrestd base URL (slurm_backend=slurmrestd)
    slurm_rest_user: str = ""  # X-SLURM-USER-NAME; empty: the user the token was issued for
    verify_window_s: float = 30.0  # how long an executed action has to show its effect
    noc_port: int = 8088  # `opsloop noc` HTTP port
    noc_users_file: Path | None = None  # NOC users and password hashes; default: <data_dir>/noc/users.json
    noc_allowed_hosts: str = ""  # comma-separated Host names the NOC answers to, besides its loopback bind address
    noc_trusted_proxy: str = ""  # comma-separated addresses of the reverse proxy whose user header is believed
    noc_proxy_user_header: str = ""  # e.g. X-Forwarded-User: the proxy's authenticated user (needs the above)
    noc_tls_cert: Path | None = None  # PEM certificate chain: the NOC serves HTTPS itself
    noc_tls_key: Path | None = None  # PEM private key of that certificate
    noc_session_hours: float = 8.0  # a NOC session ends this long after login
    noc_idle_minutes: float = 30.0  # ... or after this long without a request
    # Secrets, never shown (repr=False) nor logged; parsed by models.signing.Keyring:
    verdict_key: str = field(default="", repr=False)  # kid:secret[,...]: the guard signs verdicts, the sinks verify
    feedback_key: str = field(default="", repr=False)  # kid:secret[,...]: the NOC signs Feedback, the guard verifies

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _convert(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    def topic(self, name: str) -> str:
        """Physical topic name of a catalog topic."""
        return self.topic_prefix + name

    @property
    def duckdb_file(self) -> Path:
        return self.duckdb_path or self.data_dir / "opsloop.duckdb"

    def group(self, agent: str) -> str:
        """Consumer group of an agent: one group per agent, shared by its workers."""
        return f"{self.app_id}.{self.topic_prefix}{agent}"


def _convert(name: str, type_name: str, raw: str):
    kind = str(type_name)
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if "Path" in kind:
            return Path(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}: expected {kind.split(' ')[0]}, got {raw!r}") from None
    return raw
