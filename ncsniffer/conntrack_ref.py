"""The rules of spec 10.1/10.2 in plain Python, one packet at a time: the model.

Obviously correct rather than fast: dicts, and an expiry that looks at every
entry.  The property tests hold the compiled core (``_conntrack.c``) equal to
it event for event; ``conntrack.Tracker`` falls back to it when the extension
is missing.  It also keeps the per-peer ``K`` counters directly, so the tests
can check the aggregation of ``conncounts`` against it.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ncsniffer import conntrack as ct
from ncsniffer.conncounts import K_FIELDS, END_COUNTER

SYN_SENT, ESTABLISHED, FLOW, LINGER = "syn_sent", "established", "flow", "linger"


@dataclass
class Conn:
    """One entry of the table."""

    key: tuple
    from_me: bool            # the initiator (for a pickup: the first packet's sender)
    state: str
    pickup: bool = False
    synack: bool = False     # the responder sent SYN+ACK
    fin_orig: bool = False
    fin_resp: bool = False
    start: float = 0.0
    end: float = 0.0
    orig_packets: int = 0
    orig_bytes: int = 0
    resp_packets: int = 0
    resp_bytes: int = 0
    last: int = 0            # clock second of the last packet (of the ending, when lingering)
    activity: int = 0        # packet number of the last packet: the LRU order
    deadline: int = 0        # last + the state's timeout
    armed: int = 0           # when it got that deadline: the order among equal deadlines


class ReferenceTracker:
    """Same interface as ``conntrack.Tracker``'s core: process, advance, drain, counters."""

    def __init__(self, timeouts: ct.Timeouts = ct.Timeouts(),
                 max_connections: int = ct.DEFAULT_MAX_CONNECTIONS):
        self.timeouts = timeouts
        self.max_connections = ct.check_max_connections(max_connections)
        self.table: dict[tuple, Conn] = {}
        self.lingering_keys: OrderedDict[tuple, None] = OrderedDict()   # oldest linger first
        self.now: Optional[int] = None
        self.n_evictions = 0
        self.packet_no = 0
        self.arm_no = 0
        self.out: list[tuple] = []
        self.k: dict[tuple, dict[str, int]] = defaultdict(lambda: dict.fromkeys(K_FIELDS, 0))

    # --------------------------------------------------------------- interface
    def process(self, batch: np.ndarray) -> np.ndarray:
        for row in batch.tolist():
            self.packet(dict(zip(ct.PACKET_DTYPE.names, row)))
        return self._flush()

    def advance(self, now: int) -> np.ndarray:
        self._clock(now)
        return self._flush()

    def drain(self) -> np.ndarray:
        for c in sorted(self._live(), key=lambda c: c.activity):
            self._emit(ct.END, ct.DRAINED, c)
        self.table.clear()
        self.lingering_keys.clear()
        return self._flush()

    def still_open(self) -> np.ndarray:
        for c in sorted(self._live(), key=lambda c: c.activity):
            self.out.append(self._row(ct.NEW, ct.ACTIVE, c))
        return self._flush()

    def open_counts(self, peers: np.ndarray) -> np.ndarray:
        """Tracker.open_counts, by a look at every open connection."""
        rows_of: dict[tuple, list[int]] = defaultdict(list)
        for i, p in enumerate(peers.tolist()):
            rows_of[tuple(p)].append(i)
        out = np.zeros((len(peers), len(K_FIELDS)), np.int64)
        for c in self._live():
            v6, _, _, _, peer_hi, peer_lo, _, proto = c.key
            for i in rows_of.get((v6, peer_hi, peer_lo), ()):
                for name in ("udp" if proto == ct.UDP else "tcp" if proto == ct.TCP else "icmp",
                             "out" if c.from_me else "in", "active"):
                    out[i, K_FIELDS.index(name)] += 1
        return out

    def live(self) -> int:
        return len(self._live())

    def lingering(self) -> int:
        return len(self.table) - self.live()

    def evictions(self) -> int:
        return self.n_evictions

    # --------------------------------------------------------------- one packet
    def packet(self, p: dict) -> None:
        """Spec 10.2, in the order the rules apply."""
        proto = p["proto"]
        if proto not in ct.TRACKED:
            return
        self._clock(p["sec"])              # expiry before lookup
        ports = (0, 0) if proto in (ct.ICMP, ct.ICMP6) else (p["me_port"], p["peer_port"])
        key = (p["v6"], p["me_hi"], p["me_lo"], ports[0], p["peer_hi"], p["peer_lo"], ports[1],
               proto)
        ts = float(p["sec"]) + p["usec"] / 1e6
        self.packet_no += 1
        c = self.table.get(key)
        if proto == ct.TCP:
            return self._tcp(c, key, p, ts)
        fresh = c is None
        if fresh:
            c = self._open(key, bool(p["from_me"]), FLOW, ts)
        self._count(c, p, ts)
        if fresh:
            self._emit(ct.NEW, ct.ACTIVE, c)
        self._arm(c, self._timeout(c))

    def _tcp(self, c: Optional[Conn], key: tuple, p: dict, ts: float) -> None:
        flags = p["flags"]
        opening = flags & ct.SYN and not flags & (ct.ACK | ct.RST)
        if c is not None and c.state == LINGER:
            if not opening:
                return                     # absorbed: counts in B/C only
            self._forget(key)              # a new SYN during the linger: a new connection
            c = None
        sender_me = bool(p["from_me"])
        if c is None:
            c = self._open(key, sender_me, SYN_SENT if opening else ESTABLISHED, ts,
                           evict=opening or not flags & ct.RST)   # a lone RST: never live
            c.pickup = not opening
            self._count(c, p, ts)
            self._emit(ct.NEW, ct.ACTIVE, c)
            if opening:
                self._arm(c, self._timeout(c))
                return
        else:
            self._count(c, p, ts)
            if opening:                    # SYN retransmission: activity, nothing else
                self._arm(c, self._timeout(c))
                return
        from_initiator = sender_me == c.from_me
        if flags & ct.RST:
            refused = not c.pickup and not c.synack and not from_initiator
            return self._finish(c, ct.REFUSED if refused else ct.RESET)
        if flags & ct.SYN and flags & ct.ACK and not from_initiator:
            c.synack = True
            c.state = ESTABLISHED
        if flags & ct.FIN:
            if from_initiator:
                c.fin_orig = True
            else:
                c.fin_resp = True
            if c.fin_orig and c.fin_resp:
                return self._finish(c, ct.CLOSED)
        self._arm(c, self._timeout(c))

    # --------------------------------------------------------------- entries
    def _open(self, key: tuple, from_me: bool, state: str, ts: float,
              evict: bool = True) -> Conn:
        """A new entry, after evicting the least recently active one if the table is full
        (not for one that its packet ends at once: it takes no live slot)."""
        live = self._live()
        if evict and len(live) >= self.max_connections:
            victim = min(live, key=lambda c: c.activity)
            self._emit(ct.END, ct.EVICTED, victim)
            del self.table[victim.key]
            self.n_evictions += 1
        c = Conn(key, from_me, state, start=ts, end=ts)
        self.table[key] = c
        return c

    def _count(self, c: Conn, p: dict, ts: float) -> None:
        if bool(p["from_me"]) == c.from_me:
            c.orig_packets += 1
            c.orig_bytes += p["wirelen"]
        else:
            c.resp_packets += 1
            c.resp_bytes += p["wirelen"]
        c.end = ts
        c.last = self.now
        c.activity = self.packet_no

    def _finish(self, c: Conn, state: int) -> None:
        """Ended by this packet: the end event, then the linger, which ends the oldest
        linger at once (no event) if max_connections entries linger already."""
        self._emit(ct.END, state, c)
        if len(self.lingering_keys) >= self.max_connections:
            self._forget(next(iter(self.lingering_keys)))
        c.state = LINGER
        self.lingering_keys[c.key] = None
        self._arm(c, self.timeouts.tcp_linger)

    def _forget(self, key: tuple) -> None:
        """Delete an entry from the table (and from the linger order)."""
        del self.table[key]
        self.lingering_keys.pop(key, None)

    def _timeout(self, c: Conn) -> int:
        t = self.timeouts
        if c.state == SYN_SENT:
            return t.tcp_establish
        if c.state == ESTABLISHED:
            return t.tcp
        return t.udp if c.key[-1] == ct.UDP else t.icmp

    def _arm(self, c: Conn, timeout: int) -> None:
        deadline = self.now + timeout
        if deadline != c.deadline or c.armed == 0:
            c.deadline = deadline
            self.arm_no += 1
            c.armed = self.arm_no

    def _live(self) -> list[Conn]:
        return [c for c in self.table.values() if c.state != LINGER]

    # --------------------------------------------------------------- time
    def _clock(self, sec: int) -> None:
        """Move the clock forward to ``sec``: expired once now > last + timeout."""
        if self.now is not None and sec <= self.now:
            return
        self.now = sec
        expired = [c for c in self.table.values() if self.now > c.deadline]
        for c in sorted(expired, key=lambda c: (c.deadline, c.armed)):
            self._forget(c.key)
            if c.state != LINGER:
                self._emit(ct.END, ct.UNANSWERED if c.state == SYN_SENT else ct.TIMEDOUT, c)

    # --------------------------------------------------------------- output
    @staticmethod
    def _row(kind: int, state: int, c: Conn) -> tuple:
        """The EVENT_DTYPE row of an event of ``c``."""
        v6, me_hi, me_lo, me_port, peer_hi, peer_lo, peer_port, proto = c.key
        return (c.start, c.end, me_hi, me_lo, peer_hi, peer_lo,
                c.orig_packets, c.orig_bytes, c.resp_packets, c.resp_bytes,
                me_port, peer_port, kind, state, proto,
                ct.DIR_OUT if c.from_me else ct.DIR_IN, v6)

    def _emit(self, kind: int, state: int, c: Conn) -> None:
        self.out.append(self._row(kind, state, c))
        v6, _, _, _, peer_hi, peer_lo, _, proto = c.key
        k = self.k[(v6, peer_hi, peer_lo)]
        if kind == ct.NEW:
            k["udp" if proto == ct.UDP else "tcp" if proto == ct.TCP else "icmp"] += 1
            k["out" if c.from_me else "in"] += 1
            k["active"] += 1
        elif state in END_COUNTER:
            k[END_COUNTER[state]] += 1
            k["active"] -= 1

    def _flush(self) -> np.ndarray:
        events = np.array(self.out, ct.EVENT_DTYPE) if self.out else np.zeros(0, ct.EVENT_DTYPE)
        self.out = []
        return events
