"""The one typed, frozen settings object, built at the entry point from ``OPSLOOP_*`` env vars.

Nothing else in opsloop reads the environment: agents and connectors get a
``Settings`` (or the few fields they need) passed in.

>>> s = Settings.from_env({"OPSLOOP_BROKER": "kafka:9092", "OPSLOOP_WINDOW_S": "300"})
>>> s.broker, s.window_s, s.topic("telemetry.raw")
('kafka:9092', 300, 'telemetry.raw')
>>> secure = Settings.from_env({"OPSLOOP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "OPSLOOP_KAFKA_SASL_USERNAME": "rollup",
...                             "OPSLOOP_KAFKA_SASL_PASSWORD": "s3cret"})
>>> secure.kafka_password(), "s3cret" in repr(secure)
('s3cret', False)
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
from opsloop.config.clock import Clock

ENV_PREFIX = "OPSLOOP_"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


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
    # at-least-once: outputs delivered, then state, then offsets (a crash repeats outputs; sinks upsert) |
    # exactly-once: the stateful processors write outputs, state and offsets in one Kafka transaction
    delivery: str = "at-least-once"
    # single-object: Avro single-object encoding, decoded with schemas/ alone | confluent: Confluent's wire format
    # with ids from the schema registry at schema_registry_url (its ccompat API), for registry-aware consumers
    encoding: str = "single-object"
    schema_registry_url: str = ""
    deadletter_max_bytes: int = 262_144  # key + value a dead letter keeps; beyond it: cut, with size and hash
    unknown_names: str = "deadletter"  # deadletter: points and alarms of undeclared sites/devices; accept: keep them
    peaks_step_s: int = 900  # peaks agent planning step (15 min = the billing interval)
    peaks_control: str = "setpoint"  # setpoint: a fixed kW, any SunSpec PCS | grid_limit: the PCS holds the plan's
    # import limit on the site meter (a PCS that reads the meter: the twin's simulator with --meter-url)
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
    slurm_jwt_file: Path | None = None  # without env SLURM_JWT: the token in this file, read again on each request
    verify_window_s: float = 30.0  # how long an executed action has to show its effect
    haproxy_socket: str = "/run/haproxy/admin.sock"  # the LLM balancer's runtime API: UNIX path or host:port
    haproxy_metrics_url: str = "http://127.0.0.1:8405/metrics"  # its Prometheus exporter (stats frontend)
    vllm_metrics_urls: str = ""  # comma-separated /metrics of the vLLM servers behind it: p99 time to first token
    bacnet_device: str = "127.0.0.1:47808"  # the cooling plant's BACnet/IP device (host:port): the cooling sink's
    bacnet_setpoint_object: str = "analog-value,1"  # its supply-air setpoint (commandable)
    bacnet_inlet_objects: str = ""  # zone=object,...; empty: analog-input,1.. in the site file's zone order
    bacnet_priority: int = 8  # the command priority the sink writes at (8: manual operator)
    cooling_loop: bool = False  # the efficiency agent also proposes cooling_setpoint actions (the guard decides)
    # One clock for every process of a run (config/clock.py): at wall time clock_anchor_s the site's time was
    # clock_epoch_s, and it runs clock_speed times faster. clock_epoch_s 0: the wall clock. `opsloop twin` sets them.
    clock_epoch_s: float = 0.0
    clock_anchor_s: float = 0.0
    clock_speed: float = 1.0
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
    remote_write_token: str = field(default="", repr=False)  # bearer token a Prometheus remote_write must send
    # Kafka client security (every client: agents, sources, sinks, NOC, CLI, the Faust narrator).
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT (local demo only) | SASL_SSL | SSL | SASL_PLAINTEXT
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""  # this process's Kafka principal (User:<name>)
    kafka_sasl_password: str = field(default="", repr=False)  # secret: never logged, never in exception text
    kafka_sasl_password_file: Path | None = None  # or read it from a file (a mounted secret)
    kafka_ca_file: Path | None = None  # PEM CA bundle that signed the broker's certificate (default: system CAs)
    kafka_credentials_dir: Path | None = None  # <principal>.password per agent: a worker runs each as its own principal

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _convert(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "broker" not in values and "kafka_port" in values:  # no broker named: the local one `opsloop up` starts
            values["broker"] = f"127.0.0.1:{values['kafka_port']}"
        return cls(**values)

    def __post_init__(self):
        protocol = self.kafka_security_protocol.upper()
        if protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"OPSLOOP_KAFKA_SECURITY_PROTOCOL: expected one of {', '.join(SECURITY_PROTOCOLS)}, "
                             f"got {self.kafka_security_protocol!r}")
        if protocol.startswith("SASL") and not self.kafka_sasl_username:
            raise ValueError(f"OPSLOOP_KAFKA_SASL_USERNAME is required with {protocol}")
        if protocol.startswith("SASL") and not (self.kafka_sasl_password or self.kafka_sasl_password_file):
            raise ValueError(f"OPSLOOP_KAFKA_SASL_PASSWORD or OPSLOOP_KAFKA_SASL_PASSWORD_FILE is required with "
                             f"{protocol}")
        if self.peaks_control not in ("grid_limit", "setpoint"):
            raise ValueError(f"OPSLOOP_PEAKS_CONTROL: expected grid_limit or setpoint, got {self.peaks_control!r}")
        if self.delivery not in ("at-least-once", "exactly-once"):
            raise ValueError(f"OPSLOOP_DELIVERY: expected at-least-once or exactly-once, got {self.delivery!r}")
        if self.encoding not in ("single-object", "confluent"):
            raise ValueError(f"OPSLOOP_ENCODING: expected single-object or confluent, got {self.encoding!r}")
        if self.encoding == "confluent" and not self.schema_registry_url:
            raise ValueError("OPSLOOP_SCHEMA_REGISTRY_URL is required with OPSLOOP_ENCODING=confluent")
        if not self.clock_speed > 0:
            raise ValueError(f"OPSLOOP_CLOCK_SPEED: expected a number > 0, got {self.clock_speed!r}")

    def clock(self) -> Clock:
        """The clock every agent, sink, source and simulator of this process injects."""
        return Clock(self.clock_epoch_s, self.clock_anchor_s, self.clock_speed)

    def kafka_password(self) -> str:
        """The SASL password, from the setting or its file (never logged: keep it out of messages)."""
        if self.kafka_sasl_password:
            return self.kafka_sasl_password
        if self.kafka_sasl_password_file is None:
            return ""
        try:
            return self.kafka_sasl_password_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"OPSLOOP_KAFKA_SASL_PASSWORD_FILE: cannot read {self.kafka_sasl_password_file} "
                             f"({exc.strerror})") from None

    def as_principal(self, name: str) -> "Settings":
        """These settings as Kafka principal ``name`` when ``kafka_credentials_dir`` holds its password file (a
        worker running several agents gives each its own identity); otherwise unchanged."""
        if self.kafka_credentials_dir is None or not self.kafka_security_protocol.upper().startswith("SASL"):
            return self
        password_file = self.kafka_credentials_dir / f"{name}.password"
        if not password_file.exists():
            return self
        return self.replace(kafka_sasl_username=name, kafka_sasl_password="", kafka_sasl_password_file=password_file)

    def kafka_env(self) -> dict[str, str]:
        """The broker, Kafka security and clock settings as ``OPSLOOP_*`` env, for a child process."""
        names = ["broker", "kafka_security_protocol", "kafka_sasl_mechanism", "kafka_sasl_username",
                 "kafka_sasl_password", "kafka_sasl_password_file", "kafka_ca_file"]
        if not self.clock().is_wall:  # a child process runs on the same clock
            names += ["clock_epoch_s", "clock_anchor_s", "clock_speed"]
        values = {ENV_PREFIX + n.upper(): getattr(self, n) for n in names}
        return {k: str(v) for k, v in values.items() if v not in (None, "")}

    @property
    def kafka_secure(self) -> bool:
        return self.kafka_security_protocol.upper() != "PLAINTEXT"

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
