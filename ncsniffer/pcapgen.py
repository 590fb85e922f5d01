"""Synthetic captures for the bundled sample, the tests and the benchmark.

Frames are built with dpkt; files are written with explicit record headers so
that a frame's wire length can differ from what is stored (as with a snaplen).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import BinaryIO, Iterable

import dpkt

from ncsniffer import decode

PCAP_MAGIC_US = 0xA1B2C3D4


def ip_packet(src: str, dst: str, proto: str = "udp", payload: bytes = b"",
              sport: int = 40000, dport: int = 53, options: bytes = b"",
              frag_offset: int = 0, ext_headers: bool = False) -> bytes:
    """An IPv4 or IPv6 packet (by the addresses' family) carrying TCP, UDP or ICMP."""
    if proto == "tcp":
        l4 = dpkt.tcp.TCP(sport=sport, dport=dport, flags=dpkt.tcp.TH_ACK, data=payload)
        pnum = dpkt.ip.IP_PROTO_TCP
    elif proto == "icmp":
        l4 = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=1, seq=1, data=payload))
        pnum = dpkt.ip.IP_PROTO_ICMP
    else:
        l4 = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
        l4.ulen = len(bytes(l4))
        pnum = dpkt.ip.IP_PROTO_UDP
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version == 4:
        ip = dpkt.ip.IP(src=a.packed, dst=b.packed, p=pnum, data=l4, opts=options)
        ip.hl = 5 + len(options) // 4
        ip.offset = frag_offset
        ip.len = 20 + len(options) + len(bytes(l4))
        return bytes(ip)
    body = bytes(l4)
    nxt = pnum
    if ext_headers:  # a hop-by-hop options header in front of the transport
        body = struct.pack("!BB6s", pnum, 0, b"\x01\x04\x00\x00\x00\x00") + body
        nxt = 0
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(body), nxt, 64, a.packed, b.packed)
    return hdr + body


def frame(linktype: int, packet: bytes, vlans: Iterable[int] = ()) -> bytes:
    """Wrap an IP packet in the link header of ``linktype`` (VLAN tags for Ethernet)."""
    version = packet[0] >> 4
    etype = decode.ETH_IPV4 if version == 4 else decode.ETH_IPV6
    if linktype == decode.DLT_EN10MB:
        head = b"\x00\x11\x22\x33\x44\x55" + b"\x66\x77\x88\x99\xaa\xbb"
        tags = list(vlans)
        for i, vid in enumerate(tags):
            tpid = 0x88A8 if (len(tags) > 1 and i == 0) else 0x8100
            head += struct.pack("!HH", tpid, vid)
        return head + struct.pack("!H", etype) + packet
    if linktype == decode.DLT_LINUX_SLL:
        return struct.pack("!HHH8sH", 0, 1, 6, b"\x00\x11\x22\x33\x44\x55\x00\x00", etype) + packet
    if linktype == decode.DLT_LINUX_SLL2:
        return struct.pack("!HHIHBB8s", etype, 0, 1, 1, 0, 6, b"\x00\x11\x22\x33\x44\x55\x00\x00") + packet
    if linktype == decode.DLT_NULL:
        return struct.pack("=I", 2 if version == 4 else 10) + packet
    if linktype == decode.DLT_LOOP:
        return struct.pack("!I", 2 if version == 4 else 24) + packet
    if linktype in (decode.DLT_RAW, decode.DLT_RAW_LINKTYPE, decode.DLT_IPV4, decode.DLT_IPV6):
        return packet
    raise ValueError(f"no frame builder for link type {linktype}")


def file_linktype(linktype: int) -> int:
    """LINKTYPE_ value stored in a file for a DLT_ value (RAW is 101 in files)."""
    return decode.DLT_RAW_LINKTYPE if linktype == decode.DLT_RAW else linktype


class PcapWriter:
    """A classic pcap file writer with control over caplen and wire length."""

    def __init__(self, fh: BinaryIO, linktype: int, snaplen: int = 65535,
                 stored_linktype: int | None = None):
        self.fh = fh
        self.snaplen = snaplen
        self._rec = struct.Struct("=IIII")
        stored = file_linktype(linktype) if stored_linktype is None else stored_linktype
        fh.write(struct.pack("=IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, stored))

    def write(self, ts: float, data: bytes, wirelen: int | None = None) -> None:
        sec = int(ts)
        usec = int(round((ts - sec) * 1e6))
        if usec >= 1000000:
            sec, usec = sec + 1, usec - 1000000
        stored = data[: self.snaplen]
        self.fh.write(self._rec.pack(sec, usec, len(stored), len(data) if wirelen is None else wirelen))
        self.fh.write(stored)


def write_pcap(path: str, linktype: int, packets: Iterable[tuple], snaplen: int = 65535,
               stored_linktype: int | None = None) -> None:
    """Write ``(ts, frame)`` or ``(ts, frame, wirelen)`` tuples to a pcap file
    (``stored_linktype``: the value in the file header, if not the usual one)."""
    with open(path, "wb") as fh:
        w = PcapWriter(fh, linktype, snaplen, stored_linktype)
        for item in packets:
            w.write(*item)


def write_pcapng(path: str, linktype: int, packets: Iterable[tuple], snaplen: int = 65535) -> None:
    """Write ``(ts, frame)`` tuples to a pcapng file (dpkt's writer)."""
    with open(path, "wb") as fh:
        w = dpkt.pcapng.Writer(fh, snaplen=snaplen, linktype=file_linktype(linktype))
        for ts, data, *_ in packets:
            w.writepkt(data, ts=ts)
