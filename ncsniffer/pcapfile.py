"""Read pcap and pcapng files in large batches, with each packet's wire length.

The batch replay path needs many packets per Python step; libpcap bindings
hand over one packet per call (and pypcap not even the wire length).  Record
headers are walked here, fields gathered with numpy.  Anything this reader
does not know raises ``Unsupported`` before the first packet, and the caller
replays through libpcap instead.

Classic pcap records form a chain (each header gives the next one's offset),
which a Python loop walks at about a million records a second.  Instead, a
batch's byte range is split into lanes walked in lockstep by numpy: each lane
starts at a plausible record header found just after an even split point and
walks until it reaches the next lane's start.  Lane 0 starts at a known record,
and every lane must land exactly on the next lane's start, so by induction all
of them walk the true chain; when any check fails, the plain walk does the
batch.  Plausibility only decides speed, never results.
"""

from __future__ import annotations

import functools
import mmap
import struct
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

import numpy as np

from ncsniffer import fastread, pcapread
from ncsniffer.gather import Gather
from ncsniffer.linktypes import STRUCT_CODES
from ncsniffer.pcapread import (MAX_BYTES, MAX_PACKETS, MAX_RECORD, NATIVE,  # noqa: F401
                                PCAP_MAGIC_US, PCAP_VERSION, Truncated, Unsupported,
                                pcap_header)

MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)   # Linux 5.14; Python 3.13 names it
SYNC_SECONDS = 10 * 86400    # a lane's first record lies this close in time to the batch's first
US_PER_SEC = 10 ** 6         # a classic pcap's (and a pcapng's default) time units

# Classic pcap headers, in the file's byte order (read through ``layout``); the file
# header is laid out in ``pcapread``, without numpy.
PCAP_FILE_HEADER = pcapread.PCAP_FILE_HEADER.dtype()
PCAP_RECORD = np.dtype([("ts_sec", "u4"), ("ts_frac", "u4"), ("incl_len", "u4"),
                        ("orig_len", "u4")])
RECORD = PCAP_RECORD.itemsize
SEC, FRAC, INCL, ORIG = range(len(PCAP_RECORD.names))    # columns of Chain.fields
INCL_AT = PCAP_RECORD.fields["incl_len"][1]
SEC_TOP = {"<": PCAP_RECORD["ts_sec"].itemsize - 1, ">": 0}  # where ts_sec keeps its top byte
SEC_TOP_SHIFT = 8 * (PCAP_RECORD["ts_sec"].itemsize - 1)     # ... and which bits it holds
SEC_MAX = np.iinfo(PCAP_RECORD["ts_sec"]).max

# pcapng: block type codes, the blocks' fixed parts (header included), option codes.
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
SHB, IDB, PB, SPB, EPB = 0x0A0D0D0A, 1, 2, 3, 6
PACKET_BLOCKS = (PB, SPB, EPB)
PCAPNG_VERSIONS = ((1, 0), (1, 2))   # 1.2 is 1.0 (so libpcap 1.10 reads it; 1.9 refuses it)
BYTE_ORDERS = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}
BLOCK_HEADER = np.dtype([("type", "u4"), ("length", "u4")])
TRAILER = np.dtype([("length", "u4")])    # the total length again, after the body
SHB_BLOCK = np.dtype(BLOCK_HEADER.descr + [("byte_order", "u4"), ("major", "u2"),
                                          ("minor", "u2"), ("section_length", "i8")])
IDB_BLOCK = np.dtype(BLOCK_HEADER.descr + [("linktype", "u2"), ("reserved", "u2"),
                                          ("snaplen", "u4")])
EPB_BLOCK = np.dtype(BLOCK_HEADER.descr + [("interface", "u4"), ("ts_high", "u4"),
                                          ("ts_low", "u4"), ("caplen", "u4"), ("wirelen", "u4")])
PB_BLOCK = np.dtype(BLOCK_HEADER.descr + [("interface", "u2"), ("drops", "u2"),
                                         ("ts_high", "u4"), ("ts_low", "u4"), ("caplen", "u4"),
                                         ("wirelen", "u4")])
SPB_BLOCK = np.dtype(BLOCK_HEADER.descr + [("wirelen", "u4")])
OPTION = np.dtype([("code", "u2"), ("length", "u2")])
OPT_ENDOFOPT, IF_TSRESOL, IF_TSOFFSET = 0, 9, 14
IF_TSOFFSET_VALUE = np.dtype([("seconds", "i8")])
TSRESOL_BINARY = 0x80                # if_tsresol: a power of two, else of ten
ALIGN = 4                            # blocks and option values are padded to 32 bits
MIN_BLOCK = BLOCK_HEADER.itemsize + TRAILER.itemsize
EPB_FIXED = EPB_BLOCK.itemsize + TRAILER.itemsize    # bytes of a block that are not packet data
SPB_FIXED = SPB_BLOCK.itemsize + TRAILER.itemsize


def field_at(block: np.dtype, field: str) -> int:
    """Offset of ``field`` in a header layout."""
    return block.fields[field][1]


# Where a packet block's fields are: an enhanced and an (obsolete) packet block
# differ only in the interface field's width, not in the offsets read.
EPB_AT = {name: field_at(EPB_BLOCK, name) for name in EPB_BLOCK.names}
PB_AT = {name: field_at(PB_BLOCK, name) for name in PB_BLOCK.names}


@functools.lru_cache(maxsize=None)
def layout(header: np.dtype, endian: str, names: tuple[str, ...] | None = None) -> struct.Struct:
    """A struct reading ``header``'s fields (``names`` only, if given) in order, from
    its start to the end of the last one: the dtype says what is where, struct
    reads one header faster than numpy does."""
    codes, pos = [endian], 0
    for name in header.names if names is None else names:
        field, off = header.fields[name][:2]
        codes.append(f"{off - pos}x" if off > pos else "")
        codes.append(STRUCT_CODES[f"{field.kind}{field.itemsize}"])
        pos = off + field.itemsize
    return struct.Struct("".join(codes))


# What filtering and decoding a packet depend on: its link type, and whether its
# section is in the other byte order than this machine's (DLT_NULL's family word
# is in the writer's byte order, so libpcap compiles the filter accordingly).
Link = tuple[int, bool]


@dataclass
class Batch:
    """Packets in file order: data of packet i is ``buf[offs[i] : offs[i] + caplen[i]]``."""

    buf: bytes | mmap.mmap | memoryview    # a memoryview: the reused buffer (``reuse``)
    u8: np.ndarray
    offs: np.ndarray
    caplen: np.ndarray
    wirelen: np.ndarray
    sec: np.ndarray
    links: tuple[Link, ...] = ()         # the packets' links (none known: the caller's)
    link: np.ndarray | None = None       # per packet, its index in links (None: links[0])
    usec: np.ndarray | None = None       # microseconds within ``sec`` (None: unknown, 0)
    at: int = 0                          # the file offset of buf[0] (0: buf is the file)

    def micros(self) -> np.ndarray:
        """Each packet's microseconds within its second (zeros where unknown)."""
        return np.zeros(len(self.sec), np.int64) if self.usec is None else self.usec


def to_micros(frac: np.ndarray, per_sec) -> np.ndarray:
    """Fractions of a second in ``per_sec`` units (one for all, or per packet) as
    microseconds, truncated as libpcap scales them down (finer units than 1/2^40 s
    are first cut to keep the product within 64 bits)."""
    per_sec = np.asarray(per_sec, np.int64)
    cut = np.maximum(per_sec >> 40, 1)
    return (frac // cut) * US_PER_SEC // np.maximum(per_sec // cut, 1)


@dataclass
class Lanes:
    """How the classic pcap walk splits a batch: a lane per ``spacing`` bytes, each
    looking for its first record within ``windows`` bytes (one pass per window,
    later passes only for lanes still without one); with fewer than ``minimum``
    lanes, or under a quarter of them found, the plain walk is as fast."""

    spacing: int = 16384
    windows: tuple[int, ...] = (1536, 8192)
    minimum: int = 8


class Chain:
    """The record chain of one classic pcap file, walked by numpy lanes."""

    def __init__(self, g: Gather, endian: str, snaplen: int, units: int):
        self.g = g
        self.word = endian + "u4"
        self.snaplen = snaplen
        self.units = units               # fractional timestamp units per second
        self.lanes = Lanes()
        self.top = SEC_TOP[endian]
        self.scratch = np.empty(0, np.int64), np.empty(0, f"V{RECORD}")
        self.tried = self.trusted = 0             # batches the lanes walked, and verified

    def fields(self, hdr: np.ndarray) -> np.ndarray:
        """(n, 4) view of record headers: columns SEC, FRAC, INCL, ORIG."""
        return hdr.view(self.word).reshape(-1, len(PCAP_RECORD.names))

    def walk(self, pos: int, stop: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(starts, headers, next start) of the records starting in [pos, stop),
        ``pos`` a true record start; None where the lanes cannot be trusted."""
        n = (stop - pos) // self.lanes.spacing
        if n < self.lanes.minimum:
            return None
        self.tried += 1
        t0 = int(self.fields(self.g.block([pos], RECORD))[0, SEC])
        starts = self._starts(pos, n, t0)
        if len(starts) < max(self.lanes.minimum, n // 4):
            return None
        walked = self._lockstep(starts, stop)
        self.trusted += walked is not None
        return walked

    def _starts(self, pos: int, n: int, t0: int) -> np.ndarray:
        """``pos`` and, per lane found, the first plausible record after a split point."""
        spacing = self.lanes.spacing
        found = np.full(n - 1, -1, np.int64)
        lo = 0
        for hi in self.lanes.windows:
            hi = min(hi, spacing // 2)
            todo = np.flatnonzero(found < 0)
            if hi <= lo or not todo.size:
                break
            base = pos + spacing * (todo + 1) + lo         # each lane's window
            hit = self._hits(base, lo, hi, t0)
            col = hit.argmax(axis=1)                        # a lane's first hit, mostly a header
            lane = np.flatnonzero(hit[np.arange(len(todo)), col])
            at = base[lane] + col[lane]
            ok = self._plausible_run(at, t0)
            found[todo[lane[ok]]] = at[ok]
            retry = lane[~ok]
            if retry.size:                                  # a payload byte: try all hits
                row, col = np.divmod(np.flatnonzero(hit[retry]), hi - lo)
                lane, at = retry[row], base[retry[row]] + col
                ok = self._plausible_run(at, t0)
                lane, first = np.unique(lane[ok], return_index=True)
                found[todo[lane]] = at[ok][first]
            lo = hi
        return np.concatenate(([pos], found[found >= 0]))

    def _hits(self, base: np.ndarray, lo: int, hi: int, t0: int) -> np.ndarray:
        """(lanes, hi - lo) mask of the window offsets where a header's ts_sec would
        have the top byte of ``t0`` (± SYNC_SECONDS): one byte compare per offset,
        cheap enough to scan every lane's window.  ``base``: the windows, evenly
        spaced but for lanes already found."""
        spacing = self.lanes.spacing
        lanes = (base[-1] - base[0]) // spacing + 1
        win = np.ndarray((lanes, hi - lo), np.uint8, self.g.u8, int(base[0]) + self.top,
                         (spacing, 1))
        if lanes > len(base):
            win = win[(base - base[0]) // spacing]
        low, high = (max(t0 - SYNC_SECONDS, 0) >> SEC_TOP_SHIFT,
                     min(t0 + SYNC_SECONDS, SEC_MAX) >> SEC_TOP_SHIFT)
        hit = win == low
        if high != low:
            hit |= win == high
        return hit

    def _plausible_run(self, at: np.ndarray, t0: int, length: int = 3) -> np.ndarray:
        """Mask of offsets where ``length`` plausible record headers follow each other."""
        ok = np.ones(len(at), bool)
        for _ in range(length):
            f = self.fields(self.g.block(at, RECORD)).astype(np.int64)
            sec, frac, incl, orig = f[:, SEC], f[:, FRAC], f[:, INCL], f[:, ORIG]
            ok &= (np.abs(sec - t0) <= SYNC_SECONDS) & (frac < self.units) & \
                (incl <= self.snaplen) & (incl <= orig) & (orig <= MAX_RECORD)
            at = at + RECORD + incl
        return ok

    def _lockstep(self, starts: np.ndarray, stop: int):
        """Walk every lane to the next one's start (the last to ``stop``); None unless
        each lands exactly there, or when too few lanes keep walking for the lockstep
        to beat the plain walk (16 records a step).  A lane past its end walks on
        (into the next lane's records, mostly cached): cheaper than holding it."""
        ends = np.append(starts[1:], stop)
        pos = starts.copy()
        block = self.g.block
        at, hdr, incl = self._rows(0, len(starts))
        step = records = 0
        while (walking := np.count_nonzero(pos < ends)):
            records += walking
            if step >= 64 and records < 16 * step:
                return None
            if step == len(at):
                at, hdr, incl = self._rows(step, len(starts))
            at[step] = pos
            hdr[step] = block(pos, RECORD)
            pos += incl[step]
            pos += RECORD
            step += 1
        at, hdr, tail = _lane_major(ends, at[:step], hdr[:step])
        landed = at[tail] + RECORD + self.fields(hdr[tail])[:, INCL]
        if (landed[:-1] != ends[:-1]).any():
            return None
        return at, hdr, int(landed[-1])

    def _rows(self, steps: int, lanes: int):
        """(positions, headers, incl_len) scratch rows, one per step, for ``lanes``
        lanes: reused from batch to batch (fresh arrays cost page faults), grown
        keeping the first ``steps`` rows."""
        at, hdr = self.scratch
        if at.size < max(2 * steps, 128) * lanes:
            old = at, hdr
            size = max(2 * steps, 128) * lanes
            self.scratch = at, hdr = np.empty(size, np.int64), np.empty(size, f"V{RECORD}")
            for new, kept in zip(self.scratch, old):
                new[:steps * lanes] = kept[:steps * lanes]
        rows = at.size // lanes
        at, hdr = at[:rows * lanes].reshape(rows, lanes), hdr[:rows * lanes].reshape(rows, lanes)
        fields = hdr.view(self.word).reshape(rows, lanes, len(PCAP_RECORD.names))
        return at, hdr, fields[:, :, INCL]


def _lane_major(ends: np.ndarray, at: np.ndarray, hdr: np.ndarray):
    """The records of (steps, lanes) arrays in lane order, i.e. file order (each
    lane's records up to its end), and the index of each lane's last record."""
    lanes = len(ends)
    count = np.count_nonzero(at < ends, axis=0)      # a lane's records come first
    tail = np.cumsum(count) - 1
    step = np.full(tail[-1] + 1, lanes)              # flat index: down a lane's column ...
    step[tail[:-1] + 1] = 1 - (count[:-1] - 1) * lanes   # ... then to the next lane's top
    step[0] = 0
    flat = np.cumsum(step)
    return at.ravel()[flat], hdr.view(np.complex128).ravel()[flat].view(hdr.dtype), tail


def _trailer_differs(pos: int, blen: int, trailer: int) -> str:
    return f"block at byte {pos}: total length {blen} in its header, {trailer} in its trailer"


class Reader:
    """A capture file opened for batch reading; ``linktype`` (the first
    interface's, for pcapng) known after open.  ``check_link`` sees the link
    type of every interface when it is declared, and may raise."""

    def __init__(self, fh: BinaryIO, name: str,
                 check_link: Callable[[int], None] | None = None):
        self.fh = fh
        self.name = name
        self.check_link = check_link
        try:
            self.mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:      # a pipe, an empty file ...
            raise Unsupported(f"cannot map the file: {exc}") from exc
        self.g = Gather(self.mm)
        self.u8 = self.g.u8
        self.fast = fastread.enabled()     # classic pcap records walked in C
        self.populate = hasattr(self.mm, "madvise")
        head = self.mm[:PCAP_FILE_HEADER.itemsize]
        classic = pcapread.classic_header(head, check_link)
        if classic is not None:
            self.classic = classic
            self.endian, self.per_sec = classic.endian, classic.per_sec
            self.linktype, self.snaplen = classic.linktype, classic.snaplen
            self.links = ((self.linktype, classic.swapped),)
            self.kind = "pcap"
            self.start = PCAP_FILE_HEADER.itemsize
            self.chain = Chain(self.g, self.endian, self.snaplen, US_PER_SEC * self.per_sec)
        elif head[:len(PCAPNG_SHB)] == PCAPNG_SHB:
            self.kind = "pcapng"
            self.start = 0
            self.linktype = None
            # per interface of the section: (link type, snaplen, units/s, seconds offset)
            self.interfaces: list[tuple[int, int, int, int]] = []
            self._prime_pcapng()
        else:
            raise Unsupported("not a pcap or pcapng file")

    # ------------------------------------------------------------------ pcapng
    def _prime_pcapng(self) -> None:
        """Read blocks until the first interface description, for the link type."""
        btype, blen, self.endian = self._block(self.mm, 0, "<")
        self.version = self._version(self.mm, 0, self.endian)
        if self.version not in PCAPNG_VERSIONS:
            raise Unsupported("pcapng version %d.%d" % self.version)
        pos = 0
        while self.linktype is None:
            if pos + MIN_BLOCK > len(self.mm):
                raise Unsupported("no interface description block")
            btype, blen, _ = self._block(self.mm, pos, self.endian)
            if pos + blen > len(self.mm):
                raise Unsupported("truncated first blocks")
            if btype == IDB:
                self._interface(self.mm, pos, blen)
                self.linktype = self.interfaces[0][0]
                self.links = ((self.linktype, self.endian != NATIVE),)
            elif btype in PACKET_BLOCKS:
                raise Unsupported("packet before any interface description")
            pos += blen
        self.interfaces.clear()      # the walk reads them again, in order

    def _block(self, buf, pos: int, endian: str) -> tuple[int, int, str]:
        """(type, total length, byte order) of the block at ``pos`` in a section of
        byte order ``endian`` (a section header sets its own); Truncated if its
        header and trailer disagree, or it is a section header libpcap refuses."""
        if buf[pos:pos + len(PCAPNG_SHB)] == PCAPNG_SHB:
            order = pos + field_at(SHB_BLOCK, "byte_order")
            endian = BYTE_ORDERS.get(buf[order:order + SHB_BLOCK["byte_order"].itemsize])
            if endian is None:
                raise Truncated(f"section header at byte {pos}: bad byte-order magic")
        btype, blen = layout(BLOCK_HEADER, endian).unpack_from(buf, pos)
        if blen < MIN_BLOCK or blen % ALIGN:
            raise Truncated(f"block at byte {pos}: bogus block length {blen}")
        if pos + blen <= len(buf):
            trailer = layout(TRAILER, endian).unpack_from(buf, pos + blen - TRAILER.itemsize)[0]
            if trailer != blen:
                raise Truncated(_trailer_differs(pos, blen, trailer))
            if btype == SHB:
                major, minor = self._version(buf, pos, endian)
                if major != 1:
                    raise Truncated(f"section header at byte {pos}: unknown pcapng version "
                                    f"{major}.{minor}")
        return btype, blen, endian

    @staticmethod
    def _version(buf, pos: int, endian: str) -> tuple[int, int]:
        """(major, minor) of the section header at ``pos``."""
        return layout(SHB_BLOCK, endian, ("major", "minor")).unpack_from(buf, pos)

    @staticmethod
    def _link_snaplen(buf, pos: int, endian: str) -> tuple[int, int]:
        """(link type, snaplen) of the interface description at ``pos``."""
        _, _, linktype, _, snaplen = layout(IDB_BLOCK, endian).unpack_from(buf, pos)
        return linktype, snaplen

    def _interface(self, buf, pos: int, blen: int) -> None:
        linktype, snaplen = self._link_snaplen(buf, pos, self.endian)
        if self.check_link is not None:
            self.check_link(linktype)
        per_sec, offset = US_PER_SEC, 0
        option = layout(OPTION, self.endian).unpack_from
        opt = pos + IDB_BLOCK.itemsize
        end = pos + blen - TRAILER.itemsize
        while opt + OPTION.itemsize <= end:
            code, olen = option(buf, opt)
            value = opt + OPTION.itemsize
            if code == OPT_ENDOFOPT:
                break
            if code == IF_TSRESOL and olen >= 1:
                v = buf[value]
                per_sec = 2 ** (v & ~TSRESOL_BINARY) if v & TSRESOL_BINARY else 10 ** v
            elif code == IF_TSOFFSET and olen == IF_TSOFFSET_VALUE.itemsize:  # libpcap adds it
                offset = layout(IF_TSOFFSET_VALUE, self.endian).unpack_from(buf, value)[0]
            opt = value + olen + (-olen % ALIGN)
        snaplen = snaplen if 0 < snaplen <= MAX_RECORD else MAX_RECORD
        self.interfaces.append((linktype, snaplen, per_sec, offset))

    def beyond_libpcap(self) -> str | None:
        """What in this file libpcap cannot read, if anything (then only this reader
        reads it): pcapng version 1.2 (libpcap 1.9), interfaces of different link
        types or snapshot lengths, sections of different byte orders.  One walk
        over the block headers, up to any damage (libpcap finds that itself)."""
        if self.kind != "pcapng":
            return None
        if self.version != (1, 0):
            return "pcapng version %d.%d" % self.version
        found: dict[str, set] = {"byte orders": set(), "link types": set(),
                                 "snapshot lengths": set()}
        pos, endian, n = 0, self.endian, len(self.mm)
        while pos + MIN_BLOCK <= n:
            try:
                btype, blen, endian = self._block(self.mm, pos, endian)
            except Truncated:
                break
            if pos + blen > n:
                break
            if btype == SHB:
                found["byte orders"].add(endian)
            elif btype == IDB:
                linktype, snaplen = self._link_snaplen(self.mm, pos, endian)
                found["link types"].add(linktype)
                found["snapshot lengths"].add(snaplen if 0 < snaplen <= MAX_RECORD else MAX_RECORD)
            pos += blen
        differ = [what for what, values in found.items() if len(values) > 1]
        return f"sections or interfaces of different {' and '.join(differ)}" if differ else None

    # ------------------------------------------------------------------ batches
    def batches(self, max_packets: int | None = None, max_bytes: int | None = None,
                reuse: bool = False, ramp: bool = False) -> Iterator[Batch]:
        """Yield batches until the end of the file; raise Truncated at a broken end.

        A batch holds at most ``max_packets`` records (MAX_PACKETS) and ends at the
        first one starting ``max_bytes`` (MAX_BYTES) or more past its first.
        ``reuse``: a batch may be valid only until the next one is asked for (as
        libpcap's packets are): a classic pcap file walked in C is then read into
        one buffer that every batch reuses (``_read_pcap``).  ``ramp``: the first
        batches span less (FIRST_BYTES, doubling up to ``max_bytes``), so that a
        pipeline's next stage starts on the first one sooner.
        """
        max_packets = max_packets or MAX_PACKETS
        max_bytes = max_bytes or MAX_BYTES
        spans = pcapread.spans(max_bytes, ramp)
        if reuse and self.kind == "pcap" and self.fast:
            yield from self._read_pcap(max_packets, max_bytes, spans)
            return
        walk = self._walk_pcap if self.kind == "pcap" else self._walk_pcapng
        pos, end = self.start, len(self.mm)
        while pos < end:
            span = next(spans)
            self._populate(pos, span)
            batch, nxt = walk(pos, max_packets, pos + span)
            if batch is not None:
                yield batch
                self._release(pos, nxt)
            elif nxt == pos:
                raise pcapread.left_over(end - pos)
            pos = nxt

    def _read_pcap(self, limit: int, max_bytes: int, spans: Iterator[int]) -> Iterator[Batch]:
        """``batches`` of a classic pcap file read into one reused buffer
        (``pcapread.read``): the same batches, the same errors as in the map."""
        columns = [np.empty(limit, np.int64) for _ in range(pcapread.COLUMNS)]
        offs, caplen, wirelen, sec, usec = columns
        for view, n, at in pcapread.read(self.fh.fileno(), self.start, len(self.mm),
                                         self.classic, limit, max_bytes, spans, columns):
            yield Batch(view, np.frombuffer(view, np.uint8), offs[:n], caplen[:n], wirelen[:n],
                        sec[:n], self.links, usec=usec[:n], at=at)

    def _populate(self, start: int, length: int) -> None:
        """Map the pages of the next batch in one call (MADV_POPULATE_READ): a fault
        per page costs more (a fifth of the C walk's time).  Kernels before 5.14
        refuse it: then the pages fault in as they are read."""
        if not self.populate:
            return
        first = start - start % mmap.PAGESIZE
        try:
            self.mm.madvise(MADV_POPULATE_READ, first,
                            min(start + length + MAX_RECORD, len(self.mm)) - first)
        except (OSError, ValueError):
            self.populate = False

    def _release(self, start: int, stop: int) -> None:
        """Drop the pages of records already processed from our resident memory."""
        first = start - start % mmap.PAGESIZE
        length = stop - stop % mmap.PAGESIZE - first
        if length > 0 and hasattr(self.mm, "madvise"):
            try:
                self.mm.madvise(mmap.MADV_DONTNEED, first, length)
            except (OSError, ValueError):
                pass

    def _walk_pcap(self, pos: int, limit: int, stop: int):
        """(batch or None, next position) of the records from ``pos`` on: by the C
        walk (``fast``), or by numpy lanes and the plain walk, its twin."""
        stop = min(stop, len(self.mm) - RECORD + 1)    # a record header must fit
        if self.fast:
            return self._fast_walk(pos, limit, stop)
        walked = self.chain.walk(pos, stop)
        if walked is None:
            starts, nxt = self._plain_walk(pos, stop, limit)
            walked = starts, self.g.block(starts, RECORD), nxt
        return self._pcap_batch(*walked, limit)

    def _fast_walk(self, pos: int, limit: int, stop: int):
        """``_walk_pcap`` by the C walk (``pcapread.walk``): the same records, the
        same stop."""
        columns = [np.empty(limit, np.int64) for _ in range(pcapread.COLUMNS)]
        n, nxt = pcapread.walk(self.mm, pos, stop, limit, self.classic, columns)
        if not n:
            return None, nxt
        offs, caplen, wirelen, sec, usec = (c[:n] for c in columns)
        return Batch(self.mm, self.u8, offs, caplen, wirelen, sec, self.links, usec=usec), nxt

    def _plain_walk(self, pos: int, stop: int, limit: int) -> tuple[np.ndarray, int]:
        """The plain walk: one unpack per record; lengths are checked afterwards, in bulk."""
        incl_at = struct.Struct(f"{self.endian}{INCL_AT}xI").unpack_from
        buf = self.mm
        starts: list[int] = []
        append = starts.append
        while pos < stop and len(starts) < limit:
            append(pos)
            pos += RECORD + incl_at(buf, pos)[0]
        return np.array(starts, np.int64), pos

    def _pcap_batch(self, at: np.ndarray, hdr: np.ndarray, nxt: int, limit: int):
        """The batch of walked records, up to the first bogus or cut one."""
        if len(at) > limit:
            at, hdr, nxt = at[:limit], hdr[:limit], int(at[limit])
        if not len(at):
            return None, nxt
        f = self.chain.fields(hdr)
        incl = f[:, INCL].astype(np.int64)
        bad = np.flatnonzero((incl > MAX_RECORD) | (at + RECORD + incl > len(self.mm)))
        if bad.size:                       # keep what precedes a bogus or cut record
            j = int(bad[0])
            if j == 0:
                if incl[0] > MAX_RECORD:
                    raise pcapread.bogus(int(incl[0]))
                return None, int(at[0])
            at, f, incl, nxt = at[:j], f[:j], incl[:j], int(at[j])
        sec, wirelen = f[:, SEC].astype(np.int64), f[:, ORIG].astype(np.int64)
        usec = f[:, FRAC].astype(np.int64)
        if self.per_sec != 1:
            usec //= self.per_sec                # nanoseconds, as libpcap truncates them
        return Batch(self.mm, self.u8, at + RECORD, np.minimum(incl, self.snaplen), wirelen, sec,
                     self.links, usec=usec), nxt

    def _walk_pcapng(self, pos: int, limit: int, stop: int):
        """(batch or None, next position) of the blocks from ``pos`` on.  A batch
        ends before a new interface or section, and before damage: what precedes
        it is counted, the next walk starts at the damage and raises there."""
        buf = self.mm
        n = len(buf)
        blocks, kinds, lengths = [], [], []
        head = layout(BLOCK_HEADER, self.endian).unpack_from
        while pos + MIN_BLOCK <= n and len(blocks) < limit and pos < stop:
            btype, blen = head(buf, pos)
            if btype in PACKET_BLOCKS and blen >= MIN_BLOCK and not blen % ALIGN:
                if pos + blen > n:                   # (their trailers: checked in bulk)
                    break
                blocks.append(pos)
                kinds.append(btype)
                lengths.append(blen)
                pos += blen
                continue
            try:
                btype, blen, endian = self._block(buf, pos, self.endian)
            except Truncated:
                if blocks:
                    break
                raise
            if pos + blen > n:
                break
            if btype == IDB:
                if blocks:     # a new interface: let it apply from the next batch on
                    break
                self._interface(buf, pos, blen)
            elif btype == SHB:
                if blocks:     # a new section numbers its interfaces anew
                    break
                self.endian = endian
                head = layout(BLOCK_HEADER, endian).unpack_from
                self.interfaces.clear()
            pos += blen
        if not blocks:
            return None, pos
        return self._pcapng_batch(np.array(blocks, np.int64), np.array(kinds, np.int64),
                                  np.array(lengths, np.int64), pos)

    def _pcapng_batch(self, at: np.ndarray, kind: np.ndarray, blen: np.ndarray, nxt: int):
        """The batch of packet blocks ``at``, up to the first one libpcap refuses
        (a trailer that is not the block length, an undeclared interface, more
        data than the block or the interface's snapshot length holds): that one
        raises when it comes first."""
        u16, u32 = self.endian + "u2", self.endian + "u4"
        load = self.g.load
        data = at + EPB_BLOCK.itemsize         # (a packet block's data starts there too)
        caplen = np.zeros(len(at), np.int64)
        wirelen = np.zeros(len(at), np.int64)
        ts = np.zeros(len(at), np.int64)       # a simple packet block has no time: 0
        ifid = np.zeros(len(at), np.int64)     # ... and belongs to the first interface
        timed = np.flatnonzero(kind != SPB)
        if timed.size:
            t = at[timed]
            ifid[timed] = np.where(kind[timed] == EPB, load(u32, t + EPB_AT["interface"]),
                                   load(u16, t + PB_AT["interface"]))
            caplen[timed] = load(u32, t + EPB_AT["caplen"])
            wirelen[timed] = load(u32, t + EPB_AT["wirelen"])
            ts[timed] = (load(u32, t + EPB_AT["ts_high"]) << 32) | load(u32, t + EPB_AT["ts_low"])
        simple = np.flatnonzero(kind == SPB)
        room = blen - EPB_FIXED
        if simple.size:
            wirelen[simple] = load(u32, at[simple] + field_at(SPB_BLOCK, "wirelen"))
            caplen[simple] = np.minimum(wirelen[simple], self.interfaces[0][1] if self.interfaces
                                        else 0)
            data[simple] = at[simple] + SPB_BLOCK.itemsize
            room[simple] = blen[simple] - SPB_FIXED
        known = ifid < len(self.interfaces)
        iface = np.array(self.interfaces or [(0, 0, 1, 0)], np.int64)[np.where(known, ifid, 0)]
        trailer = load(u32, at + blen - TRAILER.itemsize)
        bad = np.flatnonzero((trailer != blen) | ~known | (caplen > room) | (caplen > iface[:, 1]))
        if bad.size:
            j = int(bad[0])
            if j == 0:
                raise Truncated(self._refused(int(at[0]), int(blen[0]), int(trailer[0]),
                                              int(ifid[0]), int(caplen[0]), int(room[0])))
            at, data, caplen, wirelen, ts, ifid, iface = (
                a[:j] for a in (at, data, caplen, wirelen, ts, ifid, iface))
            nxt = int(at[-1] + blen[j - 1])
        sec, frac = np.divmod(ts, iface[:, 2])
        links, link = self._links(ifid)
        return Batch(self.mm, self.u8, data, caplen, wirelen, sec + iface[:, 3], links, link,
                     to_micros(frac, iface[:, 2])), nxt

    def _refused(self, pos: int, blen: int, trailer: int, ifid: int, caplen: int,
                 room: int) -> str:
        """Why libpcap refuses the packet block at ``pos``."""
        if trailer != blen:
            return _trailer_differs(pos, blen, trailer)
        if ifid >= len(self.interfaces):
            return f"packet block at byte {pos}: interface {ifid} was not declared"
        if caplen > room:
            return f"packet block at byte {pos}: {caplen} bytes of packet in a shorter block"
        return (f"packet block at byte {pos}: {caplen} bytes of packet, more than its "
                f"interface's snapshot length {self.interfaces[ifid][1]}")

    def _links(self, ifid: np.ndarray) -> tuple[tuple[Link, ...], np.ndarray | None]:
        """The batch's links, and per packet its index among them (None if one)."""
        swapped = self.endian != NATIVE
        keys = [(i[0], swapped) for i in self.interfaces]
        links = tuple(dict.fromkeys(keys))
        if len(links) == 1:
            return links, None
        link = np.array([links.index(k) for k in keys], np.int64)[ifid]
        if (link == link[0]).all():
            return (links[int(link[0])],), None
        return links, link
