"""Classic pcap files read, walked and prepared by C into plain buffers, without numpy.

A replay's reading process can start before the counting process has imported
numpy (``ncsniffer.headstart``: that import is a third of a short replay), so
what it needs of a classic pcap file is here: the file header, the batch spans,
the reused read buffer and the record walk, with the errors the batch reader
(``ncsniffer.pcapfile``, which wraps these batches in numpy arrays) reports.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import sys
from dataclasses import dataclass
from typing import Iterator

from ncsniffer.linktypes import Layout

try:
    from ncsniffer import _fastread
except ImportError:           # not built: pcapfile's numpy walk reads every file
    _fastread = None

MAX_RECORD = 262144          # libpcap refuses larger records as bogus
MAX_PACKETS = 65536          # records per batch, bounds memory for tiny packets
MAX_BYTES = 16 << 20         # a batch ends at the first record this far past its start
FIRST_BYTES = 1 << 20        # ... the first one of a ramp (``spans(ramp=True)``)
PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": ("<", 1), b"\xa1\xb2\xc3\xd4": (">", 1),
               b"\x4d\x3c\xb2\xa1": ("<", 1000), b"\xa1\xb2\x3c\x4d": (">", 1000)}
PCAP_MAGIC_US = 0xA1B2C3D4  # what a classic pcap writer of microseconds stores
PCAP_VERSION = (2, 4)        # older ones swap the two lengths: libpcap reads those
LINKTYPE_MASK = 0x03FFFFFF   # the link type's bits of the header's field (FCS flags above)
NATIVE = "<" if sys.byteorder == "little" else ">"
# The file header, in the writer's byte order: where a file names its LINKTYPE_ value.
PCAP_FILE_HEADER = Layout((("magic", "u4"), ("major", "u2"), ("minor", "u2"),
                           ("thiszone", "i4"), ("sigfigs", "u4"), ("snaplen", "u4"),
                           ("linktype", "u4")))
FILE_HEADER_SIZE = PCAP_FILE_HEADER.itemsize
RECORD = 16                  # a record header: seconds, fraction, captured and wire lengths
INSN = struct.Struct("=HBBI")  # struct bpf_insn, as the C interpreter reads a program
COLUMNS = 5                  # what the walk fills per record: offset, captured and wire
#                              lengths, second, microseconds (int64 each)
MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)   # Linux: map a batch's pages in one call
FAST_ENV = "NCSNIFFER_FASTREAD"    # "0": the numpy path (pcapfile's walk, batch.prepare_numpy)


def fast_enabled() -> bool:
    """Whether the C path runs (built, and not switched off)."""
    return _fastread is not None and os.environ.get(FAST_ENV) != "0"


class Unsupported(Exception):
    """A file this reader does not handle; libpcap will."""


class Truncated(Exception):
    """The file ends inside a record, or a record or block is damaged."""


@dataclass(frozen=True)
class Classic:
    """What reading a classic pcap file's records needs of its file header."""

    endian: str                  # "<" or ">": the file's byte order
    per_sec: int                 # the fraction's units per microsecond (1, or 1000: ns)
    snaplen: int                 # a record's captured bytes beyond it are not read
    linktype: int

    @property
    def swapped(self) -> bool:
        return self.endian != NATIVE


def classic_header(head: bytes, check_link=None) -> Classic | None:
    """The header of a classic pcap file from its first bytes; None if it is not
    one (pcapng, or no pcap at all); Truncated or Unsupported if it is a broken
    or odd one.  ``check_link`` sees the link type (and may raise)."""
    kind = PCAP_MAGICS.get(bytes(head[:4]))
    if kind is None:
        return None
    if len(head) < FILE_HEADER_SIZE:
        raise Truncated("truncated file header")
    endian, per_sec = kind
    _, *version, _, _, snaplen, linktype = PCAP_FILE_HEADER.struct(endian).unpack_from(head)
    if tuple(version) != PCAP_VERSION:
        raise Unsupported("pcap version %d.%d" % tuple(version))
    linktype &= LINKTYPE_MASK
    if check_link is not None:
        check_link(linktype)
    return Classic(endian, per_sec, snaplen if 0 < snaplen <= MAX_RECORD else MAX_RECORD,
                   linktype)


def pcap_header(linktype: int, snaplen: int, endian: str = "=") -> bytes:
    """A classic pcap file header (microseconds, version 2.4) for ``linktype``."""
    return PCAP_FILE_HEADER.struct(endian).pack(PCAP_MAGIC_US, *PCAP_VERSION, 0, 0, snaplen,
                                                linktype)


def spans(max_bytes: int, ramp: bool) -> Iterator[int]:
    """The byte span of each batch: ``max_bytes``, or (``ramp``) FIRST_BYTES doubling
    up to it."""
    span = min(FIRST_BYTES, max_bytes) if ramp else max_bytes
    while True:
        yield span
        span = min(2 * span, max_bytes)


def left_over(length: int) -> Truncated:
    """A last record that the file ends inside of."""
    return Truncated(f"file ends inside a record ({length} bytes left over)")


def bogus(length: int) -> Truncated:
    """A record longer than libpcap accepts, first in its batch."""
    return Truncated(f"bogus record length {length}")


def walk(buf, pos: int, stop: int, limit: int, header: Classic, columns) -> tuple[int, int]:
    """(records, next position) of the records starting in [pos, stop) of ``buf``
    (at most ``limit``), up to a bogus or cut one, by the C walk into ``columns``
    (COLUMNS writable buffers of ``limit`` int64 each); Truncated if the first one
    is bogus."""
    n, nxt, length = _fastread.walk(buf, pos, stop, limit, header.swapped, header.snaplen,
                                    header.per_sec, *columns)
    if length >= 0:
        raise bogus(length)
    return n, nxt


def read(fd: int, start: int, end: int, header: Classic, limit: int, max_bytes: int,
         batch_spans: Iterator[int], columns) -> Iterator[tuple[memoryview, int, int]]:
    """(buffer, records, file offset of buffer[0]) of each batch of the records in
    the file's bytes [start, end), walked into ``columns``; the buffer and the
    columns are reused by the next batch.

    The file is read (pread) into one buffer: the read holds no GIL (a tracking
    replay's reading thread overlaps its tracker) and a file cut while read is an
    error, where a map is a SIGBUS (``mapped``).  The buffer holds any record that
    starts in the first ``max_bytes``, so a record is cut only at the end of the
    file: the batches and errors of a walk over the whole file."""
    view = memoryview(bytearray(max_bytes + RECORD + MAX_RECORD))

    def copied(pos: int, want: int):
        got = os.preadv(fd, [view[:want]], pos)
        if got < want:
            raise shrank(pos + got, end)
        return contextlib.nullcontext(view[:want])

    return _batches(copied, start, end, header, limit, batch_spans, columns)


def mapped(fd: int, start: int, end: int, header: Classic, limit: int, max_bytes: int,
           batch_spans: Iterator[int], columns) -> Iterator[tuple[memoryview, int, int]]:
    """``read``'s batches from a map of each batch's bytes, its pages mapped in one
    call (MAP_POPULATE), instead of a copy: a fifth of the read's time, where the
    read is most of a plain replay's reading process (issue 16).  A file cut since
    the replay began is the same error as in ``read`` (mmap looks at its size); one
    cut while a batch is walked is a SIGBUS: only for a process whose death its
    parent reports (``ncsniffer.headstart``).  The buffer is valid until the next
    batch is asked for."""
    return _batches(lambda pos, want: _map(fd, pos, want, end), start, end, header, limit,
                    batch_spans, columns)


def mappable(fd: int) -> bool:
    """Whether ``mapped`` can read this file (some file systems map nothing)."""
    try:
        with mmap.mmap(fd, 1, prot=mmap.PROT_READ):
            return True
    except (OSError, ValueError):
        return False


def _map(fd: int, pos: int, want: int, end: int):
    """A context of the map of the file's ``want`` bytes from ``pos``."""
    base = pos - pos % mmap.ALLOCATIONGRANULARITY
    try:
        mm = mmap.mmap(fd, pos + want - base, mmap.MAP_SHARED | MAP_POPULATE, mmap.PROT_READ,
                       offset=base)
    except ValueError:         # "mmap length is greater than file size"
        raise shrank(os.fstat(fd).st_size, end) from None
    return _released(mm, pos - base)


@contextlib.contextmanager
def _released(mm: mmap.mmap, skip: int) -> Iterator[memoryview]:
    with mm:
        view = memoryview(mm)[skip:]
        try:
            yield view
        finally:
            view.release()


def _batches(fetch, start: int, end: int, header: Classic, limit: int,
             batch_spans: Iterator[int], columns) -> Iterator[tuple[memoryview, int, int]]:
    """The walk of ``read`` and ``mapped``: ``fetch(pos, want)`` is a context of the
    file's ``want`` bytes from ``pos``."""
    pos = start
    while pos < end:
        span = next(batch_spans)
        want = min(span + RECORD + MAX_RECORD, end - pos)
        with fetch(pos, want) as view:
            n, nxt = walk(view, 0, min(span, want - RECORD + 1), limit, header, columns)
            if n:
                yield view, n, pos
            elif nxt == 0:
                raise left_over(end - pos)
        pos += nxt


def shrank(size: int, end: int) -> Truncated:
    """A file that ends before the end it had when the replay began."""
    return Truncated(f"file shrank while read ({size} of {end} bytes)")


def address_words(address: bytes) -> tuple[int, int]:
    """An address as ``ncsniffer.table`` keeps it: (high, low) 64-bit words."""
    return int.from_bytes(address[:-8], "big"), int.from_bytes(address[-8:], "big")


def pass_arguments(prog: bytes | None, link: tuple, me: bytes) -> tuple:
    """The C pass's arguments after the packets' (``prepare``'s ``args``): the packed
    program, the link's decoding, "me" and its two words."""
    return (prog, link, me, *address_words(me))


def prepare(buf, columns, n: int, args: tuple, outputs) -> tuple | None:
    """The C pass (``fastread.prepare``'s, into plain buffers) over the ``n`` records
    walked into ``columns``: ``args`` the program, link and "me" arguments; None
    where it does not run them."""
    return _fastread.prepare(buf, *(memoryview(c)[:8 * n] for c in columns), *args, *outputs,
                             None)


def program(prog: list[tuple[int, int, int, int]] | None) -> bytes | None:
    """A filter program as the C interpreter reads it (None: every packet passes)."""
    if prog is None:
        return None
    return b"".join(INSN.pack(*insn) for insn in prog)


def distinct(is6, v4, hi, lo, which, u4, uhi, ulo) -> tuple[int, int]:
    """(distinct IPv4 targets, IPv6 ones) of a prepared batch (``fastread.distinct``'s
    call, into plain buffers): into ``u4`` and ``uhi``/``ulo``, each packet's index
    among them into ``which``."""
    return _fastread.distinct(is6, v4, hi, lo, which, u4, uhi, ulo)
