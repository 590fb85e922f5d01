"""``/metrics`` for Prometheus and ``/stats.json``, served from the latest snapshot.

The event loop publishes a ``Snapshot`` once a tick; a scrape renders the one
it finds, in the server's own thread: it never reads the live accounting and
never waits for, or makes wait, the capture loop.  The series are bounded (SPEC
11): fixed counters plus the ``metrics_top`` peers, never one per tracked IP.
This is the only module that imports prometheus_client.
"""

from __future__ import annotations

import errno
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Iterator

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ncsniffer.errors import NcSnifferError
from ncsniffer.snapshot import (DNS_RESULTS, END_STATES, EXPORT_RESULTS, PACKET_KINDS,
                                PCAP_KINDS, Snapshot)

CLIENT_TIMEOUT = 5.0        # seconds a scraper may take to send its request
JSON_TYPE = "application/json; charset=utf-8"


class Published:
    """The latest snapshot, swapped whole by the event loop (one reference: no lock)."""

    def __init__(self, snapshot: Snapshot | None = None):
        self.latest = snapshot


class SnapshotCollector:
    """A prometheus_client collector that reads the published snapshot at scrape time."""

    def __init__(self, published: Published):
        self.published = published

    def collect(self) -> Iterator:
        snap = self.published.latest
        if snap is None:
            return
        yield from families(snap)


# (name, type, help, the snapshot's field, its label and label values or None), in
# the order of SPEC 11; every label value is a series from the start, zero included
FAMILIES = (
    ("ncsniffer_packets", CounterMetricFamily, "Packets by what became of them",
     "packets", ("kind", PACKET_KINDS)),
    ("ncsniffer_pcap_packets", CounterMetricFamily, "libpcap statistics",
     "pcap", ("kind", PCAP_KINDS)),
    ("ncsniffer_hosts", GaugeMetricFamily, "Tracked peers (the header's users)", "users", None),
    ("ncsniffer_evictions", CounterMetricFamily, "Records evicted at max_hosts", "evictions", None),
    ("ncsniffer_dumps", CounterMetricFamily, "Stats files written", "dumps", None),
    ("ncsniffer_dump_seconds", GaugeMetricFamily, "Wall time of the last dump",
     "dump_seconds", None),
    ("ncsniffer_dns_queries", CounterMetricFamily, "Reverse-DNS queries by result",
     "dns", ("result", DNS_RESULTS)),
    ("ncsniffer_hits_per_minute", GaugeMetricFamily, "The header's packet rate",
     "hits_per_minute", None),
    ("ncsniffer_bytes_per_second", GaugeMetricFamily, "The header's byte rate",
     "bytes_per_second", None),
    # only with connection tracking on (SPEC 10): the tracker's totals
    ("ncsniffer_connections", CounterMetricFamily, "Connections ended, by how they ended",
     "connections", ("state", END_STATES)),
    ("ncsniffer_connections_active", GaugeMetricFamily, "Connections open now",
     "connections_active", None),
    # only with the ClickHouse export: export.Exporter.counters()
    ("ncsniffer_export_batches", CounterMetricFamily, "Export batches sent or lost",
     "export_batches", ("result", EXPORT_RESULTS)),
    ("ncsniffer_export_rows", CounterMetricFamily, "Export rows sent or lost",
     "export_rows", ("result", EXPORT_RESULTS)),
    ("ncsniffer_export_failures", CounterMetricFamily, "Failed sends to the store",
     "export.failures", None),
    ("ncsniffer_export_spooled_batches", GaugeMetricFamily, "Batches waiting in the spool",
     "export.spooled_batches", None),
    ("ncsniffer_export_spooled_rows", GaugeMetricFamily, "Rows waiting in the spool",
     "export.spooled_rows", None),
    ("ncsniffer_export_spool_bytes", GaugeMetricFamily, "Size of the spool",
     "export.spool_bytes", None),
)


def _value(snap: Snapshot, attr: str):
    """The snapshot's field ``attr`` (``field.key``: a key of a dict field); None: absent."""
    field, _, key = attr.partition(".")
    value = getattr(snap, field)
    return value[key] if key and value is not None else value


def families(snap: Snapshot) -> Iterator:
    """The metric families of SPEC 11, each series labelled ``instance_name``."""
    name = snap.instance
    for metric, kind, text, attr, labelled in FAMILIES:
        value = _value(snap, attr)
        if value is None:          # a part that is off (connections, export)
            continue
        if labelled is None:
            family = kind(metric, text, labels=["instance_name"])
            family.add_metric([name], value)
        else:
            label, keys = labelled
            family = kind(metric, text, labels=["instance_name", label])
            for key in keys:
                family.add_metric([name, key], value.get(key, 0))
        yield family
    top = GaugeMetricFamily("ncsniffer_top_peer_bytes_per_hour", "W of the peers with most W",
                            labels=["instance_name", "peer"])
    for peer in snap.top:
        top.add_metric([name, peer.address], peer.bytes_per_hour)
    yield top


def registry_for(published: Published) -> CollectorRegistry:
    """Our collector alone (no process or platform collectors: the series stay ours)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(published))
    return registry


def exposition(published: Published) -> bytes:
    """The text exposition of the published snapshot."""
    return generate_latest(registry_for(published))


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics and /stats.json; anything else is 404."""

    timeout = CLIENT_TIMEOUT
    server: "_Server"

    def do_GET(self) -> None:  # noqa: N802 (the http.server name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, CONTENT_TYPE_LATEST, generate_latest(self.server.registry))
        elif path == "/stats.json":
            snap = self.server.published.latest
            body = json.dumps(snap.as_dict() if snap else {}, indent=1).encode() + b"\n"
            self._reply(200, JSON_TYPE, body)
        else:
            self._reply(404, "text/plain; charset=utf-8", b"not found: try /metrics or /stats.json\n")

    def _reply(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        """No access log: the daemon's log is for the daemon."""


class _Server(HTTPServer):
    def __init__(self, where: tuple[str, int], published: Published):
        self.address_family = socket.AF_INET6 if ":" in where[0] else socket.AF_INET
        self.published = published
        self.registry = registry_for(published)
        super().__init__(where, _Handler)

    def handle_error(self, request, client_address) -> None:
        """A scraper that went away is no error of ours."""


class MetricsServer:
    """The listening socket, opened at start (as root); served by a daemon thread
    started once the daemon runs (threads do not survive its detaching fork)."""

    def __init__(self, where: tuple[str, int], published: Published | None = None):
        self.published = published or Published()
        self.where = where
        shown = f"[{where[0]}]:{where[1]}" if ":" in where[0] else f"{where[0]}:{where[1]}"
        try:
            self._server = _Server(where, self.published)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise NcSnifferError(f"metrics port {shown} already in use") from exc
            raise NcSnifferError(f"cannot listen on {shown} for metrics: {exc.strerror}") from exc
        self._thread: threading.Thread | None = None

    def fileno(self) -> int:
        return self._server.fileno()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def publish(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` the one scrapes see (one reference swapped)."""
        self.published.latest = snapshot

    def serve(self) -> None:
        """Serve in a daemon thread: the event loop never waits for it."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(CLIENT_TIMEOUT)
        self._server.server_close()
