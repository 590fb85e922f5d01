"""What the daemon shows between two dumps: a frozen picture of its counters.

The event loop builds a ``Snapshot`` once a tick (a few numpy calls, whatever
the number of records) and publishes it by swapping one reference; readers in
other threads (``ncsniffer.metrics``) only ever see a whole, finished one, and
never touch the live accounting.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import numpy as np

from ncsniffer import conntrack, decode
from ncsniffer.table import Table

DNS_RESULTS = ("sent", "answered", "rejected", "timedout")
# the resolver's counter of each DNS result above
RESOLVER_COUNTERS = {"sent": "sent", "answered": "answered", "rejected": "rejected",
                     "timedout": "timed out"}
PACKET_KINDS = ("seen", "counted", "unmatched", "truncated", "non_ip", "invalid")
PCAP_KINDS = ("received", "dropped", "if_dropped")
END_STATES = conntrack.STATES[conntrack.CLOSED:]     # how connections end (10.3, 10.4)
EXPORT_RESULTS = ("sent", "lost")


@dataclass(frozen=True)
class Peer:
    """One of the peers with most W."""

    address: str
    bytes_per_hour: float          # W
    packets_per_hour: float        # R
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """The header's values, the counters and the top peers at one moment."""

    instance: str
    start: int
    current: int
    hits_per_minute: float
    bytes_per_second: float
    users: int
    device: str
    bpf: str
    packets: dict[str, int]
    pcap: dict[str, int]
    evictions: int = 0
    dumps: int = 0
    dump_seconds: float = 0.0
    dns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DNS_RESULTS, 0))
    top: tuple[Peer, ...] = ()
    # with connection tracking: ended connections by state, open ones (else None)
    connections: dict[str, int] | None = None
    connections_active: int | None = None
    # with the ClickHouse export (export.Exporter.counters), else None
    export: dict[str, int] | None = None

    @property
    def export_batches(self) -> dict[str, int] | None:
        return self._export("batches")

    @property
    def export_rows(self) -> dict[str, int] | None:
        return self._export("rows")

    def _export(self, what: str) -> dict[str, int] | None:
        e = self.export
        return None if e is None else {r: e[f"{r}_{what}"] for r in EXPORT_RESULTS}

    def as_dict(self) -> dict:
        """For ``/stats.json``: header, counters, top peers."""
        return {
            "instance": self.instance,
            "header": {"start": self.start, "current": self.current,
                       "hits_per_minute": self.hits_per_minute,
                       "bytes_per_second": self.bytes_per_second, "users": self.users,
                       "device": self.device, "bpf": self.bpf},
            "counters": {"packets": dict(self.packets), "pcap": dict(self.pcap),
                         "evictions": self.evictions, "dumps": self.dumps,
                         "dump_seconds": self.dump_seconds, "dns": dict(self.dns)},
            **({} if self.connections is None else {"connections": {
                "ended": dict(self.connections), "active": self.connections_active}}),
            **({} if self.export is None else {"export": dict(self.export)}),
            "top": [{"peer": p.address, "bytes_per_hour": p.bytes_per_hour,
                     "packets_per_hour": p.packets_per_hour, "names": list(p.names)}
                    for p in self.top],
        }


def packet_counts(counters) -> dict[str, int]:
    """The capture pipeline's ``batch.Counters`` under the metric's kinds."""
    u = counters.undecoded
    return {"seen": counters.seen, "counted": counters.counted, "unmatched": counters.unmatched,
            "truncated": u[decode.TRUNCATED], "non_ip": u[decode.NOT_IP],
            "invalid": u[decode.INVALID]}


def dns_counts(resolver_counters: dict[str, int] | None) -> dict[str, int]:
    """The resolver's counters under the metric's results (zeros without a resolver)."""
    c = resolver_counters or {}
    return {result: c.get(RESOLVER_COUNTERS[result], 0) for result in DNS_RESULTS}


def top_peers(table: Table, n: int) -> tuple[Peer, ...]:
    """The ``n`` records with most W, most first: one partial sort of the W column."""
    cols = table.cols
    slots = table.occupied()
    if not len(slots) or n <= 0:
        return ()
    w = cols["W"][slots]
    if len(slots) > n:
        pick = np.argpartition(-w, n - 1)[:n]
        slots, w = slots[pick], w[pick]
    order = np.lexsort((slots, -w))       # ties: the same order every tick
    slots = slots[order]
    return tuple(Peer(str(ipaddress.ip_address(key)), float(cols["W"][s]), float(cols["R"][s]),
                      tuple(cols["N"][s] or ()))
                 for key, s in zip(table.keys_at(slots), slots.tolist()))


def take(sniffer, now: int, pcap: tuple[int, int, int], dns: dict[str, int] | None = None,
         dumps: int = 0, dump_seconds: float = 0.0, top: int = 10,
         export: dict[str, int] | None = None) -> Snapshot:
    """The snapshot of a ``Sniffer`` at ``now``, with the capture's ``pcap`` statistics,
    the resolver's counters, the daemon's dumps and the export's counters."""
    h = sniffer.header(now)
    tracker = sniffer.tracker
    return Snapshot(
        instance=sniffer.settings.name, start=h.start, current=h.current,
        hits_per_minute=float(h.hits), bytes_per_second=float(h.bytes), users=h.users,
        device=h.device or "", bpf=h.bpf, packets=packet_counts(sniffer.counters),
        pcap=dict(zip(PCAP_KINDS, pcap)), evictions=sniffer.acct.evicted, dumps=dumps,
        dump_seconds=dump_seconds, dns=dns_counts(dns), top=top_peers(sniffer.acct.records, top),
        connections=None if tracker is None else tracker.ended_totals(),
        connections_active=None if tracker is None else tracker.live, export=export)
