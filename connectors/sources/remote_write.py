"""Kind ``remote-write``: an HTTP endpoint a site's Prometheus server forwards samples to
(``remote_write``: a snappy-compressed protobuf ``WriteRequest`` per POST, remote-write 1.0).

The body is decompressed with cramjam's raw snappy and parsed by the protobuf runtime; the few
message types needed (WriteRequest, TimeSeries, Label, Sample) are declared below as a
descriptor, so no generated code is kept (exemplars, histograms and metadata are fields this
receiver does not read: protobuf skips them). Samples go through the relabel rules and the
metric mapping of the ``prometheus`` kind (models/prom_metrics.py); the device of a series is its
``instance`` label (``{instance}``, or a mapping's own template), looked up in ``devices``.

Answers, each counted in ``stats``: 204 taken; 401 wrong or missing bearer token; 415 a
remote-write 2.0 body (the sender falls back to 1.0); 413 a body
over ``max_body_bytes`` (not read); 400 a body that is not snappy or not a WriteRequest (also a
``decode`` dead letter with its first bytes); 503 the buffer was full (Prometheus retries it);
404 another path. Options: ``listen`` (host:port), ``path``, ``token_file`` (a file holding the
token, e.g. a mounted secret; default: the ``remote_write_token`` setting,
OPSLOOP_REMOTE_WRITE_TOKEN), ``max_body_bytes``, and the ``prometheus`` kind's ``mapping``,
``metrics``, ``keep`` and ``relabel``.
"""

from __future__ import annotations

import hmac
import logging
import math
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cramjam
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from opsloop.config.settings import Settings
from opsloop.config.site import Site
from opsloop.config.sources import SourceConfig
from opsloop.connectors.sources.base import Deliver, Readings, Reject
from opsloop.connectors.sources.prometheus import normalizer, readings
from opsloop.models.prom_metrics import Batch, Normalized, Normalizer, Route

log = logging.getLogger("opsloop.source")

STALE_NAN = 0x7FF0000000000002  # Prometheus' staleness marker: a series ended, not a reading


def _write_request_class():
    proto = descriptor_pb2.FileDescriptorProto(name="opsloop_remote_write.proto", package="opsloop.prompb",
                                               syntax="proto3")
    fd = descriptor_pb2.FieldDescriptorProto

    def message(name: str, *fields: tuple[str, int, int, str | None, bool]) -> None:
        m = proto.message_type.add(name=name)
        for field_name, number, kind, type_name, repeated in fields:
            f = m.field.add(name=field_name, number=number, type=kind,
                            label=fd.LABEL_REPEATED if repeated else fd.LABEL_OPTIONAL)
            if type_name:
                f.type_name = f".opsloop.prompb.{type_name}"

    message("Label", ("name", 1, fd.TYPE_STRING, None, False), ("value", 2, fd.TYPE_STRING, None, False))
    message("Sample", ("value", 1, fd.TYPE_DOUBLE, None, False), ("timestamp", 2, fd.TYPE_INT64, None, False))
    message("TimeSeries", ("labels", 1, fd.TYPE_MESSAGE, "Label", True),
            ("samples", 2, fd.TYPE_MESSAGE, "Sample", True))
    message("WriteRequest", ("timeseries", 1, fd.TYPE_MESSAGE, "TimeSeries", True))
    # The same wire format read with each label kept as its encoded bytes: a series' labels are then
    # a hashable tuple, the key of its cached route, and are decoded only the first time.
    message("RawTimeSeries", ("labels", 1, fd.TYPE_BYTES, None, True), ("samples", 2, fd.TYPE_MESSAGE, "Sample", True))
    message("RawWriteRequest", ("timeseries", 1, fd.TYPE_MESSAGE, "RawTimeSeries", True))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(f"opsloop.prompb.{name}"))
                 for name in ("WriteRequest", "RawWriteRequest", "Label"))


WriteRequest, RawWriteRequest, Label = _write_request_class()


class BadBody(ValueError):
    """A remote-write body that is not snappy-compressed protobuf."""


def decode(body: bytes):
    try:
        raw = bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as exc:
        raise BadBody(f"not snappy-compressed (raw block format): {exc}") from None
    request = RawWriteRequest()
    try:
        request.ParseFromString(raw)
    except DecodeError as exc:
        raise BadBody(f"not a remote-write WriteRequest protobuf: {exc}") from None
    return request


def _is_stale(value: float) -> bool:
    return math.isnan(value) and struct.unpack("<Q", struct.pack("<d", value))[0] == STALE_NAN


class SeriesRoutes:
    """Each series' ``Route`` (models/prom_metrics.py), keyed by its labels as sent: Prometheus sends
    the same series in every request, so labels are decoded, relabelled and mapped once per series.
    ``max_series`` bounds it (series churn clears it rather than growing memory)."""

    def __init__(self, norm: Normalizer, max_series: int = 500_000):
        self.norm = norm
        self.max_series = max_series
        self.routes: dict[tuple[bytes, ...], Route] = {}

    def of(self, raw_labels: tuple[bytes, ...]) -> Route:
        route = self.routes.get(raw_labels)
        if route is None:
            labels = {}
            for raw in raw_labels:
                label = Label()
                try:
                    label.ParseFromString(raw)
                except DecodeError as exc:
                    raise BadBody(f"not a remote-write WriteRequest protobuf (a label): {exc}") from None
                labels[label.name] = label.value
            name = labels.pop("__name__", "")
            route = self.norm.route(name, labels)
            if len(self.routes) >= self.max_series:
                self.routes.clear()
            self.routes[raw_labels] = route
        return route

    def normalize(self, request, now_ms: int) -> tuple[Normalized, int, int]:
        """A request's points, alarms and rejects; how many samples were read and how many skipped (not
        selected, or staleness markers). ``BadBody`` if a label is not a Label (before any sample is taken)."""
        of = self.of
        routed = [(of(tuple(series.labels)), series.samples) for series in request.timeseries]
        batch, read, skipped = Batch(self.norm, now_ms), 0, 0
        take = batch.take
        for route, samples in routed:
            if not route.selected:
                skipped += len(samples)
                continue
            for sample in samples:
                value = sample.value
                if value != value and _is_stale(value):
                    skipped += 1
                else:
                    read += 1
                    take(route, value, sample.timestamp)
        return batch.done(), read, skipped


@dataclass(frozen=True)
class Token:
    value: str = field(repr=False)  # secret: never logged, never in a message

    def admits(self, header: str | None) -> bool:
        if not self.value:
            return True  # no token configured: allowed on a loopback address only (checked at start)
        given = (header or "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(given.encode(), self.value.encode())


def token_of(config: SourceConfig) -> Token:
    path = config.option("token_file")
    if path is None:
        return Token(Settings.from_env().remote_write_token)
    try:
        with open(path, encoding="utf-8") as fh:
            return Token(fh.read().strip())
    except OSError as exc:
        raise config.error(f"options.token_file: cannot read {path} ({exc.strerror})") from None


class RemoteWriteReceiver:
    """A Receiver: serves until ``stop``; ``port`` is the bound port (``listen`` may ask for 0)."""

    def __init__(self, config: SourceConfig, site: Site, clock=time.time, token: Token | None = None):
        host, _, port = str(config.option("listen", "127.0.0.1:9201")).rpartition(":")
        self.path = str(config.option("path", "/api/v1/write"))
        self.max_body = int(config.option("max_body_bytes", 32 * 1024 * 1024))
        self.token = token or token_of(config)
        if not self.token.value and host not in ("127.0.0.1", "localhost", "::1"):
            raise config.error(f"no remote-write token (OPSLOOP_REMOTE_WRITE_TOKEN or options.token_file): "
                               f"listening on {host or 'every address'} would take anyone's samples")
        self.norm = normalizer(config, site)
        self.routes = SeriesRoutes(self.norm)
        self.lock = threading.Lock()  # the normalizer's counter state is per source, not per request
        self.stats: Counter = Counter()
        self.server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.deliver: Deliver | None = None
        self.clock = clock

    def serve(self, deliver: Deliver, stop: threading.Event) -> None:
        self.deliver = deliver
        watcher = threading.Thread(target=lambda: (stop.wait(), self.server.shutdown()), daemon=True)
        watcher.start()
        try:
            self.server.serve_forever(poll_interval=0.2)
        finally:
            self.server.server_close()

    def handle(self, auth: str | None, length: int | None, read, now_ms: int,
               content_type: str = "application/x-protobuf") -> tuple[int, str]:
        """One POST: the HTTP status and a short reason."""
        if not self.token.admits(auth):
            return self._count(401, "unauthorized", "wrong or missing bearer token")
        if "io.prometheus.write.v2" in content_type:  # the spec's answer, so the sender falls back to 1.0
            return self._count(415, "unsupported", "remote-write 2.0 is not read here; send 1.0 (WriteRequest)")
        if length is None:
            return self._count(411, "no_length", "Content-Length required")
        if length > self.max_body:
            return self._count(413, "too_large", f"body of {length} bytes is over {self.max_body}")
        body = read(length)
        try:
            request = decode(body)
            with self.lock:
                out, taken, skipped = self.routes.normalize(request, now_ms)
                self.stats["samples"] += taken
                self.stats["skipped"] += skipped
        except BadBody as exc:
            self._deliver(Readings(rejects=[Reject(body[:4096], "decode", str(exc))]))
            return self._count(400, "bad_body", str(exc))
        if not self._deliver(readings(out)):
            return self._count(503, "busy", "buffer full: retry later")
        with self.lock:
            self.stats["accepted"] += 1
        return 204, ""

    def _deliver(self, what: Readings) -> bool:
        return self.deliver(what) if self.deliver else False

    def _count(self, status: int, counter: str, reason: str) -> tuple[int, str]:
        with self.lock:
            self.stats[counter] += 1
        log.warning("remote-write: %d %s", status, reason)
        return status, reason

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] != receiver.path:
                    return self._answer(404, "not found")
                length = self.headers.get("Content-Length", "")
                status, reason = receiver.handle(
                    self.headers.get("Authorization"), int(length) if length.isdigit() else None, self.rfile.read,
                    int(receiver.clock() * 1000), self.headers.get("Content-Type", ""))
                if status in (401, 411, 413, 415):
                    self.close_connection = True  # the body was not read
                self._answer(status, reason)

            def _answer(self, status: int, reason: str) -> None:
                data = reason.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # answers are counted and logged by the receiver
                pass

        return Handler

    def close(self) -> None:
        self.server.server_close()


def build(config: SourceConfig, site: Site, clock) -> RemoteWriteReceiver:
    return RemoteWriteReceiver(config, site, clock)
