"""Connection tracking (spec 10.1, 10.2): the batch interface to the compiled core.

A batch of packets goes in as one numpy structured array (``PACKET_DTYPE``, one
row per packet, in packet order); the connections it begins and ends come out
as one array of events (``EVENT_DTYPE``), in the order they happen.  The rules
live twice: in ``_conntrack.c`` (hash table, LRU list, timer wheel; the fast
path) and in ``conntrack_ref`` (plain Python, per packet; the model the
property tests hold the core equal to, and the fallback if the extension was
not built).

Order of the events of one packet: the expiries its clock second brings (by
deadline, then by the order in which the entries got that deadline), the
eviction its new entry needs, its ``new`` event, then its ``end`` event if it
ended the connection.

Time is whole seconds on a clock that never goes back: a packet older than the
latest one counts at the latest one's second.  ``start`` and ``end`` of an event
are the packets' own timestamps (``sec + usec / 1e6``).

A TCP packet *opens* (SYN set, ACK and RST clear).  An opening packet on a live
entry is a SYN retransmission; on an RST-and-SYN or ACK-and-SYN packet the RST,
then the SYN+ACK and FIN rules apply.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Mapping, Optional

import numpy as np

from ncsniffer.timeouts import DEFAULT_TIMEOUTS, MAX_TIMEOUT
from ncsniffer.errors import ConfigError

# --------------------------------------------------------------- defaults (10.1)
# The defaults live in timeouts.DEFAULT_TIMEOUTS (one source): tcp_establish (handshake
# not complete -> unanswered), tcp (established, idle -> timedout), udp, icmp (idle ->
# timedout), tcp_linger (an ended TCP entry absorbs late packets this long); MAX_TIMEOUT
# bounds them all (the timer wheel's size).
TCP_ESTABLISH_TIMEOUT = DEFAULT_TIMEOUTS["tcp_establish"]
TCP_TIMEOUT = DEFAULT_TIMEOUTS["tcp"]
UDP_TIMEOUT = DEFAULT_TIMEOUTS["udp"]
ICMP_TIMEOUT = DEFAULT_TIMEOUTS["icmp"]
TCP_LINGER = DEFAULT_TIMEOUTS["tcp_linger"]
DEFAULT_MAX_CONNECTIONS = 1_000_000
K_WIDTH = 12                 # len(conncounts.K_FIELDS): Tracker.open_counts' rows

# --------------------------------------------------------------- protocols, flags
TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
TRACKED = (TCP, UDP, ICMP, ICMP6)
PROTO_NAMES = {TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMP6: "icmp6"}
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

# --------------------------------------------------------------- events
NEW, END = 0, 1
KINDS = ("new", "end")
DIR_IN, DIR_OUT = 0, 1           # in: the peer initiated
DIRS = ("in", "out")
# state of an event; ACTIVE only on ``new`` events
(ACTIVE, CLOSED, RESET, REFUSED, UNANSWERED, TIMEDOUT, EVICTED, DRAINED) = range(8)
STATES = ("active", "closed", "reset", "refused", "unanswered", "timedout", "evicted",
          "drained")
K_ENDS = slice(K_WIDTH - (EVICTED - ACTIVE), K_WIDTH)   # K's columns of closed..evicted

# One packet, as the core reads it.  Addresses are two 64-bit words, as in
# ``table.Table`` (IPv4: high word 0, the address number in the low word), with
# ``v6`` telling the families apart.  The layout is the C struct's (_conntrack.c).
PACKET_DTYPE = np.dtype([
    ("sec", "<i8"),          # whole second (the clock)
    ("me_hi", "<u8"), ("me_lo", "<u8"),
    ("peer_hi", "<u8"), ("peer_lo", "<u8"),
    ("usec", "<u4"),         # microseconds, for the events' start/end
    ("wirelen", "<u4"),      # wire length, as counted in B
    ("me_port", "<u2"), ("peer_port", "<u2"),   # ignored for ICMP
    ("proto", "u1"),         # IP protocol; others (0 for an IPv4 non-first fragment) untracked
    ("from_me", "u1"),       # 1 if "me" sent it
    ("v6", "u1"),            # 1 for IPv6 addresses
    ("flags", "u1"),         # TCP flags (FIN SYN RST ACK ...)
])

EVENT_DTYPE = np.dtype({
    "names": ["start", "end", "me_hi", "me_lo", "peer_hi", "peer_lo",
              "orig_packets", "orig_bytes", "resp_packets", "resp_bytes",
              "me_port", "peer_port", "kind", "state", "proto", "dir", "v6"],
    "formats": ["<f8", "<f8", "<u8", "<u8", "<u8", "<u8",
                "<u8", "<u8", "<u8", "<u8",
                "<u2", "<u2", "u1", "u1", "u1", "u1", "u1"],
    "offsets": [0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 82, 84, 85, 86, 87, 88],
    "itemsize": 96,
})

# A peer of the K counters (10.3): the core's struct peer_key (17 bytes, packed).
PEER_DTYPE = np.dtype([("v6", "u1"), ("peer_hi", "<u8"), ("peer_lo", "<u8")])


@dataclass(frozen=True)
class Timeouts:
    """The expiry times of 10.1, in whole seconds; the config key ``timeouts`` overrides them."""

    tcp_establish: int = TCP_ESTABLISH_TIMEOUT
    tcp: int = TCP_TIMEOUT
    udp: int = UDP_TIMEOUT
    icmp: int = ICMP_TIMEOUT
    tcp_linger: int = TCP_LINGER

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or not 0 <= value <= MAX_TIMEOUT:
                raise ConfigError(f"timeouts: {f.name!r} must be a whole number of seconds "
                                  f"from 0 to {MAX_TIMEOUT}, not {value!r}")

    @classmethod
    def from_config(cls, overrides: Optional[Mapping[str, int]]) -> "Timeouts":
        """The defaults with the config's ``timeouts`` dict applied; unknown keys refused."""
        overrides = dict(overrides or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"timeouts: unknown key {unknown[0]!r} "
                              f"(known: {', '.join(sorted(known))})")
        return cls(**overrides)

    def longest(self) -> int:
        return max(getattr(self, f.name) for f in fields(self))


def check_max_connections(value: int) -> int:
    """``max_connections`` must leave room for one connection (and fit the core's indices)."""
    if type(value) is not int or not 1 <= value < 2 ** 31:
        raise ConfigError(f"max_connections must be a whole number from 1 to {2 ** 31 - 1}, "
                          f"not {value!r}")
    return value


def packets(rows) -> np.ndarray:
    """A ``PACKET_DTYPE`` array from tuples in its field order (tests, tools)."""
    return np.array(list(rows), PACKET_DTYPE)


def as_packets(batch: np.ndarray) -> np.ndarray:
    """``batch`` as contiguous ``PACKET_DTYPE`` rows, its fields taken by name (numpy
    would cast one structured dtype to another by position).  Rows laid out as
    ``PACKET_DTYPE`` already (``decode.FLOW``) are viewed, not copied; ``copied`` is
    the plain twin."""
    if batch.flags.c_contiguous and same_layout(batch.dtype):
        return batch if batch.dtype == PACKET_DTYPE else batch.view(PACKET_DTYPE)
    return copied(batch)


@functools.lru_cache(maxsize=8)
def same_layout(dtype: np.dtype) -> bool:
    """Whether rows of ``dtype`` are ``PACKET_DTYPE``'s bytes: each of its fields at
    the same offset with the same size and kind (bool for u1; ``length`` for the wire
    length), nothing else in the row."""
    if dtype.names is None or dtype.itemsize != PACKET_DTYPE.itemsize:
        return False
    have = dtype.fields
    for name, (want, offset) in PACKET_DTYPE.fields.items():
        got = have.get("length" if name == "wirelen" and name not in have else name)
        if got is None or got[1] != offset or got[0].itemsize != want.itemsize \
                or got[0].kind not in (want.kind, "b" if want.kind == "u" else want.kind):
            return False
    return len(dtype.names) == len(PACKET_DTYPE.names)


def copied(batch: np.ndarray) -> np.ndarray:
    """A new ``PACKET_DTYPE`` array of ``batch``'s rows, field by field (by name)."""
    # decode.FLOW calls the wire length ``length``
    return by_name(batch, PACKET_DTYPE,
                   None if "wirelen" in batch.dtype.names else {"wirelen": "length"})


def by_name(rows: np.ndarray, dtype: np.dtype, renamed: Mapping[str, str] | None = None
            ) -> np.ndarray:
    """A new ``dtype`` array (padding zeroed) of ``rows``' fields copied by name: numpy
    casts one structured dtype to another by position.  ``renamed``: a field of
    ``dtype`` -> its name in ``rows``, where the two differ."""
    out = np.zeros(len(rows), dtype)
    for name in dtype.names:
        out[name] = rows[(renamed or {}).get(name, name)]
    return out


def as_dicts(events: np.ndarray) -> list[dict]:
    """Events as plain dicts with names for the enumerations (tests, the events file)."""
    out = []
    for row in events.tolist():
        d = dict(zip(EVENT_DTYPE.names, row))
        d["kind"], d["state"] = KINDS[d["kind"]], STATES[d["state"]]
        d["dir"], d["proto"] = DIRS[d["dir"]], PROTO_NAMES[d["proto"]]
        out.append(d)
    return out


try:
    from ncsniffer import _conntrack
except ImportError:          # not built: the reference serves, slowly
    _conntrack = None

HAVE_CORE = _conntrack is not None
if HAVE_CORE:
    assert _conntrack.PACKET_SIZE == PACKET_DTYPE.itemsize, "PACKET_DTYPE != struct packet"
    assert _conntrack.EVENT_SIZE == EVENT_DTYPE.itemsize, "EVENT_DTYPE != struct event"
    assert _conntrack.PEER_KEY_SIZE == PEER_DTYPE.itemsize, "PEER_DTYPE != struct peer_key"


@dataclass
class Tracked:
    """What a batch of packets (or an idle tick) did to the connections, as the K
    counters (10.3) take it: one row per peer, so that the counting needs no event.
    ``before``: the peer's open connections counted as begun (``open_counts``) as they
    were before the batch, for a record made anew in it; ``events`` only when asked for
    (the events file, the export)."""

    events: np.ndarray | None     # EVENT_DTYPE, in order; None when not asked for
    peers: np.ndarray             # PEER_DTYPE, distinct, sorted as conncounts.count's
    deltas: np.ndarray            # int32/64 (len(peers), K_WIDTH): the K change, K_FIELDS order
    before: np.ndarray            # int32/64 (len(peers), K_WIDTH): the open ones, before

    def __len__(self) -> int:
        return len(self.peers)

    def __getstate__(self) -> tuple:
        """The pickle of a two-process replay's pipe, a fifth of the bytes or less: the
        counters in the narrowest integers that hold them (their own type once read)."""
        return (self.events, self.peers, narrowest(self.deltas), narrowest(self.before),
                self.deltas.dtype.str)

    def __setstate__(self, state: tuple) -> None:
        self.events, self.peers, deltas, before, dtype = state
        self.deltas, self.before = deltas.astype(dtype), before.astype(dtype)


def narrowest(values: np.ndarray) -> np.ndarray:
    """``values`` (int64) in the smallest signed integer type that holds them all."""
    if not values.size:
        return values
    low, high = int(values.min()), int(values.max())
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return values.astype(dtype)
    return values


class Tracker:
    """The connection table of one data source, fed whole batches (the compiled core).

    ``reference=True`` runs the plain Python model instead (the tests).
    Not thread-safe: one capture thread feeds it.  ``reset_counts`` (SIGHUP) is
    the caller's business: the table itself lives on across data sets.
    """

    def __init__(self, timeouts: Timeouts = Timeouts(),
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, reference: bool = False):
        check_max_connections(max_connections)
        self.timeouts = timeouts
        # K counted per peer in the core (``process_counted``); False: the plain twin,
        # its events counted by conncounts
        self.core_counts = HAVE_CORE and not reference
        if HAVE_CORE and not reference:
            self._core = _conntrack.Core(timeouts.tcp_establish, timeouts.tcp, timeouts.udp,
                                         timeouts.icmp, timeouts.tcp_linger, max_connections)
        else:
            from ncsniffer.conntrack_ref import ReferenceTracker
            self._core = ReferenceTracker(timeouts, max_connections)

        # connections ended since the tracker was made, per end state (``ended_totals``)
        self._ended = np.zeros(len(STATES), np.int64)

    def process(self, batch: np.ndarray) -> np.ndarray:
        """Track a batch of packets; the events it causes, in order."""
        return self._events(self._core.process(as_packets(batch)))

    def advance(self, now: int) -> np.ndarray:
        """Move the clock to second ``now`` with no packet (live, an idle tick): the expiries."""
        return self._events(self._core.advance(int(now)))

    def process_counted(self, batch: np.ndarray, keep_events: bool = True) -> Tracked:
        """``process``, the events counted per peer (``Tracked``); the events themselves
        only if ``keep_events`` (building them costs a tenth of the tracking)."""
        if self.core_counts:
            return self._tracked(self._core.process_counted(as_packets(batch), keep_events),
                                 keep_events)
        return self._counted_plain(self.process(batch), keep_events)

    def advance_counted(self, now: int, keep_events: bool = True) -> Tracked:
        """``advance``, counted as ``process_counted`` counts."""
        if self.core_counts:
            return self._tracked(self._core.advance_counted(int(now), keep_events), keep_events)
        return self._counted_plain(self.advance(now), keep_events)

    def _tracked(self, raw: tuple, keep_events: bool) -> Tracked:
        """The core's bytes as a ``Tracked`` (its counts int32, or int64 where one does not
        fit); its ends added to ``ended_totals``."""
        events, peers, deltas, before = raw
        n = len(peers) // PEER_DTYPE.itemsize
        counts = np.int32 if len(deltas) == n * K_WIDTH * 4 else np.int64
        deltas = np.frombuffer(deltas, counts).reshape(n, K_WIDTH)
        self._ended[CLOSED:EVICTED + 1] += deltas[:, K_ENDS].sum(0)
        return Tracked(np.frombuffer(events, EVENT_DTYPE) if keep_events else None,
                       np.frombuffer(peers, PEER_DTYPE), deltas, np.frombuffer(before, counts).reshape(n, K_WIDTH))

    def _counted_plain(self, events: np.ndarray, keep_events: bool) -> Tracked:
        """The plain twin of the core's count: the events counted by ``conncounts``,
        before = the open counts after the batch less the batch's own changes."""
        from ncsniffer import conncounts      # it imports this module
        peers, deltas = conncounts.count(events)
        before = conncounts.open_before(events, np.arange(len(peers)), self.open_counts(peers))
        return Tracked(events if keep_events else None, peers, deltas, before)

    def drain(self) -> np.ndarray:
        """End every open connection as ``drained`` (oldest activity first) and empty the table."""
        return self._events(self._core.drain())

    def still_open(self) -> np.ndarray:
        """Every open connection as a ``new`` event (oldest activity first), the table
        unchanged: what a replay about to evict records starts its per-peer counts with."""
        return self._events(self._core.still_open())

    def open_counts(self, peers: np.ndarray) -> np.ndarray:
        """Per peer of ``peers`` (``conncounts.PEER_DTYPE``), the K row (int64, ``K_FIELDS``
        order) of its open connections counted as begun (tcp udp icmp in out active; the
        rest 0): what a record made anew counts (10.3), without listing the table."""
        raw = self._core.open_counts(np.ascontiguousarray(peers))
        return raw if isinstance(raw, np.ndarray) else \
            np.frombuffer(raw, np.int64).reshape(len(peers), K_WIDTH)

    @property
    def live(self) -> int:
        """Open connections (lingering entries excluded): the ones ``max_connections`` bounds."""
        return self._core.live()

    @property
    def lingering(self) -> int:
        return self._core.lingering()

    @property
    def evictions(self) -> int:
        """Connections ended as ``evicted`` since the tracker was made."""
        return self._core.evictions()

    def ended_totals(self) -> dict[str, int]:
        """Connections ended since the tracker was made, by end state (SIGHUP keeps them:
        the metrics' counters)."""
        return dict(zip(STATES[CLOSED:], self._ended[CLOSED:].tolist()))

    def _events(self, raw) -> np.ndarray:
        events = raw if isinstance(raw, np.ndarray) else np.frombuffer(raw, EVENT_DTYPE)
        if len(events):
            self._ended += np.bincount(events["state"][events["kind"] == END],
                                       minlength=len(STATES))[:len(STATES)]
        return events
