"""Packet sources: a live interface or a capture file, through libpcap (pcapy-ng).

pcapy-ng rather than pypcap because the byte counts must be the wire length
(``pkthdr.len``), which pypcap's callbacks do not expose.  This is the only
module that imports the capture library.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import tempfile
from typing import Callable, Iterator

import numpy as np
import pcapy

from ncsniffer import linktypes
from ncsniffer.errors import CaptureError
from ncsniffer.pcapfile import Batch, pcap_header

# Decoding needs the longest link header (Ethernet with two VLAN tags, 22 bytes)
# plus the IPv6 header, whatever smaller snaplen the match window asks for:
# 62 bytes, rounded up to a power of two (64, the value live captures always had).
MIN_CAPTURE = 1 << (linktypes.DECODE_BYTES - 1).bit_length()
# Connection tracking also needs IP options or IPv6 extension headers and the TCP
# flags (SPEC 10.1); the match window stays [payload, configured snaplen).
FLOW_CAPTURE = linktypes.FLOW_BYTES
BUFFER_BYTES = 64 << 20
FILTER_SNAPLEN = 262144       # the program's accept value; any non-zero one accepts
SECONDS_WRAP = 1 << 32        # a classic pcap's seconds are unsigned 32-bit
ERRBUF_SIZE = 256             # PCAP_ERRBUF_SIZE


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint), ("insns", ctypes.POINTER(_Insn))]


def _libpcap() -> ctypes.CDLL:
    """The libpcap that pcapy uses (its wheel may bundle its own), for what pcapy
    does not expose: compiling against a savefile, and link type names.  Symbols
    looked up through the extension resolve in the library it links."""
    lib = ctypes.CDLL(pcapy.__file__)
    lib.pcap_open_offline.restype = ctypes.c_void_p
    lib.pcap_open_offline.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Program), ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_uint32]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_Program)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    lib.pcap_datalink_val_to_name.restype = ctypes.c_char_p
    lib.pcap_datalink_val_to_name.argtypes = [ctypes.c_int]
    return lib


_LIB = _libpcap()


class Capture:
    """An open, filtered libpcap handle."""

    def __init__(self, handle, source: str):
        self._p = handle
        self.source = source
        self.linktype = handle.datalink()
        self._error: CaptureError | None = None

    def read_batch(self, count: int):
        """Up to ``count`` waiting packets as one Batch (None if none are waiting).

        The callback only collects; decoding and accounting then run once over
        the whole batch (``ncsniffer.batch``), as when replaying a file.
        """
        if self._error is not None:
            raise self._error
        got: list = []
        append = got.append

        def on_packet(hdr, data):
            append((*hdr.getts(), hdr.getlen(), data))
        try:
            self._p.dispatch(count, on_packet)
        except pcapy.PcapError as exc:
            self._error = CaptureError(f"{self.source}: {exc}")
            if not got:            # else: account what came before, fail next time
                raise self._error from exc
        if not got:
            return None
        return make_batch(got)

    def fileno(self) -> int:
        return self._p.getfd()

    def stats(self) -> tuple[int, int, int]:
        """(received, dropped by the kernel, dropped by the interface)."""
        try:
            return tuple(self._p.stats())
        except pcapy.PcapError:
            return (0, 0, 0)

    def close(self) -> None:
        try:
            self._p.close()
        except (pcapy.PcapError, AttributeError):
            pass


def make_batch(packets: list[tuple[int, int, int, bytes]]) -> Batch:
    """A Batch from (second, microseconds, wire length, data) tuples.

    libpcap sign-extends a classic pcap's 32-bit seconds, so times from 2038 on
    come out negative; they are unsigned in the file, as the batch reader reads
    them (live seconds are never negative)."""
    sec, usec, wire, datas = zip(*packets)
    caplen = np.fromiter(map(len, datas), np.int64, len(datas))
    buf = b"".join(datas)
    offs = np.zeros(len(datas), np.int64)
    np.cumsum(caplen[:-1], out=offs[1:])
    seconds = np.array(sec, np.int64)
    seconds[seconds < 0] += SECONDS_WRAP
    return Batch(buf, np.frombuffer(buf, np.uint8), offs, caplen,
                 np.array(wire, np.int64), seconds, usec=np.array(usec, np.int64))


def _setfilter(handle, bpf: str, source: str) -> None:
    try:
        handle.setfilter(bpf)
    except pcapy.PcapError as exc:
        raise CaptureError(f"{source}: bad bpf filter '{bpf}': {exc}") from exc


def vlan_aware(bpf: str, depth: int = linktypes.VLAN_DEPTH) -> str:
    """The filter, also applied inside up to ``depth`` VLAN tags.

    A live Linux capture filters the frame with its tag stripped, so ``host X``
    sees tagged traffic; a file keeps the tags, and the same filter would miss
    it.  Replaying must count what a live run counts.
    """
    inner = bpf
    for _ in range(depth):
        inner = f"({bpf}) or (vlan and ({inner}))"
    return inner


def file_filters(linktype: int, bpf: str) -> list[str]:
    """The filters to try for a file, best first: where VLAN tags can follow the
    link header the VLAN-aware one, then the user's own (whose compile error is
    the one to report)."""
    link = linktypes.lookup(linktype)
    if link is not None and link.vlan and "vlan" not in bpf.lower():
        return [vlan_aware(bpf), bpf]
    return [bpf]


def link_type_name(linktype: int) -> str:
    """How messages name a link type: libpcap's name and the number."""
    name = _LIB.pcap_datalink_val_to_name(linktype)
    return f"{name.decode()} ({linktype})" if name else f"{linktype} (unknown to libpcap)"


@contextlib.contextmanager
def _savefile(linktype: int, swapped: bool) -> Iterator[int]:
    """A libpcap handle on an empty savefile of ``linktype`` (as libpcap reports
    it, or the value files store) in the byte order ``swapped`` says: what libpcap
    compiles a filter for depends on both (DLT_NULL's family word is in the
    writer's byte order, and a savefile's IPv6 test takes every BSD AF_INET6 value)."""
    native = "<" if sys.byteorder == "little" else ">"
    order = {"<": ">", ">": "<"}[native] if swapped else native
    with tempfile.NamedTemporaryFile(prefix="ncsniffer-", suffix=".pcap") as fh:
        fh.write(pcap_header(linktypes.file_value(linktype), FILTER_SNAPLEN, order))
        fh.flush()
        err = ctypes.create_string_buffer(ERRBUF_SIZE)
        handle = _LIB.pcap_open_offline(fh.name.encode(), err)
        if not handle:
            raise CaptureError(f"libpcap cannot compile for link type {linktype}: "
                               f"{err.value.decode(errors='replace')}")
        try:
            yield handle
        finally:
            _LIB.pcap_close(handle)


def _compile(handle: int, text: str) -> list[tuple[int, int, int, int]]:
    """The program of ``text``; pcapy.PcapError (as setfilter raises) if it does not compile."""
    prog = _Program()
    if _LIB.pcap_compile(handle, ctypes.byref(prog), text.encode(), 1, 0) != 0:
        raise pcapy.PcapError(_LIB.pcap_geterr(handle).decode(errors="replace"))
    try:
        return [(i.code, i.jt, i.jf, i.k) for i in prog.insns[:prog.len]]
    finally:
        _LIB.pcap_freecode(ctypes.byref(prog))


def compile_filter(linktype: int, bpf: str, swapped: bool = False) -> list[tuple[int, int, int, int]]:
    """libpcap's compiled program for a file of ``linktype`` whose byte order is
    the other one than this machine's if ``swapped`` (as open_offline applies it)."""
    *better, own = file_filters(linktype, bpf)
    with _savefile(linktype, swapped) as handle:
        for text in better:
            try:
                return _compile(handle, text)
            except pcapy.PcapError:
                pass
        try:
            return _compile(handle, own)
        except pcapy.PcapError as exc:
            raise CaptureError(f"bad bpf filter '{bpf}': {exc}") from exc


def open_offline(path: str, bpf: str, check_link: Callable[[int], None] | None = None) -> Capture:
    """Open a pcap or pcapng file with the bpf filter applied; ``check_link`` sees
    the file's link type first (an unsupported one is not the filter's fault)."""
    try:
        handle = pcapy.open_offline(path)
    except pcapy.PcapError as exc:
        raise CaptureError(f"{path}: cannot read capture file: {exc}") from exc
    try:
        if check_link is not None:
            check_link(handle.datalink())
        *better, own = file_filters(handle.datalink(), bpf)
        for text in better:
            try:
                handle.setfilter(text)
                return Capture(handle, path)
            except pcapy.PcapError:
                pass
        _setfilter(handle, own, path)
    except CaptureError:
        handle.close()
        raise
    return Capture(handle, path)


# pcap_activate()'s errors (pcap/pcap.h), as a user can act on them; pcapy-ng
# returns the code instead of raising.
PCAP_ERROR_NO_SUCH_DEVICE = -5
PCAP_ERROR_PERM_DENIED = -8
PCAP_ERROR_IFACE_NOT_UP = -9
PCAP_ERROR_PROMISC_PERM_DENIED = -11
ACTIVATE_ERRORS = {
    PCAP_ERROR_NO_SUCH_DEVICE: "no such device '{0}'",
    PCAP_ERROR_PERM_DENIED: "cannot capture on '{0}': needs root or CAP_NET_RAW",
    PCAP_ERROR_IFACE_NOT_UP: "interface '{0}' is down",
    PCAP_ERROR_PROMISC_PERM_DENIED: "cannot capture on '{0}' in promiscuous mode: "
                                    "needs root or CAP_NET_RAW",
}
BLOCK_TIMEOUT_MS = 100     # the kernel hands over a ring block at least this often


def capture_length(snaplen: int, connections: bool = False) -> int:
    """Bytes captured per packet: the configured snaplen, or what decoding (and
    connection tracking) must see if that is more."""
    return max(snaplen, MIN_CAPTURE, FLOW_CAPTURE if connections else 0)


def open_live(interface: str, snaplen: int, promiscuous: bool, bpf: str,
              connections: bool = False) -> Capture:
    """Open an interface, non-blocking, with a large kernel buffer against drops."""
    try:
        handle = pcapy.create(interface)
        handle.set_snaplen(capture_length(snaplen, connections))
        handle.set_promisc(1 if promiscuous else 0)
        handle.set_timeout(BLOCK_TIMEOUT_MS)
        handle.set_buffer_size(BUFFER_BYTES)
        status = handle.activate()
    except pcapy.PcapError as exc:
        raise CaptureError(f"cannot capture on '{interface}': {exc}") from exc
    if status is not None and status < 0:
        raise CaptureError(ACTIVATE_ERRORS.get(
            status, "cannot capture on '{0}': libpcap error {1}").format(interface, status))
    _setfilter(handle, bpf, interface)
    handle.setnonblock(1)
    return Capture(handle, interface)
