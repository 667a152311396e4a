"""HAProxy, the balancer in front of the LLM servers: its runtime API (stats socket) and its Prometheus exporter.

The runtime API takes one command per connection on the stats socket (a UNIX
path, or ``host:port`` for a TCP socket) and answers in text; the socket must be
bound with ``level admin`` to change weights and limits. Changes are live and
touch no connection: a weight steers the requests that arrive after it, a lower
``maxconn`` makes the surplus wait in the balancer's queue, nothing is cut.

The exporter is HAProxy's own (``http-request use-service prometheus-exporter``
on a stats frontend); its text format is parsed with prometheus_client.
"""

from __future__ import annotations

import csv
import io
import socket
from dataclasses import dataclass, replace

import httpx
from prometheus_client.parser import text_string_to_metric_families

from opsloop.models.llm_lever import BalancerLoad, balancer_load, histogram_buckets, interval_quantile

TIMEOUT_S = 5.0


class HaproxyError(RuntimeError):
    """The runtime API refused a command or could not be reached."""


@dataclass(frozen=True)
class ServerState:
    weight: int  # the present (user) weight
    maxconn: int  # the concurrent-request limit; 0: none
    current: int  # requests the server runs now
    queued: int  # requests waiting for this server


class HaproxyRuntime:
    def __init__(self, address: str, timeout_s: float = TIMEOUT_S):
        self.address = address
        self.timeout_s = timeout_s

    def _connect(self) -> socket.socket:
        if self.address.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target = self.address
        else:
            host, _, port = self.address.rpartition(":")
            sock, target = socket.socket(socket.AF_INET, socket.SOCK_STREAM), (host, int(port))
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(target)
        except OSError as exc:
            sock.close()
            raise HaproxyError(f"HAProxy runtime API at {self.address} unreachable: {exc}") from None
        return sock

    def command(self, line: str) -> str:
        """Send one command, return HAProxy's whole answer."""
        if "\n" in line or ";" in line:
            raise HaproxyError("one runtime command at a time")
        with self._connect() as sock:
            try:
                sock.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except OSError as exc:  # a timeout included: the sink retries at its next check
                raise HaproxyError(f"HAProxy runtime API at {self.address}: {line.split()[0]} failed: {exc}") from None
        return b"".join(chunks).decode(errors="replace")

    def _change(self, line: str) -> None:
        answer = self.command(line).strip()
        if answer:  # a change is answered with nothing; anything else is HAProxy saying no
            raise HaproxyError(f"{line!r}: {answer[:200]}")

    def servers(self, backend: str) -> dict[str, ServerState]:
        """The servers of ``backend`` with their weight, limit and load (``show stat``)."""
        text = self.command("show stat").lstrip("# ")
        found = {}
        for row in csv.DictReader(io.StringIO(text)):
            if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND"):
                found[row["svname"]] = ServerState(weight=int(row["weight"] or 0), maxconn=int(row["slim"] or 0),
                                                   current=int(row["scur"] or 0), queued=int(row["qcur"] or 0))
        if not found:
            raise HaproxyError(f"HAProxy has no backend {backend!r} with servers")
        return found

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        self._change(f"set weight {backend}/{server} {int(weight)}")

    def set_maxconn(self, backend: str, server: str, maxconn: int) -> None:
        self._change(f"set maxconn server {backend}/{server} {int(maxconn)}")


def scrape(url: str, timeout_s: float = TIMEOUT_S) -> list[tuple[str, dict, float]]:
    """A Prometheus text page as ``(name, labels, value)`` samples."""
    reply = httpx.get(url, timeout=timeout_s)
    reply.raise_for_status()
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(reply.text)
            for s in family.samples]


class BalancerMetrics:
    """Reads HAProxy's Prometheus exporter and, where vLLM serves, the servers' own ``/metrics`` (``vllm_urls``):
    their time-to-first-token histograms give a p99 over the time since the previous read."""

    def __init__(self, url: str, timeout_s: float = TIMEOUT_S, vllm_urls: tuple[str, ...] = ()):
        self.url = url
        self.timeout_s = timeout_s
        self.vllm_urls = vllm_urls
        self._previous: dict[str, dict[float, float]] = {}  # vLLM URL → its buckets at the last read

    def samples(self) -> list[tuple[str, dict, float]]:
        return scrape(self.url, self.timeout_s)

    def vllm_p99_ttft_s(self) -> float | None:
        """The worst server's p99 time to first token since the last call; None without vLLM or new requests."""
        worst = None
        for url in self.vllm_urls:
            try:
                buckets = histogram_buckets(scrape(url, self.timeout_s))
            except (httpx.HTTPError, ValueError):
                continue  # the balancer's own view still holds; a dead server shows there
            before, self._previous[url] = self._previous.get(url), buckets
            p99 = interval_quantile(0.99, before, buckets) if before is not None else None
            if p99 is not None:
                worst = p99 if worst is None else max(worst, p99)
        return worst

    def load(self, backend: str) -> BalancerLoad | None:
        """The backend's load now; None when the exporter cannot be read (the SLO check treats it as unknown)."""
        try:
            load = balancer_load(self.samples(), backend)
        except (httpx.HTTPError, ValueError):
            return None
        if load is None or not self.vllm_urls:
            return load
        return replace(load, p99_ttft_s=self.vllm_p99_ttft_s())
