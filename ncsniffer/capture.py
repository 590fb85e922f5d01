"""Packet sources: a live interface or a capture file, through libpcap (pcapy-ng).

pcapy-ng rather than pypcap because the byte counts must be the wire length
(``pkthdr.len``), which pypcap's callbacks do not expose.  This module and
``ncsniffer.pcaplib`` (libpcap through ctypes, without numpy: the filter compiled
for a file, link type names) are the only ones that import the capture library,
besides ``ncsniffer.emptycapture``'s check that libpcap reads an empty file.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pcapy

from ncsniffer import linktypes
from ncsniffer.errors import CaptureError
from ncsniffer.pcapfile import Batch
from ncsniffer.pcaplib import file_filters
# compile_filter, link_type_name, vlan_aware, ...: capture.X for their callers, as before
from ncsniffer.pcaplib import (ERRBUF_SIZE, FILTER_SNAPLEN, compile_filter,  # noqa: F401
                               link_type_name, vlan_aware)

# Decoding needs the longest link header (Ethernet with two VLAN tags, 22 bytes)
# plus the IPv6 header, whatever smaller snaplen the match window asks for:
# 62 bytes, rounded up to a power of two (64, the value live captures always had).
MIN_CAPTURE = 1 << (linktypes.DECODE_BYTES - 1).bit_length()
# Connection tracking also needs IP options or IPv6 extension headers and the TCP
# flags (SPEC 10.1); the match window stays [payload, configured snaplen).
FLOW_CAPTURE = linktypes.FLOW_BYTES
BUFFER_BYTES = 64 << 20
SECONDS_WRAP = 1 << 32        # a classic pcap's seconds are unsigned 32-bit


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
