"""The replay pipeline over whole batches (numpy): filter, decode, match, account.

Same results as feeding ``Sniffer.packet`` one frame at a time — the same
decode rules and counters, the same accounting calls in the same order, the
same per-second ticks — but filtering and decoding run on arrays, so only the
accounting itself is done per packet in Python.
"""

from __future__ import annotations

import numpy as np

from ncsniffer import bpfvm, decode
from ncsniffer.pcapfile import Batch
from ncsniffer.sniffer import Sniffer

OK, TRUNCATED, NOT_IP, INVALID = 0, 1, 2, 3
REASONS = {TRUNCATED: decode.TRUNCATED, NOT_IP: decode.NOT_IP, INVALID: decode.INVALID}
VLAN = np.array(sorted(decode.VLAN_TAGS))
LINK_HEADER = {decode.DLT_EN10MB: (14, 12), decode.DLT_LINUX_SLL: (16, 14),
               decode.DLT_LINUX_SLL2: (20, 0)}
BY_VERSION = {decode.DLT_NULL: 4, decode.DLT_LOOP: 4, decode.DLT_RAW: 0,
              decode.DLT_RAW_LINKTYPE: 0, decode.DLT_IPV4: 0, decode.DLT_IPV6: 0}


class Gather:
    """Bounded byte loads from a batch buffer (indices past the end read the last byte;
    callers only use values where the captured length covers them)."""

    def __init__(self, u8: np.ndarray):
        self.u8 = u8
        self.last = len(u8) - 1

    def byte(self, at: np.ndarray) -> np.ndarray:
        return self.u8[np.minimum(at, self.last)].astype(np.int64)

    def be16(self, at: np.ndarray) -> np.ndarray:
        return (self.byte(at) << 8) | self.byte(at + 1)

    def be32(self, at: np.ndarray) -> np.ndarray:
        return (self.be16(at) << 16) | self.be16(at + 2)

    def rows(self, at: np.ndarray, width: int) -> np.ndarray:
        return self.u8[np.minimum(at[:, None] + np.arange(width), self.last)]


def decode_batch(linktype: int, g: Gather, offs: np.ndarray, cap: np.ndarray):
    """(reason, l3 offset, is IPv6) per packet, by the rules of ``ncsniffer.decode``."""
    n = len(offs)
    reason = np.zeros(n, np.int8)
    if linktype in LINK_HEADER:
        hl, etpos = LINK_HEADER[linktype]
        reason[cap < hl] = TRUNCATED
        et = g.be16(offs + etpos)
        l3 = np.full(n, hl, np.int64)
        for _ in range(4096):
            tagged = (reason == OK) & np.isin(et, VLAN)
            if not tagged.any():
                break
            short = tagged & (cap < l3 + 4)
            reason[short] = TRUNCATED
            tagged &= ~short
            et = np.where(tagged, g.be16(offs + l3 + 2), et)
            l3 = np.where(tagged, l3 + 4, l3)
        v4 = (reason == OK) & (et == decode.ETH_IPV4)
        v6 = (reason == OK) & (et == decode.ETH_IPV6)
        reason[(reason == OK) & ~v4 & ~v6] = NOT_IP
    else:
        l3 = np.full(n, BY_VERSION[linktype], np.int64)
        reason[cap <= l3] = TRUNCATED
        version = g.byte(offs + l3) >> 4
        v4 = (reason == OK) & (version == 4)
        v6 = (reason == OK) & (version == 6)
        reason[(reason == OK) & ~v4 & ~v6] = INVALID
    first = g.byte(offs + l3)
    reason[v4 & (cap < l3 + 20)] = TRUNCATED
    reason[v4 & (reason == OK) & ((first >> 4 != 4) | (first & 15 < 5))] = INVALID
    reason[v6 & (cap < l3 + 40)] = TRUNCATED
    reason[v6 & (reason == OK) & (first >> 4 != 6)] = INVALID
    return reason, l3, v6


def target_keys(g: Gather, at: np.ndarray, is6: np.ndarray, me: bytes) -> list[bytes]:
    """Packed target address per packet: the destination when the source is "me"."""
    keys = np.empty(len(at), object)
    i4 = np.flatnonzero(~is6)
    if i4.size:
        src, dst = g.be32(at[i4] + 12), g.be32(at[i4] + 16)
        me4 = int.from_bytes(me, "big") if len(me) == 4 else -1
        keys[i4] = np.where(src == me4, dst, src).astype(">u4").view("V4").tolist()
    i6 = np.flatnonzero(is6)
    if i6.size:
        src, dst = g.rows(at[i6] + 8, 16), g.rows(at[i6] + 24, 16)
        if len(me) == 16:
            mine = (src == np.frombuffer(me, np.uint8)).all(axis=1)
            src = np.where(mine[:, None], dst, src)
        keys[i6] = np.ascontiguousarray(src).view("V16").ravel().tolist()
    return keys.tolist()


def matching(batch: Batch, offs: np.ndarray, cap: np.ndarray, sniffer: Sniffer) -> np.ndarray:
    """Mask of packets whose window [payload, snaplen) passes match / nomatch."""
    lo, hi = int(offs.min()), int((offs + cap).max())
    find = batch.buf[lo:hi].lower().find           # one lower-casing for the batch
    match, nomatch = sniffer.match, sniffer.nomatch
    starts = (offs - lo + sniffer.payload).tolist()
    ends = (offs - lo + np.minimum(cap, sniffer.snaplen)).tolist()
    keep = np.ones(len(starts), bool)
    for i, (a, b) in enumerate(zip(starts, ends)):
        if (match is not None and find(match, a, b) < 0) or \
           (nomatch is not None and find(nomatch, a, b) >= 0):
            keep[i] = False
    return keep


def process(batch: Batch, prog, linktype: int, sniffer: Sniffer) -> None:
    """Account every packet of the batch that the filter program passes
    (``prog`` None: all of them, the kernel filtered them already)."""
    if prog is None:
        offs, cap, sec, wire = batch.offs, batch.caplen, batch.sec, batch.wirelen
    else:
        passed = np.flatnonzero(bpfvm.run(prog, batch.u8, batch.offs, batch.caplen,
                                          batch.wirelen))
        if not passed.size:
            return
        offs, cap = batch.offs[passed], batch.caplen[passed]
        sec, wire = batch.sec[passed], batch.wirelen[passed]
    g = Gather(batch.u8)
    reason, l3, is6 = decode_batch(linktype, g, offs, cap)
    sniffer.seen += len(offs)
    for code, name in REASONS.items():
        sniffer.undecoded[name] += int(np.count_nonzero(reason == code))
    good = np.flatnonzero(reason == OK)
    if sniffer.payload is not None and good.size:
        keep = matching(batch, offs[good], cap[good], sniffer)
        sniffer.unmatched += int(good.size - np.count_nonzero(keep))
        good = good[keep]
    sniffer.counted += int(good.size)
    keys = target_keys(g, offs[good] + l3[good], is6[good], sniffer.me)
    lengths = wire[good].tolist()
    # one run per second of packet time, ticks first, exactly as packet by packet
    bounds = np.flatnonzero(np.diff(sec)) + 1
    run_secs = sec[np.concatenate(([0], bounds))].tolist()
    cuts = np.searchsorted(good, np.concatenate((bounds, [len(sec)]))).tolist()
    count_run = sniffer.acct.count_run
    c0 = 0
    for now, c1 in zip(run_secs, cuts):
        now = sniffer.advance(now)
        if c1 > c0:
            count_run(keys[c0:c1], lengths[c0:c1], now)
        c0 = c1
