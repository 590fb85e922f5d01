"""Read pcap and pcapng files in large batches, with each packet's wire length.

The batch replay path needs many packets per Python step; libpcap bindings
hand over one packet per call (and pypcap not even the wire length).  Record
headers are walked here, fields gathered with numpy.  Anything this reader
does not know raises ``Unsupported`` before the first packet, and the caller
replays through libpcap instead.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np

MAX_RECORD = 262144          # libpcap refuses larger records as bogus
PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": ("<", 1), b"\xa1\xb2\xc3\xd4": (">", 1),
               b"\x4d\x3c\xb2\xa1": ("<", 1000), b"\xa1\xb2\x3c\x4d": (">", 1000)}
PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"


class Unsupported(Exception):
    """A file this reader does not handle; libpcap will."""


class Truncated(Exception):
    """The file ends inside a record, or a record header is bogus."""


@dataclass
class Batch:
    """Packets in file order: data of packet i is ``buf[offs[i] : offs[i] + caplen[i]]``."""

    buf: bytes | mmap.mmap
    u8: np.ndarray
    offs: np.ndarray
    caplen: np.ndarray
    wirelen: np.ndarray
    sec: np.ndarray


def _u32(u8: np.ndarray, at: np.ndarray, big: bool) -> np.ndarray:
    b = [u8[at + j].astype(np.int64) for j in range(4)]
    if big:
        return (b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]
    return (b[3] << 24) | (b[2] << 16) | (b[1] << 8) | b[0]


class Reader:
    """A capture file opened for batch reading; ``linktype`` known after open."""

    def __init__(self, fh: BinaryIO, name: str):
        self.fh = fh
        self.name = name
        try:
            self.mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:      # a pipe, an empty file ...
            raise Unsupported(f"cannot map the file: {exc}") from exc
        self.u8 = np.frombuffer(self.mm, np.uint8)
        head = self.mm[:24]
        if head[:4] in PCAP_MAGICS:
            if len(head) < 24:
                raise Truncated("truncated file header")
            self.endian, self.per_sec = PCAP_MAGICS[head[:4]]
            _, _, _, _, snaplen, linktype = struct.unpack(self.endian + "HHiIII", head[4:24])
            self.linktype = linktype & 0x03FFFFFF
            self.snaplen = snaplen if 0 < snaplen <= MAX_RECORD else MAX_RECORD
            self.kind = "pcap"
            self.start = 24
        elif head[:4] == PCAPNG_SHB:
            self.kind = "pcapng"
            self.start = 0
            self.linktype = None
            self.interfaces: list[tuple[int, int, int]] = []   # (linktype, snaplen, units/s)
            self._prime_pcapng()
        else:
            raise Unsupported("not a pcap or pcapng file")

    # ------------------------------------------------------------------ pcapng
    def _prime_pcapng(self) -> None:
        """Read blocks until the first interface description, for the link type."""
        self.endian = "<"
        pos = 0
        while self.linktype is None:
            if pos + 12 > len(self.mm):
                raise Unsupported("no interface description block")
            btype, blen = self._block_head(self.mm, pos)
            if pos + blen > len(self.mm):
                raise Unsupported("truncated first blocks")
            if btype == 1:
                self._interface(self.mm, pos, blen)
            elif btype in (2, 3, 6):
                raise Unsupported("packet before any interface description")
            pos += blen
        self.interfaces.clear()      # the walk reads them again, in order

    def _block_head(self, buf: bytes, pos: int) -> tuple[int, int]:
        btype = struct.unpack_from("<I", buf, pos)[0]
        if btype == 0x0A0D0D0A:
            bom = buf[pos + 8:pos + 12]
            if bom == b"\x4d\x3c\x2b\x1a":
                self.endian = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                self.endian = ">"
            else:
                raise Truncated("bad section header byte order")
        btype, blen = struct.unpack_from(self.endian + "II", buf, pos)
        if blen < 12 or blen % 4:
            raise Truncated(f"bogus block length {blen}")
        return btype, blen

    def _interface(self, buf: bytes, pos: int, blen: int) -> None:
        linktype, _, snaplen = struct.unpack_from(self.endian + "HHI", buf, pos + 8)
        per_sec = 10 ** 6
        opt = pos + 16
        end = pos + blen - 4
        while opt + 4 <= end:
            code, olen = struct.unpack_from(self.endian + "HH", buf, opt)
            if code == 0:
                break
            if code == 9 and olen >= 1:
                v = buf[opt + 4]
                per_sec = 2 ** (v & 0x7F) if v & 0x80 else 10 ** v
            opt += 4 + olen + (-olen % 4)
        if self.linktype is not None and linktype != self.linktype:
            raise Unsupported("interfaces with different link types")
        self.linktype = linktype
        snaplen = snaplen if 0 < snaplen <= MAX_RECORD else MAX_RECORD
        self.interfaces.append((linktype, snaplen, per_sec))

    # ------------------------------------------------------------------ batches
    def batches(self, max_packets: int = 65536) -> Iterator[Batch]:
        """Yield batches until the end of the file; raise Truncated at a broken end."""
        walk = self._walk_pcap if self.kind == "pcap" else self._walk_pcapng
        pos, end = self.start, len(self.mm)
        while pos < end:
            batch, nxt = walk(self.mm, pos, max_packets)
            if batch is not None:
                yield batch
                self._release(pos, nxt)
            elif nxt == pos:
                raise Truncated(f"file ends inside a record ({end - pos} bytes left over)")
            pos = nxt

    def _release(self, start: int, stop: int) -> None:
        """Drop the pages of records already processed from our resident memory."""
        first = start - start % mmap.PAGESIZE
        length = stop - stop % mmap.PAGESIZE - first
        if length > 0 and hasattr(self.mm, "madvise"):
            try:
                self.mm.madvise(mmap.MADV_DONTNEED, first, length)
            except (OSError, ValueError):
                pass

    def _walk_pcap(self, buf, pos: int, limit: int):
        # The hot loop: one unpack per record; lengths are checked afterwards, in bulk.
        incl_at = struct.Struct(self.endian + "8xI").unpack_from
        last = len(buf) - 16
        starts: list[int] = []
        append = starts.append
        while pos <= last and len(starts) < limit:
            append(pos)
            pos += 16 + incl_at(buf, pos)[0]
        if not starts:
            return None, pos
        u8 = self.u8
        at = np.array(starts, np.int64)
        big = self.endian == ">"
        incl = _u32(u8, at + 8, big)
        bad = np.flatnonzero((incl > MAX_RECORD) | (at + 16 + incl > len(buf)))
        if bad.size:                       # keep what precedes a bogus or cut record
            j = int(bad[0])
            if j == 0:
                if incl[0] > MAX_RECORD:
                    raise Truncated(f"bogus record length {int(incl[0])}")
                return None, starts[0]
            at, incl, pos = at[:j], incl[:j], starts[j]
        sec = _u32(u8, at, big)
        caplen = np.minimum(incl, self.snaplen)
        wirelen = _u32(u8, at + 12, big)
        return Batch(buf, u8, at + 16, caplen, wirelen, sec), pos

    def _walk_pcapng(self, buf, pos: int, limit: int):
        n = len(buf)
        blocks, kinds, lengths = [], [], []
        while pos + 12 <= n and len(blocks) < limit:
            btype, blen = self._block_head(buf, pos)
            if pos + blen > n:
                break
            if btype in (2, 3, 6):       # packet, simple packet, enhanced packet
                blocks.append(pos)
                kinds.append(btype)
                lengths.append(blen)
            elif btype == 1:
                if blocks:     # a new interface: let it apply from the next batch on
                    break
                self._interface(buf, pos, blen)
            elif btype == 0x0A0D0D0A:
                if blocks:     # a new section numbers its interfaces anew
                    break
                self.interfaces.clear()
            pos += blen
        if not blocks:
            return None, pos
        u8 = self.u8
        big = self.endian == ">"
        at = np.array(blocks, np.int64)
        kind = np.array(kinds, np.int64)
        data = at + 28
        caplen = np.zeros(len(at), np.int64)
        wirelen = np.zeros(len(at), np.int64)
        sec = np.zeros(len(at), np.int64)      # a simple packet block has no time: 0
        ifid = np.zeros(len(at), np.int64)     # ... and belongs to the first interface
        timed = np.flatnonzero(kind != 3)
        if timed.size:
            t = at[timed]
            ifid[timed] = np.where(kind[timed] == 6, _u32(u8, t + 8, big), _u16(u8, t + 8, big))
            caplen[timed] = _u32(u8, t + 20, big)
            wirelen[timed] = _u32(u8, t + 24, big)
        simple = np.flatnonzero(kind == 3)
        if simple.size:
            wirelen[simple] = _u32(u8, at[simple] + 8, big)
            caplen[simple] = np.minimum(wirelen[simple], np.array(lengths)[simple] - 16)
            data[simple] = at[simple] + 12
        if ifid.max() >= len(self.interfaces):
            raise Truncated("packet of an undeclared interface")
        per_sec = np.array([i[2] for i in self.interfaces], np.int64)[ifid]
        snap = np.array([i[1] for i in self.interfaces], np.int64)[ifid]
        if timed.size:
            t = at[timed]
            ts = (_u32(u8, t + 12, big) << 32) | _u32(u8, t + 16, big)
            sec[timed] = ts // per_sec[timed]
        return Batch(buf, u8, data, np.minimum(caplen, snap), wirelen, sec), pos


def _u16(u8: np.ndarray, at: np.ndarray, big: bool) -> np.ndarray:
    a, b = u8[at].astype(np.int64), u8[at + 1].astype(np.int64)
    return (a << 8) | b if big else (b << 8) | a
