"""Packet sources: a live interface or a capture file, through libpcap (pcapy-ng).

pcapy-ng rather than pypcap because the byte counts must be the wire length
(``pkthdr.len``), which pypcap's callbacks do not expose.  This is the only
module that imports the capture library.
"""

from __future__ import annotations

import numpy as np
import pcapy

from ncsniffer.errors import CaptureError
from ncsniffer.pcapfile import Batch

# Decoding needs the link header (up to 22 bytes with two VLAN tags) plus the
# 40-byte IPv6 header, whatever smaller snaplen the match window asks for.
MIN_CAPTURE = 64
BUFFER_BYTES = 64 << 20


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
            append((hdr.getts()[0], hdr.getlen(), data))
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


def make_batch(packets: list[tuple[int, int, bytes]]) -> Batch:
    """A Batch from (second, wire length, data) tuples."""
    sec, wire, datas = zip(*packets)
    caplen = np.fromiter(map(len, datas), np.int64, len(datas))
    buf = b"".join(datas)
    offs = np.zeros(len(datas), np.int64)
    np.cumsum(caplen[:-1], out=offs[1:])
    return Batch(buf, np.frombuffer(buf, np.uint8), offs, caplen,
                 np.array(wire, np.int64), np.array(sec, np.int64))


def _setfilter(handle, bpf: str, source: str) -> None:
    try:
        handle.setfilter(bpf)
    except pcapy.PcapError as exc:
        raise CaptureError(f"{source}: bad bpf filter '{bpf}': {exc}") from exc


def vlan_aware(bpf: str) -> str:
    """The filter, also applied inside up to two VLAN tags.

    A live Linux capture filters the frame with its tag stripped, so ``host X``
    sees tagged traffic; a file keeps the tags, and the same filter would miss
    it.  Replaying must count what a live run counts.
    """
    return f"({bpf}) or (vlan and (({bpf}) or (vlan and ({bpf}))))"


def file_filters(linktype: int, bpf: str) -> list[str]:
    """The filters to try for a file, best first: on Ethernet the VLAN-aware one,
    then the user's own (whose compile error is the one to report)."""
    if linktype == 1 and "vlan" not in bpf.lower():       # DLT_EN10MB
        return [vlan_aware(bpf), bpf]
    return [bpf]


def compile_filter(linktype: int, bpf: str) -> list[tuple[int, int, int, int]]:
    """libpcap's compiled program for a file of ``linktype`` (as open_offline applies it)."""
    dlt = 12 if linktype == 101 else linktype      # files say LINKTYPE_RAW, libpcap DLT_RAW
    *better, own = file_filters(linktype, bpf)
    for text in better:
        try:
            return pcapy.compile(dlt, 262144, text, 1, 0).get_bpf()
        except pcapy.PcapError:
            pass
    try:
        return pcapy.compile(dlt, 262144, own, 1, 0).get_bpf()
    except pcapy.PcapError as exc:
        raise CaptureError(f"bad bpf filter '{bpf}': {exc}") from exc


def open_offline(path: str, bpf: str) -> Capture:
    """Open a pcap or pcapng file with the bpf filter applied."""
    try:
        handle = pcapy.open_offline(path)
    except pcapy.PcapError as exc:
        raise CaptureError(f"{path}: cannot read capture file: {exc}") from exc
    *better, own = file_filters(handle.datalink(), bpf)
    for text in better:
        try:
            handle.setfilter(text)
            return Capture(handle, path)
        except pcapy.PcapError:
            pass
    _setfilter(handle, own, path)
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


def open_live(interface: str, snaplen: int, promiscuous: bool, bpf: str) -> Capture:
    """Open an interface, non-blocking, with a large kernel buffer against drops."""
    try:
        handle = pcapy.create(interface)
        handle.set_snaplen(max(snaplen, MIN_CAPTURE))
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
