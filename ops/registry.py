"""A local Apicurio Registry (Confluent-compatible API under ``/apis/ccompat/v7``) for the ``confluent``
encoding: built once with Maven from ``ops/registry/`` into the cache, run as one Java process with in-memory
storage (schemas are registered again at start, so nothing needs keeping)."""
from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from opsloop.ops.kafka import KafkaSetupError, _port_open, _require, _tail

HERE = Path(__file__).resolve().parent / "registry"  # pom and the one class the build adds
VERSION = "2.4.2.Final"


@dataclass(frozen=True)
class LocalRegistry:
    cache_dir: Path  # holds the built registry (shared by checkouts)
    state_dir: Path  # holds this registry's log
    port: int = 8081
    heap: str = "384m"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/apis/ccompat/v7"

    @property
    def runner(self) -> Path:
        return self.cache_dir / f"apicurio-registry-{VERSION}" / "opsloop-registry-1-runner.jar"

    def install(self) -> Path:
        """Build the runnable registry unless cached (a few minutes and ~150 MB of Maven downloads once)."""
        if self.runner.exists():
            return self.runner
        _require("mvn", "Maven is needed once to build the schema registry (Debian: apt-get install maven)")
        work = self.runner.parent.with_name(self.runner.parent.name + ".build")
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(HERE, work)
        result = subprocess.run(["mvn", "-q", "-B", "-f", str(work / "pom.xml"), "-DskipTests", "package"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise KafkaSetupError(f"Maven could not build Apicurio Registry {VERSION}:\n{result.stdout[-3000:]}"
                                  f"{result.stderr[-2000:]}")
        shutil.rmtree(self.runner.parent, ignore_errors=True)
        self.runner.parent.mkdir(parents=True)
        (work / "target" / "lib").rename(self.runner.parent / "lib")  # the runner's classpath
        (work / "target" / self.runner.name).rename(self.runner)  # last: its presence marks a complete build
        shutil.rmtree(work, ignore_errors=True)
        return self.runner

    def start(self, timeout_s: float = 120.0) -> subprocess.Popen:
        _require("java", "Java 17+ runs the schema registry (Debian: apt-get install openjdk-17-jre-headless)")
        if _port_open(self.port):
            raise KafkaSetupError(f"port {self.port} is taken by another process")
        self.install()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.state_dir / "registry.log"
        with open(log_file, "ab") as log:
            proc = subprocess.Popen(["java", f"-Xmx{self.heap}", "-XX:+UseSerialGC",
                                     "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={self.port}",
                                     "-Dquarkus.datasource.jdbc.min-size=1", "-Dquarkus.datasource.jdbc.initial-size=1",
                                     "-jar", str(self.runner)],
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if proc.poll() is not None:
                raise KafkaSetupError(f"the registry exited with {proc.returncode}:\n{_tail(log_file)}")
            try:
                with urllib.request.urlopen(f"{self.url}/subjects", timeout=2):
                    return proc
            except OSError:
                continue
        proc.kill()
        raise KafkaSetupError(f"the registry did not answer after {timeout_s:.0f}s:\n{_tail(log_file)}")

    @staticmethod
    def stop(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
