"""A real single-node Apache Kafka (KRaft) on loopback, for the demo, tests and development.

The broker's jars come from the Java package registry through Maven (artifact
``org.apache.kafka:kafka_2.13``) into a cache outside the repository, once.
``start`` formats KRaft storage on first use and waits until the broker answers;
``stop`` ends it. Both are idempotent.

``secure=True`` starts it the way a production cluster runs: one SASL_SSL listener
(SCRAM-SHA-512) and the StandardAuthorizer with no access unless an ACL grants it. At first
start it generates, under ``<state dir>/secure`` (mode 0700, never in the repository): a CA
and a broker certificate signed by it (Java's keytool; ``ca.pem`` is the clients' PEM
truststore), a random password per principal of ``config.access`` (``users/<name>.password``)
and its client settings (``users/<name>.env``). The SCRAM users are written into the
cluster metadata when the storage is formatted (``--add-scram``); principals added later are
created through the Admin API. ``admin`` is the super user.
"""

from __future__ import annotations

import base64
import os
import secrets
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



def free_port_pair() -> int:
    """A loopback port p with p+1 also free (a local broker's controller listens on p+1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no free pair of ports")

class KafkaSetupError(RuntimeError):
    """The local broker cannot be installed or started; the message says what to do."""


@dataclass(frozen=True)
class LocalKafka:
    cache_dir: Path  # holds the downloaded distribution (shared by checkouts)
    state_dir: Path  # holds this broker's storage, config, log and pid file
    port: int = 9092
    version: str = KAFKA_VERSION
    heap: str = "768m"
    secure: bool = False  # SASL_SSL (SCRAM-SHA-512) + TLS + ACL authorizer
    # In a local cluster (``LocalKafkaCluster``, plaintext only): this node's id, the controller quorum it joins
    # ("" = it is the quorum itself, on port + 1), the cluster id every node's storage is formatted with ("" = a new
    # one) and the replication of the internal topics (group offsets, transactions).
    node_id: int = 1
    voters: str = ""
    cluster_id: str = ""
    replication: int = 1

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- secure mode: certificates, users, client settings ---------------------------------

    @property
    def secure_dir(self) -> Path:
        return self.state_dir / "secure"

    @property
    def ca_file(self) -> Path:
        """The PEM CA certificate that signed the broker's: the clients' truststore."""
        return self.secure_dir / "ca.pem"

    def password_file(self, principal: str) -> Path:
        return self.secure_dir / "users" / f"{principal}.password"

    def client_settings(self, settings, principal: str = "admin"):
        """``settings`` pointed at this broker as ``principal`` (SASL_SSL when secure, the password by file)."""
        settings = settings.replace(broker=self.bootstrap)
        if not self.secure:
            return settings
        return settings.replace(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                                kafka_sasl_username=principal, kafka_sasl_password="",
                                kafka_sasl_password_file=self.password_file(principal), kafka_ca_file=self.ca_file)

    def _admin_config(self) -> dict:
        if not self.secure:
            return {}
        return {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "admin",
                "sasl.password": self.password_file("admin").read_text().strip(),
                "ssl.ca.location": str(self.ca_file)}

    def _certificates(self) -> tuple[Path, str]:
        return make_certificates(self.secure_dir)

    def _passwords(self) -> tuple[dict[str, str], list[str]]:
        """Each principal's password (made once, random) and the principals whose password is new."""
        from opsloop.config.access import principals

        passwords, new = {}, make_passwords(self.secure_dir / "users", principals())
        for name in principals():
            path = self.password_file(name)
            passwords[name] = path.read_text().strip()
            env = [f"OPSLOOP_BROKER={self.bootstrap}", "OPSLOOP_KAFKA_SECURITY_PROTOCOL=SASL_SSL",
                   "OPSLOOP_KAFKA_SASL_MECHANISM=SCRAM-SHA-512", f"OPSLOOP_KAFKA_SASL_USERNAME={name}",
                   f"OPSLOOP_KAFKA_SASL_PASSWORD_FILE={path}", f"OPSLOOP_KAFKA_CA_FILE={self.ca_file}"]
            write_private(path.with_suffix(".env"), "\n".join(env) + "\n")
        return passwords, new

    def _create_users(self, names: list[str], passwords: dict[str, str]) -> None:
        from opsloop.config.settings import Settings
        from opsloop.connectors.kafka import upsert_scram_users

        upsert_scram_users(self.client_settings(Settings(), "admin"), {n: passwords[n] for n in names})

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
        return self._fetch(HERE / "pom.xml", self.libs)

    @property
    def tools(self) -> Path:
        return self.cache_dir / f"kafka-{self.version}" / "tools"

    def install_tools(self) -> Path:
        """Fetch Kafka's own perf tools of the broker's release (``org.apache.kafka:kafka-tools``) unless cached;
        returns their classpath dir (``ProducerPerformance``, ``ConsumerPerformance``)."""
        return self._fetch(HERE / "tools-pom.xml", self.tools)

    def _fetch(self, pom: Path, into: Path) -> Path:
        done = into / ".complete"
        if done.exists():
            return into
        _require("mvn", "Maven is needed once to fetch Apache Kafka (Debian: apt-get install maven)")
        _require("java", "Java 17+ runs the Kafka broker (Debian: apt-get install openjdk-17-jre-headless)")
        tmp = into.with_name(f"{into.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = ["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
               f"-Dkafka.version={self.version}", "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise KafkaSetupError(f"Maven could not fetch Apache Kafka {self.version}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
        shutil.rmtree(into, ignore_errors=True)
        tmp.rename(into)
        done.touch()
        return into

    # -- run -------------------------------------------------------------------------------

    def _java(self, *args: str) -> list[str]:
        return ["java", f"-Xmx{self.heap}", "-Xms256m", "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={HERE / 'log4j2.properties'}",
                "-cp", str(self.libs / "*"), *args]

    def _config(self) -> Path:
        config = self.state_dir / "server.properties"
        controller = f"1@127.0.0.1:{self.port + 1}"
        places = {"port": self.port, "controller_port": self.port + 1, "log_dirs": self.state_dir / "data",
                  "node_id": self.node_id, "voters": self.voters or controller, "replication": self.replication,
                  "roles": "broker" if self.voters else "broker,controller",
                  "listeners": f"PLAINTEXT://127.0.0.1:{self.port}" + (
                      "" if self.voters else f",CONTROLLER://127.0.0.1:{self.port + 1}")}
        if self.secure:
            keystore, keystore_password = self._certificates()
            places.update(admin="admin", admin_password=self.password_file("admin").read_text().strip(),
                          keystore=keystore, keystore_password=keystore_password, ca_file=self.ca_file)
        text = (HERE / ("server-secure.properties" if self.secure else "server.properties")).read_text().format(**places)
        write_private(config, text)  # secure: it holds the keystore's and the super user's passwords
        return config

    def _formatted(self) -> bool:
        return (self.state_dir / "data" / "meta.properties").exists()

    def _format(self, config: Path, passwords: dict[str, str] | None = None) -> None:
        if self._formatted():
            return
        # A cluster id may start with "-", hence the "=" form of the option.
        cid = self.cluster_id or new_cluster_id()
        scram = [f"--add-scram=SCRAM-SHA-512=[name={name},password={password}]"
                 for name, password in (passwords or {}).items()]
        result = subprocess.run(self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cid}", "-c", str(config),
                                           *scram), capture_output=True, text=True)
        if result.returncode != 0:
            output = result.stdout + result.stderr
            for password in (passwords or {}).values():
                output = output.replace(password, "***")
            raise KafkaSetupError(f"formatting KRaft storage failed:\n{output}")

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None

    def start(self, timeout_s: float = 90.0) -> str:
        """Start the broker unless it runs already; returns a one-line status."""
        launched = self.launch()
        return launched if isinstance(launched, str) else self.wait_ready(*launched, timeout_s=timeout_s)

    def launch(self):
        """Start the broker's process without waiting for it: the process and the new SCRAM users (for
        ``wait_ready``), or a status line when it runs already."""
        mode = "SASL_SSL" if self.secure else "PLAINTEXT"
        if self.pid() and broker_ready(self.bootstrap, 5.0, self._admin_config()):
            return f"Kafka {self.version} already running on {self.bootstrap} ({mode}, pid {self.pid()})"
        _require("java", "Java 17+ runs the Kafka broker (Debian: apt-get install openjdk-17-jre-headless)")
        if _port_open(self.port):
            raise KafkaSetupError(f"port {self.port} is taken by another process; set OPSLOOP_KAFKA_PORT")
        self.install()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        marker = self.state_dir / "security"
        if self._formatted() and (marker.read_text().strip() if marker.exists() else "PLAINTEXT") != mode:
            raise KafkaSetupError(f"the broker storage in {self.state_dir} was made for another security mode than "
                                  f"{mode}; stop it and remove that directory, or use another one")
        passwords, new_users = {}, []
        if self.secure:
            self.secure_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            passwords, new_users = self._passwords()
            new_users = [] if not self._formatted() else new_users  # formatting adds them all
        config = self._config()
        self._format(config, passwords)
        marker.write_text(mode)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(self._java("kafka.Kafka", str(config)), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        return proc, new_users, passwords

    def wait_ready(self, proc: subprocess.Popen, new_users: list[str], passwords: dict[str, str],
                   timeout_s: float = 90.0) -> str:
        """Wait until the process ``launch`` started answers (or fails); returns a one-line status."""
        mode = "SASL_SSL" if self.secure else "PLAINTEXT"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if proc.poll() is not None:
                raise KafkaSetupError(f"Kafka exited with {proc.returncode}; last log lines:\n{_tail(self.log_file)}")
            if broker_ready(self.bootstrap, 2.0, self._admin_config()):
                if new_users:
                    self._create_users(new_users, passwords)
                return f"Kafka {self.version} ready on {self.bootstrap} ({mode}, pid {proc.pid})"
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


def new_cluster_id() -> str:
    """16 random bytes in unpadded base64url, as ``random-uuid`` prints a cluster id (it may start with "-")."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class LocalKafkaCluster:
    """A local KRaft cluster of ``size`` plaintext nodes on free loopback ports, for fault tests: node 1 is broker and
    the controller quorum (a single voter), the others are brokers only. Every node is a ``LocalKafka`` with its own
    storage under ``state_dir/node-<id>``; the internal topics are replicated ``min(size, 3)`` times. A test may stop
    and start any broker but node 1 (the quorum)."""

    cache_dir: Path
    state_dir: Path
    size: int = 3
    heap: str = "256m"

    def __post_init__(self) -> None:
        ports = free_ports(self.size + 1)  # node 1's controller listens on its port + 1: pick that pair first
        while ports[0] + 1 in ports or _port_open(ports[0] + 1):
            ports = free_ports(self.size + 1)
        cid, voters = new_cluster_id(), f"1@127.0.0.1:{ports[0] + 1}"
        self.nodes = [LocalKafka(self.cache_dir, self.state_dir / f"node-{i + 1}", port=port, heap=self.heap,
                                 node_id=i + 1, voters="" if i == 0 else voters, cluster_id=cid,
                                 replication=min(self.size, 3))
                      for i, port in enumerate(ports[:self.size])]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    def node(self, node_id: int) -> LocalKafka:
        return self.nodes[node_id - 1]

    def start(self, timeout_s: float = 120.0) -> str:
        """Start every node (at once: a JVM's start is mostly waiting) and wait until all brokers are registered."""
        self.nodes[0].install()
        launched = [node.launch() for node in self.nodes]
        try:
            for node, started in zip(self.nodes, launched):
                if not isinstance(started, str):
                    node.wait_ready(*started, timeout_s=timeout_s)
            self.wait_brokers(self.size, timeout_s)
        except BaseException:
            self.stop()
            raise
        return f"Kafka {self.nodes[0].version} cluster of {self.size} ready on {self.bootstrap}"

    def wait_brokers(self, count: int, timeout_s: float = 60.0) -> None:
        """Wait until ``count`` brokers are in the cluster's metadata."""
        from confluent_kafka.admin import AdminClient

        client = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout_s
        while len(client.list_topics(timeout=10).brokers) < count:
            if time.monotonic() > deadline:
                raise KafkaSetupError(f"fewer than {count} brokers in the cluster after {timeout_s:.0f}s")
            time.sleep(0.5)

    def stop(self) -> str:
        return "; ".join(node.stop() for node in reversed(self.nodes))  # brokers before the quorum


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held open together while picked)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def broker_ready(bootstrap: str, timeout_s: float, security: dict | None = None) -> bool:
    """True when a broker answers a metadata request (``security``: librdkafka settings to connect with)."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka import KafkaException

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if not _port_open(int(port), host or "127.0.0.1"):
        return False
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000, "log_level": 0,
                             **(security or {})})
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


def _keytool(*args: str) -> None:
    result = subprocess.run(["keytool", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:  # keytool's messages carry no password (they are passed as arguments)
        raise KafkaSetupError(f"keytool {args[0]} failed: {result.stdout[-1000:]}{result.stderr[-1000:]}")


def make_certificates(directory: Path, hosts: tuple[str, ...] = ("localhost",)) -> tuple[Path, str]:
    """A CA and a broker key pair with a certificate the CA signed for 127.0.0.1 and ``hosts``, once, in
    ``directory``: ``ca.pem`` (the clients' PEM truststore), ``broker.p12`` (the broker's PKCS12 keystore) and
    ``keystore.password`` (mode 0600). Returns the keystore and its password. Java's keytool does the work."""
    keystore, password_file, ca_file = directory / "broker.p12", directory / "keystore.password", directory / "ca.pem"
    if keystore.exists() and ca_file.exists() and password_file.exists():
        return keystore, password_file.read_text().strip()
    _require("keytool", "Java's keytool makes the broker's certificates (Debian: apt-get install default-jre-headless)")
    password = secrets.token_urlsafe(24)
    work = directory / "ca"  # the CA's private key stays here, readable by its owner only
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700, parents=True)
    ca_store, csr, crt, partial = work / "ca.p12", work / "broker.csr", work / "broker.pem", work / "broker.p12"
    store = ["-storetype", "PKCS12", "-storepass", password]
    ec = ["-keyalg", "EC", "-groupname", "secp256r1", "-validity", "825"]
    san = ",".join(["ip:127.0.0.1", *(f"dns:{h}" for h in hosts)])
    _keytool("-genkeypair", "-alias", "ca", *ec, "-dname", "CN=opsloop local CA", "-ext", "bc:c",
             "-keystore", str(ca_store), *store)
    _keytool("-exportcert", "-rfc", "-alias", "ca", "-keystore", str(ca_store), "-file", str(ca_file), *store)
    _keytool("-genkeypair", "-alias", "broker", *ec, "-dname", f"CN={hosts[0]}", "-keystore", str(partial), *store)
    _keytool("-certreq", "-alias", "broker", "-keystore", str(partial), "-file", str(csr), *store)
    _keytool("-gencert", "-alias", "ca", "-keystore", str(ca_store), "-infile", str(csr), "-outfile", str(crt),
             "-rfc", "-validity", "825", "-ext", f"SAN={san}", "-ext", "EKU=serverAuth", *store)
    _keytool("-importcert", "-noprompt", "-alias", "ca", "-file", str(ca_file), "-keystore", str(partial), *store)
    _keytool("-importcert", "-noprompt", "-alias", "broker", "-file", str(crt), "-keystore", str(partial), *store)
    write_private(password_file, password)
    partial.rename(keystore)
    return keystore, password


def make_passwords(directory: Path, names) -> list[str]:
    """A random password per principal in ``directory/<name>.password`` (mode 0600) unless it has one; returns the
    names whose password is new."""
    new = []
    for name in names:
        path = directory / f"{name}.password"
        if not path.exists():
            write_private(path, secrets.token_urlsafe(24))
            new.append(name)
    return new


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (secrets, configs that hold them)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def _require(tool: str, hint: str) -> None:
    if shutil.which(tool) is None:
        raise KafkaSetupError(f"`{tool}` not found on PATH. {hint}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@contextmanager
def scratch_topics(settings, prefix: str, extra_topics: tuple[str, ...] = (), secure: bool = False):
    """For the demo and the bench: a running broker and the catalog's topics under a fresh prefix.

    Starts the local broker unless one runs, yields the settings pointed at it with the topics of
    ``prefixed_topics``, then deletes them and stops the broker if it was started here. ``secure``: the
    secure broker (``<data dir>/kafka-secure``); the settings are the super user's, every principal's ACLs
    are applied for the prefix, and ``kafka_credentials_dir`` makes each agent a worker runs its own principal.
    """
    kafka = LocalKafka(settings.cache_dir, settings.data_dir / ("kafka-secure" if secure else "kafka"),
                       port=settings.kafka_port, secure=secure)
    owner = kafka.state_dir / "started-by.pid"  # the run that started the broker, to stop it when that run ends
    started = kafka.pid() is None
    if not started and (orphan := _dead_owner(owner)) is not None:
        started = True  # a killed run started it and could not stop it: this run stops it at its end
        print(f"Kafka was left running by a run that was killed (pid {orphan}); this run stops it when it ends")
    print(kafka.start())
    if started:
        owner.write_text(str(os.getpid()))
    client_settings = kafka.client_settings(settings, "admin")
    if secure:
        client_settings = client_settings.replace(kafka_credentials_dir=kafka.secure_dir / "users")
    try:
        with prefixed_topics(client_settings, prefix, extra_topics) as scratch:
            if secure:
                from opsloop.config.access import plan
                from opsloop.connectors.kafka import apply_acls

                apply_acls(scratch, plan(scratch))
            yield scratch
    finally:
        if started:
            print(kafka.stop())
            owner.unlink(missing_ok=True)


def _dead_owner(owner: Path) -> int | None:
    """The pid in ``owner`` when that process is gone (None: no owner, or it still runs)."""
    try:
        pid = int(owner.read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    except PermissionError:
        return None
    return None


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
