"""A real single-node Apache Kafka (KRaft) on loopback, for the demo, tests and development.

The broker's jars come from the Java package registry through Maven (artifact
``org.apache.kafka:kafka_2.13``) into a cache outside the repository, once.
``start`` formats KRaft storage on first use and waits until the broker answers;
``stop`` ends it. Both are idempotent.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = "4.1.1"
HERE = Path(__file__).resolve().parent / "broker"  # pom, broker and logging config


class KafkaSetupError(RuntimeError):
    """The local broker cannot be installed or started; the message says what to do."""


@dataclass(frozen=True)
class LocalKafka:
    cache_dir: Path  # holds the downloaded distribution (shared by checkouts)
    state_dir: Path  # holds this broker's storage, config, log and pid file
    port: int = 9092
    version: str = KAFKA_VERSION
    heap: str = "768m"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def libs(self) -> Path:
        return self.cache_dir / f"kafka-{self.version}" / "libs"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "kafka.log"

    # -- install ---------------------------------------------------------------------------

    def install(self) -> Path:
        """Fetch the broker's jars with Maven unless already cached; returns the libs dir."""
        done = self.libs / ".complete"
        if done.exists():
            return self.libs
        _require("mvn", "Maven is needed once to fetch Apache Kafka (Debian: apt-get install maven)")
        _require("java", "Java 17+ runs the Kafka broker (Debian: apt-get install openjdk-17-jre-headless)")
        tmp = self.libs.with_name("libs.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = ["mvn", "-q", "-B", "-f", str(HERE / "pom.xml"), "dependency:copy-dependencies",
               f"-Dkafka.version={self.version}", "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise KafkaSetupError(f"Maven could not fetch Apache Kafka {self.version}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
        shutil.rmtree(self.libs, ignore_errors=True)
        tmp.rename(self.libs)
        done.touch()
        return self.libs

    # -- run -------------------------------------------------------------------------------

    def _java(self, *args: str) -> list[str]:
        return ["java", f"-Xmx{self.heap}", "-Xms256m", "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={HERE / 'log4j2.properties'}",
                "-cp", str(self.libs / "*"), *args]

    def _config(self) -> Path:
        config = self.state_dir / "server.properties"
        text = (HERE / "server.properties").read_text().format(
            port=self.port, controller_port=self.port + 1, log_dirs=self.state_dir / "data")
        config.write_text(text)
        return config

    def _format(self, config: Path) -> None:
        if (self.state_dir / "data" / "meta.properties").exists():
            return
        # A cluster id is 16 random bytes in unpadded base64url, as `random-uuid` prints it; it may
        # start with "-", hence the "=" form of the option.
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        result = subprocess.run(self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cid}", "-c", str(config)),
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise KafkaSetupError(f"formatting KRaft storage failed:\n{result.stdout}{result.stderr}")

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None

    def start(self, timeout_s: float = 90.0) -> str:
        """Start the broker unless it runs already; returns a one-line status."""
        if self.pid() and broker_ready(self.bootstrap, 5.0):
            return f"Kafka {self.version} already running on {self.bootstrap} (pid {self.pid()})"
        _require("java", "Java 17+ runs the Kafka broker (Debian: apt-get install openjdk-17-jre-headless)")
        if _port_open(self.port):
            raise KafkaSetupError(f"port {self.port} is taken by another process; set OPSLOOP_KAFKA_PORT")
        self.install()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = self._config()
        self._format(config)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(self._java("kafka.Kafka", str(config)), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if proc.poll() is not None:
                raise KafkaSetupError(f"Kafka exited with {proc.returncode}; last log lines:\n{_tail(self.log_file)}")
            if broker_ready(self.bootstrap, 2.0):
                return f"Kafka {self.version} ready on {self.bootstrap} (pid {proc.pid})"
        raise KafkaSetupError(f"Kafka not ready after {timeout_s:.0f}s; last log lines:\n{_tail(self.log_file)}")

    def stop(self, timeout_s: float = 30.0) -> str:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return "Kafka is not running"
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return f"Kafka stopped (pid {pid})"


def broker_ready(bootstrap: str, timeout_s: float) -> bool:
    """True when a broker answers a metadata request."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka import KafkaException

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if not _port_open(int(port), host or "127.0.0.1"):
        return False
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000, "log_level": 0})
        meta = admin.list_topics(timeout=timeout_s)
        return bool(meta.brokers)
    except KafkaException:
        return False


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _require(tool: str, hint: str) -> None:
    if shutil.which(tool) is None:
        raise KafkaSetupError(f"`{tool}` not found on PATH. {hint}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@contextmanager
def scratch_topics(settings, prefix: str, extra_topics: tuple[str, ...] = ()):
    """For the demo and the bench: a running broker and the catalog's topics under a fresh prefix.

    Starts the local broker unless one runs, yields the settings pointed at it with the topics of
    ``prefixed_topics``, then deletes them and stops the broker if it was started here.
    """
    kafka = LocalKafka(settings.cache_dir, settings.data_dir / "kafka", port=settings.kafka_port)
    started = kafka.pid() is None
    print(kafka.start())
    try:
        with prefixed_topics(settings.replace(broker=kafka.bootstrap), prefix, extra_topics) as scratch:
            yield scratch
    finally:
        if started:
            print(kafka.stop())


@contextmanager
def prefixed_topics(settings, prefix: str, extra_topics: tuple[str, ...] = ()):
    """The catalog's topics (and ``extra_topics``, partitioned like ``telemetry.raw``) under ``prefix``.

    Yields the settings with that prefix; on exit deletes those topics and the processors' private
    ones (changelogs, detector state), which carry the prefix after the app id.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    from opsloop.connectors.kafka import admin, apply_catalog
    from opsloop.config.catalog import load_catalog

    scratch = settings.replace(topic_prefix=prefix)
    specs = load_catalog(scratch.topics_file)
    topics = [scratch.topic(name) for name in specs] + [scratch.topic(name) for name in extra_topics]
    client = admin(scratch)  # held: futures of a destroyed client fail
    try:
        apply_catalog(scratch, specs.values())
        partitions = specs["telemetry.raw"].partitions
        if extra_topics:
            new = [NewTopic(scratch.topic(name), partitions, 1) for name in extra_topics]
            for future in client.create_topics(new).values():
                future.result(30)
        yield scratch
    finally:
        try:
            private = f"{scratch.app_id}.{prefix}"
            topics += [t for t in client.list_topics(timeout=10).topics if t.startswith(private)]
            for topic, future in client.delete_topics(topics).items():
                try:
                    future.result(30)
                except KafkaException as exc:  # never created: nothing to clean up
                    print(f"left topic {topic}: {exc.args[0].str()}")
        finally:
            del client  # no client may outlive the broker it talks to (it would log reconnects)
