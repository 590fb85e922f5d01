"""Synthetic captures for the bundled sample, the tests and the benchmark.

Frames are built with dpkt; files are written with explicit record headers so
that a frame's wire length can differ from what is stored (as with a snaplen).
It stays in the package, beside the link table (``linktypes.LINKS``) and the pcap
layouts (``linktypes``, ``pcapfile``) it is built from, so that a new link type is
one row for the decoder and for the synthetic frames alike; ``samples/make_sample.py``
(``make demo``), ``bench/`` and the tests use it.  It is the one module that
imports dpkt, and nothing on the daemon's path imports it.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import BinaryIO, Iterable

import dpkt
import numpy as np

from ncsniffer import linktypes
from ncsniffer.pcapread import pcap_header
from ncsniffer.pcapfile import PCAP_RECORD, layout

MAC_DST, MAC_SRC = bytes.fromhex("001122334455"), bytes.fromhex("66778899aabb")
SLL_ADDRESS = MAC_DST + bytes(2)            # a 6-byte hardware address in 8 bytes
ARPHRD_ETHER = 1
# What the synthetic frames put in a link header besides its type (zeros elsewhere).
HEADER_FIELDS = {
    "EN10MB": {"dst": MAC_DST, "src": MAC_SRC},
    "LINUX_SLL": {"hatype": ARPHRD_ETHER, "halen": len(MAC_DST), "addr": SLL_ADDRESS},
    "LINUX_SLL2": {"ifindex": 1, "hatype": ARPHRD_ETHER, "halen": len(MAC_DST),
                   "addr": SLL_ADDRESS},
}
# The address family word, by IP version: AF_INET, and Linux's / OpenBSD's AF_INET6.
FAMILIES = {"NULL": {4: 2, 6: 10}, "LOOP": {4: 2, 6: 24}}
DOT1Q_TPID, QINQ_TPID = 0x8100, 0x88A8


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
    """Wrap an IP packet in the link header of ``linktype`` (VLAN tags where the
    link type has them: two or more are 802.1ad then 802.1Q)."""
    link = linktypes.lookup(linktype)
    if link is None:
        raise ValueError(f"no frame builder for link type {linktype}")
    version = 4 if packet[0] >> 4 == 4 else 6
    head = np.zeros((), link.header.dtype())
    for name, value in HEADER_FIELDS.get(link.name, {}).items():
        head[name] = value
    if link.name in FAMILIES:
        head["family"] = FAMILIES[link.name][version]
    if link.ethertype is None:
        return head.tobytes() + packet
    tags = list(vlans) if link.vlan else []
    types = [QINQ_TPID if len(tags) > 1 and i == 0 else DOT1Q_TPID for i in range(len(tags))]
    types.append(linktypes.ETH_IPV4 if version == 4 else linktypes.ETH_IPV6)
    head[link.ethertype] = types[0]
    stack = np.zeros(len(tags), linktypes.VLAN_TAG.dtype())
    stack["tci"], stack["type"] = tags, types[1:]
    return head.tobytes() + stack.tobytes() + packet


def file_linktype(linktype: int) -> int:
    """LINKTYPE_ value stored in a file for a DLT_ value (RAW is 101 in files)."""
    return linktypes.file_value(linktype)


class PcapWriter:
    """A classic pcap file writer with control over caplen and wire length."""

    def __init__(self, fh: BinaryIO, linktype: int, snaplen: int = 65535,
                 stored_linktype: int | None = None):
        self.fh = fh
        self.snaplen = snaplen
        self._rec = layout(PCAP_RECORD, "=")
        stored = file_linktype(linktype) if stored_linktype is None else stored_linktype
        fh.write(pcap_header(stored, snaplen))

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
