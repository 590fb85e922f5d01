"""The pipeline over whole batches (numpy): filter, decode, match, account.

Same results as taking the packets one at a time — the same decode rules and
counters, the same accounting in the same order, the same per-second ticks —
but every step runs on arrays.  What goes in is a frozen :class:`Rules` record
(the few settings the per-packet rules read), what comes out is
:class:`Counters` and the accounting's records: nothing here knows of the
config, the dump file or the daemon.  ``prepare`` (filter, decode, match,
target addresses) touches no state, so a replay runs it in a second process;
its :class:`Prepared` record is what a batch decoded to, for every consumer
(with ``Rules.flows``, the counted packets' ``FLOW`` records too, for the
connection tracker); ``apply`` (counters, distinct addresses, clock,
accounting, then the ``FlowConsumer``) runs where the records live.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from ncsniffer import bpfvm, decode, fastread, linktypes
from ncsniffer.accounting import Accounting
from ncsniffer.clock import Clock
from ncsniffer.table import Addresses
from ncsniffer.gather import HEAD, Gather, Heads
from ncsniffer.pcapfile import Batch

if TYPE_CHECKING:
    from ncsniffer.conntrack import Tracked

OK, TRUNCATED, NOT_IP, INVALID = 0, 1, 2, 3
REASONS = {TRUNCATED: decode.TRUNCATED, NOT_IP: decode.NOT_IP, INVALID: decode.INVALID}
C_REASONS = tuple(REASONS.values())   # the C pass's undecoded counts, in its order
VLAN = np.array(sorted(linktypes.VLAN_TAGS))
TAG, TAG_TYPE = linktypes.VLAN_TAG.itemsize, linktypes.VLAN_TAG.offset("type")
# Per link value, from the table: (header length, type field offset) where an
# Ethernet type tells the protocol, the header length where the version nibble does.
LINK_HEADER = {value: (link.length, link.type_at) for value, link in linktypes.BY_VALUE.items()
               if link.type_at is not None}
BY_VERSION = {value: link.length for value, link in linktypes.BY_VALUE.items()
              if link.type_at is None}
LOWER = np.arange(256, dtype=np.uint8)
LOWER[ord("A"):ord("Z") + 1] += 32                # bytes.lower(): ASCII letters only
MATCH_HEAD = 256     # with match/nomatch, copy this much of each packet (if snaplen is less)
FLOW_HEAD = 128      # with connections, copy this much (what IP options, TCP flags mostly need)
FLOW = decode.FLOW
# Tables by protocol number (one lookup per packet, not a search).
TRACKED = np.zeros((2, 256), bool)                 # [is IPv6, protocol]
for _six, _version in ((0, 4), (1, 6)):
    TRACKED[_six, list(decode.TRACKED[_version])] = True
EXTENSION = np.zeros(256, bool)
EXTENSION[list(decode.EXTENSIONS)] = True
PORTED = np.zeros(256, bool)
PORTED[[decode.TCP, decode.UDP]] = True
KEY_BYTES = np.zeros(256, np.int64)
KEY_BYTES[list(decode.KEY_BYTES)] = list(decode.KEY_BYTES.values())
LOW32 = np.uint64(0xFFFFFFFF)


@dataclass(frozen=True)
class Rules:
    """What the per-packet rules read of the settings, and nothing more."""

    linktype: int                  # of the capture (a pcapng file's links: ``prog``)
    me: bytes                      # packed; a packet from "me" counts for its destination
    snaplen: int
    payload: int | None = None     # set with match / nomatch: where their window starts
    match: bytes | None = None     # lower-case
    nomatch: bytes | None = None
    flows: bool = False            # connection tracking: extract the FLOW records too


@dataclass
class Counters:
    """What became of the packets the filter passed."""

    seen: int = 0                  # frames the bpf let through
    counted: int = 0
    unmatched: int = 0             # dropped by match / nomatch
    undecoded: dict[str, int] = field(
        default_factory=lambda: {decode.TRUNCATED: 0, decode.NOT_IP: 0, decode.INVALID: 0})

    def add(self, p: "Prepared") -> None:
        """Add a prepared batch's counts."""
        self.seen += p.seen
        for name, n in p.undecoded.items():
            self.undecoded[name] += n
        self.unmatched += p.unmatched
        self.counted += len(p.good)

    def text(self, hosts: int) -> str:
        """The counters on one line, for the log."""
        u = self.undecoded
        return (f"{self.seen} packets, {self.counted} counted, {self.unmatched} unmatched, "
                f"{u[decode.TRUNCATED]} truncated, {u[decode.NOT_IP]} non-IP, "
                f"{u[decode.INVALID]} invalid, {hosts} hosts")


def decode_batch(linktype: int, heads: Heads, rows: np.ndarray, cap: np.ndarray):
    """(reason, l3 offset, is IPv6) per packet ``rows`` of the batch, by the rules of
    ``ncsniffer.decode``."""
    n = len(rows)
    reason = np.zeros(n, np.int8)
    if linktype in LINK_HEADER:
        hl, etpos = LINK_HEADER[linktype]
        reason[cap < hl] = TRUNCATED
        word = heads.load(">u4", rows, etpos)      # the type, and the IP header's first byte
        et = word >> 16
        short = np.flatnonzero(cap < etpos + 4)   # the word ran past the captured bytes
        et[short] = heads.load(">u2", rows[short], etpos)
        first = (word >> 8) & 0xFF if etpos + 2 == hl else None
        l3 = np.full(n, hl, np.int64)
        for _ in range(4096):
            tagged = (reason == OK) & np.isin(et, VLAN)
            if not tagged.any():
                break
            short = tagged & (cap < l3 + TAG)
            reason[short] = TRUNCATED
            tagged &= ~short
            et = np.where(tagged, heads.load(">u2", rows, l3 + TAG_TYPE), et)
            l3 = np.where(tagged, l3 + TAG, l3)
        v4 = (reason == OK) & (et == linktypes.ETH_IPV4)
        v6 = (reason == OK) & (et == linktypes.ETH_IPV6)
        reason[(reason == OK) & ~v4 & ~v6] = NOT_IP
        if first is not None:
            moved = np.flatnonzero(l3 != hl)      # behind VLAN tags: load again
            first[moved] = heads.load("u1", rows[moved], l3[moved])
    else:
        l3 = np.full(n, BY_VERSION[linktype], np.int64)
        reason[cap <= l3] = TRUNCATED
        version = heads.load("u1", rows, l3) >> 4
        v4 = (reason == OK) & (version == 4)
        v6 = (reason == OK) & (version == 6)
        reason[(reason == OK) & ~v4 & ~v6] = INVALID
        first = None
    if first is None:
        first = heads.load("u1", rows, l3)
    reason[v4 & (cap < l3 + linktypes.IPV4_HEADER)] = TRUNCATED
    reason[v4 & (reason == OK) & ((first >> 4 != 4) | (first & 15 < 5))] = INVALID
    reason[v6 & (cap < l3 + linktypes.IPV6_HEADER)] = TRUNCATED
    reason[v6 & (reason == OK) & (first >> 4 != 6)] = INVALID
    return reason, l3, v6


@dataclass
class Targets:
    """Each counted packet's target address (the destination when the source is
    "me"): IPv4 ones as numbers, IPv6 ones as two 64-bit words, in packet order."""

    is6: np.ndarray               # bool, per packet
    v4: np.ndarray                # uint32, per IPv4 packet
    hi: np.ndarray                # uint64, per IPv6 packet
    lo: np.ndarray


def targets(heads: Heads, rows: np.ndarray, l3: np.ndarray, is6: np.ndarray,
            me: bytes) -> Targets:
    """The target addresses of packets ``rows`` (IP header at ``l3``)."""
    i4 = np.flatnonzero(~is6)
    v4 = np.zeros(0, np.uint32)
    if i4.size:
        both = heads.words(">u8", rows[i4], l3[i4] + 12)   # source and destination at once
        src, dst = both >> np.uint64(32), both & np.uint64(0xFFFFFFFF)
        me4 = int.from_bytes(me, "big") if len(me) == 4 else 1 << 32
        v4 = np.where(src == me4, dst, src).astype(np.uint32)
    i6 = np.flatnonzero(is6)
    r6, a6 = rows[i6], l3[i6]
    hi, lo = heads.words(">u8", r6, a6 + 8), heads.words(">u8", r6, a6 + 16)
    if len(me) == 16 and i6.size:
        mine = (hi == int.from_bytes(me[:8], "big")) & (lo == int.from_bytes(me[8:], "big"))
        hi = np.where(mine, heads.words(">u8", r6, a6 + 24), hi)
        lo = np.where(mine, heads.words(">u8", r6, a6 + 32), lo)
    return Targets(is6, v4, hi, lo)


def distinct(t: Targets) -> tuple[Addresses, np.ndarray]:
    """The distinct targets and, per packet, the index of its own among them: in C
    where built (``fastread.distinct``), else by numpy (``distinct_numpy``)."""
    v4, hi, lo, which = (fastread.distinct if fastread.enabled() else distinct_numpy)(
        t.is6, t.v4, t.hi, t.lo)
    return Addresses(v4, packed_v6(hi, lo)), which


def packed_v6(hi: np.ndarray, lo: np.ndarray) -> list[bytes]:
    """IPv6 addresses packed, from their two 64-bit words."""
    return np.stack((hi, lo), axis=1).astype(">u8").view("V16").ravel().tolist() if len(hi) else []


def distinct_numpy(is6: np.ndarray, v4: np.ndarray, hi: np.ndarray, lo: np.ndarray):
    """``fastread.distinct``'s plain twin: numpy's radix sorts and lexsort."""
    which = np.empty(len(is6), np.int64)
    u4, which[~is6] = unique32_numpy(v4)
    uhi, ulo, which[is6] = unique128_numpy(hi, lo)
    which[is6] += len(u4)
    return u4, uhi, ulo, which


def unique128_numpy(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (hi, lo) pairs, sorted, and each pair's index among them."""
    if not len(hi):
        return hi, lo, np.zeros(0, np.int64)
    order = np.lexsort((lo, hi))
    hi, lo = hi[order], lo[order]
    new = np.concatenate(([True], (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])))
    inverse = np.empty(len(order), np.int64)
    inverse[order] = np.cumsum(new) - 1
    return hi[new], lo[new], inverse


def unique32_numpy(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` for 32-bit values, by two stable
    16-bit radix sorts (about twice as fast as numpy's general sort)."""
    if not len(values):
        return values, np.zeros(0, np.int64)
    order = np.argsort(values.astype(np.uint16), kind="stable")     # low half first
    order = order[np.argsort((values[order] >> 16).astype(np.uint16), kind="stable")]
    ordered = values[order]
    new = np.concatenate(([True], ordered[1:] != ordered[:-1]))
    inverse = np.empty(len(values), np.int64)
    inverse[order] = np.cumsum(new) - 1
    return ordered[new], inverse


def matching(heads: Heads, rows: np.ndarray, cap: np.ndarray, rules: Rules) -> np.ndarray:
    """Mask of the packets ``rows`` whose window [payload, snaplen) passes match /
    nomatch (read from the packet-start copy when it reaches that far)."""
    payload = rules.payload
    length = np.maximum(np.minimum(cap, rules.snaplen) - payload, 0)
    width = int(length.max()) if len(length) else 0
    if payload + width <= heads.width:
        first, n = (int(rows[0]), len(rows)) if len(rows) else (0, 0)
        run = n and int(rows[-1]) - first + 1 == n        # consecutive rows: views, no copies

        def windows(lo: int, hi: int) -> np.ndarray:
            if run:
                return heads.rows[first + lo:first + min(hi, n), payload:payload + width]
            return heads.rows[rows[lo:hi], payload:payload + width]
    else:
        start = heads.offs[rows] + payload

        def windows(lo: int, hi: int) -> np.ndarray:
            return heads.g.window(start[lo:hi], width)
    keep = np.ones(len(length), bool)
    for needle, wanted in ((rules.match, True), (rules.nomatch, False)):
        if needle is not None:
            keep &= contains(windows, length, needle) == wanted
    return keep


def contains(windows: Callable[[int, int], np.ndarray], length: np.ndarray,
             needle: bytes) -> np.ndarray:
    """Mask of the windows whose first ``length`` lower-cased bytes hold ``needle``
    (lower-case already).  ``windows(lo, hi)``: the rows of windows lo..hi-1, all
    as wide as the longest.  The rows are compared with the needle's first byte
    (either case) at every position at once, then the candidates byte by byte;
    they are taken in chunks of about 16 MB."""
    found = np.zeros(len(length), bool)
    width = int(length.max()) if len(length) else 0
    if width < len(needle):
        return found
    first = needle[0]
    letter = first != bytes(needle[:1]).upper()[0]     # then b | 0x20 == first: either case
    step = max(1, (16 << 20) // width)
    for lo in range(0, len(length), step):
        win = windows(lo, lo + step)
        head = win[:, :width - len(needle) + 1]
        hit = ((head | 0x20) if letter else head) == first
        row, col = np.divmod(np.flatnonzero(hit), hit.shape[1])     # 6x np.nonzero's speed
        inside = col + len(needle) <= length[lo:lo + step][row]
        row, col = row[inside], col[inside]
        for k, byte in enumerate(needle[1:], 1):
            same = LOWER[win[row, col + k]] == byte
            row, col = row[same], col[same]
        found[lo + row] = True
    return found


def transport(heads: Heads, rows: np.ndarray, cap: np.ndarray, l3: np.ndarray,
              is6: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(protocol, transport header offset) per packet, by ``decode.transport``'s rules
    (NOT_TRACKED where it says so): the IPv6 extension headers walked one step
    for all packets at a time."""
    word = heads.load(">u8", rows, l3)          # IPv4: IHL, fragment; IPv6: next header
    proto = np.where(is6, (word >> 8) & 0xFF, heads.load("u1", rows, l3 + decode.IPV4_PROTOCOL_AT))
    l4 = np.where(is6, l3 + linktypes.IPV6_HEADER, l3 + ((word >> 56) & 15) * 4)
    ok = is6 | ((cap >= l4) & (word & decode.IPV4_OFFSET_MASK == 0))
    walk = np.flatnonzero(is6)
    for _ in range(decode.MAX_EXTENSIONS):
        ext = walk[EXTENSION[proto[walk]] & ok[walk]]
        if not ext.size:
            break
        at, kind = l4[ext], proto[ext]
        head = heads.load(">u4", rows[ext], at)   # next header, length, fragment offset
        fragment = (kind == decode.FRAGMENT) & ((head & 0xFFFF) >> 3 != 0)
        ok[ext[(cap[ext] < at + decode.EXTENSION_MIN) | fragment]] = False
        length = (head >> 16) & 0xFF
        l4[ext] = at + np.where(kind == decode.FRAGMENT, decode.EXTENSION_MIN,
                                np.where(kind == decode.AH, (length + 2) * 4, (length + 1) * 8))
        proto[ext] = head >> 24
        walk = ext
    ok &= TRACKED[is6.view(np.uint8), proto] & (cap >= l4 + KEY_BYTES[proto])
    return np.where(ok, proto, decode.NOT_TRACKED), l4


def flows(heads: Heads, rows: np.ndarray, cap: np.ndarray, l3: np.ndarray, is6: np.ndarray,
          me: bytes, sec: np.ndarray, usec: np.ndarray, length: np.ndarray) -> np.ndarray:
    """The FLOW records of packets ``rows`` (decoded: IP header at ``l3``), by
    ``decode.flow_fields``'s rules."""
    n = len(rows)
    out = np.empty(n, FLOW)
    proto, l4 = transport(heads, rows, cap, l3, is6)
    i4, i6 = np.flatnonzero(~is6), np.flatnonzero(is6)
    both = heads.words(">u8", rows[i4], l3[i4] + 12)       # IPv4: both addresses at once
    src_lo, dst_lo = _spread(n, i4, both >> np.uint64(32)), _spread(n, i4, both & LOW32)
    src_hi, dst_hi = (_spread(n, i6, heads.words(">u8", rows[i6], l3[i6] + at)) for at in (8, 24))
    for column, at in ((src_lo, 16), (dst_lo, 32)):
        column[i6] = heads.words(">u8", rows[i6], l3[i6] + at)
    me_hi, me_lo = decode.address_words(me)
    mine = (src_lo == me_lo) & (src_hi == me_hi) & (is6 == (len(me) == 16))
    ported = np.flatnonzero(PORTED[proto])
    ports = _spread(n, ported, heads.words(">u4", rows[ported], l4[ported]))
    tcp = np.flatnonzero(proto == decode.TCP)
    out["flags"] = _spread(n, tcp, heads.words("u1", rows[tcp], l4[tcp] + decode.TCP_FLAGS_AT))
    out["sec"], out["usec"], out["length"] = sec, usec, length
    out["proto"], out["v6"], out["from_me"] = proto, is6, mine
    out["me_hi"], out["me_lo"] = np.where(mine, src_hi, dst_hi), np.where(mine, src_lo, dst_lo)
    out["peer_hi"], out["peer_lo"] = np.where(mine, dst_hi, src_hi), np.where(mine, dst_lo, src_lo)
    sport, dport = ports >> 16, ports & 0xFFFF
    out["me_port"], out["peer_port"] = np.where(mine, sport, dport), np.where(mine, dport, sport)
    return out


def _spread(n: int, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` at the ascending indices ``idx`` of ``n`` zeros (all of them: as they are)."""
    if len(idx) == n:
        return values
    out = np.zeros(n, values.dtype)
    out[idx] = values
    return out


class FlowConsumer(Protocol):
    """What takes the FLOW records of each batch (the connection tracker), after
    the accounting counted the batch: a replay's clock is then at its last second."""

    def __call__(self, flows: np.ndarray, clock: Clock) -> None:
        """Take a batch's FLOW records (in packet order) on the driver's clock."""


@dataclass
class Prepared:
    """A batch filtered, decoded and matched: what ``prepare`` hands to ``apply``
    (possibly from another process), and what a consumer of decoded packets
    (the accounting; next, connection tracking) reads."""

    seen: int                     # packets the filter passed
    undecoded: dict[str, int]     # ... not decoded, by reason
    unmatched: int                # ... dropped by match / nomatch
    targets: Targets | None       # the counted packets' targets (None: ``found`` instead)
    sec: np.ndarray               # every passed packet's second
    good: np.ndarray              # which passed packets are counted
    lengths: np.ndarray           # ... their wire lengths
    flows: np.ndarray | None = None   # ... their FLOW records (with connections; else None)
    tracked: Tracked | None = None   # ... or the tracker's K of them (two-process replay)
    # the distinct targets and each counted packet's index among them, found already
    # (by the reading process of ``ncsniffer.headstart``; else ``distinct(targets)``)
    found: tuple[Addresses, np.ndarray] | None = None

    def __reduce__(self):
        """Pickled compactly for the pipe between a replay's processes (a third of
        the bytes, the pipe's and pickle's copies with them): the seconds as runs,
        ``good`` left out when every passed packet counts, wire lengths in 16 bits
        when they fit, the families as bits; unpickled exactly as they were."""
        t = self.targets
        every = len(self.good) == self.seen and (not self.seen or self.good[-1] == self.seen - 1)
        narrow = len(self.lengths) and int(self.lengths.max()) <= WIRE16_MAX and \
            int(self.lengths.min()) >= 0
        lengths = self.lengths.astype(np.uint16) if narrow else self.lengths
        return (_unpickled, (self.seen, self.undecoded, self.unmatched, _runs(self.sec),
                             None if every else self.good, lengths, np.packbits(t.is6),
                             len(t.is6), t.v4, t.hi, t.lo, self.flows, self.tracked))


WIRE16_MAX = np.iinfo(np.uint16).max


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value, length) of each run of equal values."""
    starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1]))) \
        if len(values) else np.zeros(0, np.int64)
    return values[starts], np.diff(np.append(starts, len(values)))


def _unpickled(seen, undecoded, unmatched, sec_runs, good, lengths, is6_bits, counted, v4, hi, lo,
               flows, tracked) -> Prepared:
    """The Prepared that ``Prepared.__reduce__`` packed."""
    sec = np.repeat(*sec_runs).astype(np.int64, copy=False)
    good = np.arange(seen, dtype=np.int64) if good is None else good
    is6 = np.unpackbits(is6_bits, count=counted).view(np.bool_)
    return Prepared(seen, undecoded, unmatched, Targets(is6, v4, hi, lo), sec, good,
                    lengths.astype(np.int64, copy=False), flows, tracked)


def process(batch: Batch, prog, rules: Rules, counters: Counters, acct: Accounting,
            clock: Clock, flows: FlowConsumer | None = None) -> None:
    """Account every packet of the batch that the filter program passes
    (``prog`` None: all of them, the kernel filtered them already)."""
    apply(prepare(batch, prog, rules), counters, acct, clock, flows)


def filter_decode(batch: Batch, heads: Heads, prog, linktype: int):
    """(rows the filter passes, and per passed row: reason, l3 offset, is IPv6).

    ``prog``: None (every packet passes), the program for ``linktype``, or a
    mapping from each link of ``batch.links`` to its program; then every packet
    is filtered and decoded by its own link, one group of packets per link."""
    if not isinstance(prog, Mapping):
        return _filter_decode(batch, heads, prog, linktype, None)
    if batch.link is None:
        return _filter_decode(batch, heads, prog[batch.links[0]], batch.links[0][0], None)
    parts = [_filter_decode(batch, heads, prog[link], link[0], np.flatnonzero(batch.link == i))
             for i, link in enumerate(batch.links)]
    rows, reason, l3, is6 = (np.concatenate(column) for column in zip(*parts))
    order = np.argsort(rows, kind="stable")                 # back to file order
    return rows[order], reason[order], l3[order], is6[order]


def _filter_decode(batch: Batch, heads: Heads, prog, linktype: int, idx: np.ndarray | None):
    """``filter_decode`` for the packets ``idx`` (None: all), all of ``linktype``."""
    if idx is None:
        rows = np.arange(len(batch.offs)) if prog is None else \
            np.flatnonzero(bpfvm.run(prog, heads, batch.offs, batch.caplen, batch.wirelen))
    else:
        rows = idx if prog is None else idx[bpfvm.run(
            prog, heads.g, batch.offs[idx], batch.caplen[idx], batch.wirelen[idx])]
    return (rows, *decode_batch(linktype, heads, rows, batch.caplen[rows]))


def prepare(batch: Batch, prog, rules: Rules) -> Prepared:
    """Filter, decode, match and find the targets; touches no state (it reads the
    rules only).  ``prog``: as ``filter_decode`` takes it.  In C where it can
    (``prepare_fast``), else by numpy (``prepare_numpy``, its plain twin)."""
    fast = prepare_fast(batch, prog, rules) if fastread.enabled() else None
    return fast if fast is not None else prepare_numpy(batch, prog, rules)


def prepare_fast(batch: Batch, prog, rules: Rules) -> Prepared | None:
    """``prepare_numpy``'s result by the C pass, or None where it does not apply:
    match / nomatch (their windows stay numpy's), a batch of several links, a
    program or "me" the C pass does not take."""
    if rules.payload is not None:
        return None
    linktype = rules.linktype
    if isinstance(prog, Mapping):
        if batch.link is not None:
            return None
        linktype = batch.links[0][0]
        prog = prog[batch.links[0]]
    filled = fastread.prepare(batch.u8, batch.offs, batch.caplen, batch.wirelen, batch.sec,
                              batch.usec, fastread.program(prog), linktypes.c_decoding(linktype),
                              rules.me, rules.flows)
    if filled is None:
        return None
    undecoded = dict(zip(C_REASONS, (filled.truncated, filled.not_ip, filled.invalid)))
    return Prepared(len(filled.sec), undecoded, 0,
                    Targets(filled.is6, filled.v4, filled.hi, filled.lo),
                    filled.sec, filled.good, filled.lengths, filled.flows)


def prepare_numpy(batch: Batch, prog, rules: Rules) -> Prepared:
    """``prepare`` by numpy steps over the whole batch."""
    width = HEAD if rules.payload is None else max(HEAD, min(rules.snaplen, MATCH_HEAD))
    if rules.flows:
        width = max(width, FLOW_HEAD)
    heads = Heads(Gather(batch.u8), batch.offs, width)
    rows, reason, l3, is6 = filter_decode(batch, heads, prog, rules.linktype)
    cap = batch.caplen[rows]
    undecoded = {name: int(np.count_nonzero(reason == code)) for code, name in REASONS.items()}
    good = np.flatnonzero(reason == OK)
    unmatched = 0
    if rules.payload is not None and good.size:
        keep = matching(heads, rows[good], cap[good], rules)
        unmatched = int(good.size - np.count_nonzero(keep))
        good = good[keep]
    sec, lengths = batch.sec[rows], batch.wirelen[rows][good]
    found = None
    if rules.flows:
        r = rows[good]
        found = flows(heads, r, cap[good], l3[good], is6[good], rules.me, sec[good],
                      batch.micros()[r], lengths)
    return Prepared(len(rows), undecoded, unmatched,
                    targets(heads, rows[good], l3[good], is6[good], rules.me),
                    sec, good, lengths, found)


def apply(p: Prepared, counters: Counters, acct: Accounting, clock: Clock,
          flows: FlowConsumer | None = None) -> None:
    """Count a prepared batch: the counters, then the accounting on ``clock``,
    then the FLOW records (if prepared) go to ``flows``."""
    if not p.seen:
        return
    counters.add(p)
    account(acct, clock, *(p.found or distinct(p.targets)), p.sec, p.good, p.lengths)
    if flows is not None and p.flows is not None:
        flows(p.flows, clock)


def account(acct: Accounting, clock: Clock, keys: Addresses, which: np.ndarray,
            sec: np.ndarray, good: np.ndarray, lengths: np.ndarray) -> None:
    """Account the counted packets (``good``) at their own seconds and, on a
    packet clock, move it second by second over the batch (``sec``: every
    packet's, counted or not).

    A replay's per-second jobs (the purge, DNS) must see the state of their
    second.  The records' arithmetic is independent of the DNS state (T, N, the
    names wanted), so it takes the whole batch in one step, and only the names
    wanted follow the clock second by second.  While the purge may delete
    records in the batch's seconds (or with max_hosts and DNS together),
    everything goes second by second.  On the wall clock nothing waits for the
    packets: the batch is one step.
    """
    bounds = np.flatnonzero(sec[1:] != sec[:-1]) + 1
    run_secs = sec[np.concatenate(([0], bounds))].tolist()
    times = sec[good]
    packets = clock.packets
    cuts = np.searchsorted(good, np.concatenate((bounds, [len(sec)]))).tolist()
    packets(run_secs[0])            # (replay: the first second starts the clock)
    by_second = clock.packet_time
    names_by_second = by_second and acct.names is not None
    stepwise = by_second and (
        acct.purge_due(int(sec.max()), int(times.min()) if good.size else None)
        or (names_by_second and acct.max_hosts))
    # Otherwise one step per stretch up to the next export tick (``split_at``, on a
    # packet clock): the tick's cut must see exactly its interval's packets.
    counted = base = 0
    slots = None
    c0 = 0
    for i, (now, c1) in enumerate(zip(run_secs, cuts)):
        if i:
            packets(now)
        if c1 > c0 and stepwise:
            acct.count_packets(keys, which[c0:c1], times[c0:c1], lengths[c0:c1])
        elif c1 > c0:
            if counted < c1:
                stop = _stretch_end(run_secs, cuts, i, acct.split_at) if by_second else len(times)
                slots = acct.count_packets(keys, which[c0:stop], times[c0:stop],
                                           lengths[c0:stop], ask=not names_by_second)
                base, counted = c0, stop
            if names_by_second:
                acct.ask_names(slots[c0 - base:c1 - base], times[c0:c1])
        c0 = c1


def _stretch_end(run_secs: list, cuts: list, i: int, split_at: int) -> int:
    """End (in the counted packets) of the stretch from run ``i``: before the first
    later run at or past ``split_at``, the second whose tick cuts an interval."""
    for j in range(i + 1, len(run_secs)):
        if run_secs[j] >= split_at:
            return cuts[j - 1]
    return cuts[-1]
