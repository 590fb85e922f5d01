#!/usr/bin/env python3
"""Regenerate the capture files of this directory (see README.md here).

    .venv/bin/python tests/data/captures/make_captures.py [DIRECTORY]

Everything is deterministic (fixed addresses, times and payloads), so running it
again gives the same bytes; tests/test_captures.py checks that.  Frames are
built with dpkt, file and block headers with struct, independently of
ncsniffer's own writers (the files test its reader).
"""

from __future__ import annotations

import ipaddress
import os
import struct
import sys
from dataclasses import dataclass, field

import dpkt

ME4, ME6 = "192.0.2.10", "2001:db8::10"
BPF = f"host {ME4} or host {ME6}"
T0 = 1_600_000_000
EN10MB, RAW, NULL, LOOP, IEEE802_11, LINUX_SLL, LINUX_SLL2 = 1, 101, 0, 108, 105, 113, 276
AF_INET, AF_INET6_LINUX = 2, 10
AF_INET6_BSD = (24, 28, 30)          # NetBSD/OpenBSD, FreeBSD, macOS
LE, BE = "<", ">"
SHB, IDB, EPB = 0x0A0D0D0A, 1, 6
BYTE_ORDER_MAGIC = 0x1A2B3C4D


@dataclass
class Packet:
    """One record: what the test's model needs, and the frame written."""

    ts: float
    src: str
    dst: str
    frame: bytes
    wirelen: int
    iface: int = 0
    passes: bool = True        # does libpcap's filter BPF take it (tcpdump agrees)


@dataclass
class Interface:
    linktype: int
    snaplen: int = 65535
    order: str = LE            # the byte order of its section


@dataclass
class Capture:
    """A file to write: its packets, and how each interface (or the pcap header) is."""

    packets: list[Packet]
    interfaces: list[Interface]
    kind: str = "pcapng"                   # or "pcap"
    version: tuple[int, int] | None = None   # None: 2.4 (pcap) or 1.0 (pcapng)
    damage: dict = field(default_factory=dict)


# ---------------------------------------------------------------- frames
def ip_packet(src: str, dst: str, payload: bytes) -> bytes:
    """UDP over IPv4 or IPv6, by the addresses' family."""
    udp = dpkt.udp.UDP(sport=40000, dport=53, data=payload)
    udp.ulen = len(bytes(udp))
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version == 4:
        ip = dpkt.ip.IP(src=a.packed, dst=b.packed, p=dpkt.ip.IP_PROTO_UDP, ttl=64, data=udp)
        ip.len = 20 + len(bytes(udp))
        return bytes(ip)
    ip6 = dpkt.ip6.IP6(src=a.packed, dst=b.packed, nxt=dpkt.ip.IP_PROTO_UDP, hlim=64,
                       data=udp, plen=len(bytes(udp)))
    return bytes(ip6)


def link_frame(linktype: int, packet: bytes, family: int = 0, order: str = LE,
               vlan: int | None = None) -> bytes:
    """``packet`` behind the link header of ``linktype``; ``family``: the NULL/LOOP
    address family word (NULL: in ``order``, the writer's; LOOP: network order)."""
    etype = 0x0800 if packet[0] >> 4 == 4 else 0x86DD
    if linktype == EN10MB:
        tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
        return b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02" + tag + \
            struct.pack("!H", etype) + packet
    if linktype == LINUX_SLL:
        return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x03\x00\x00", etype) + packet
    if linktype == LINUX_SLL2:
        return struct.pack("!HHIHBB8s", etype, 0, 2, 1, 0, 6,
                           b"\x02\x00\x00\x00\x00\x03\x00\x00") + packet
    if linktype == NULL:
        return struct.pack(order + "I", family) + packet
    if linktype == LOOP:
        return struct.pack("!I", family) + packet
    return packet                           # RAW, and the unsupported types' "frames"


# ---------------------------------------------------------------- traffic
def peer(i: int, v6: bool) -> str:
    return f"2001:db8:9::{i % 5 + 1}" if v6 else f"198.51.100.{i % 5 + 1}"


def talk(i: int, v6: bool, ts: float) -> tuple[str, str, bytes]:
    """Packet ``i`` of a conversation with ME: (src, dst, payload); every seventh
    one is between two other hosts (the filter drops it)."""
    me = ME6 if v6 else ME4
    other = peer(i, v6)
    if i % 7 == 6:
        me = "2001:db8:7::1" if v6 else "203.0.113.1"
    payload = bytes((i * 13 + k) % 251 for k in range(i % 40))
    return (me, other, payload) if i % 2 else (other, me, payload)


def loopback(linktype: int, order: str, n: int = 48) -> list[Packet]:
    """IPv4 (AF_INET) and IPv6 under each BSD AF_INET6 value, and under Linux's
    10, which libpcap does not take for IPv6 in a NULL/LOOP file (tcpdump neither)."""
    families = (AF_INET, *AF_INET6_BSD, AF_INET6_LINUX)
    out = []
    for i in range(n):
        family = families[i % len(families)]
        ts = T0 + 0.125 + i * 37
        src, dst, payload = talk(i, family != AF_INET, ts)
        frame = link_frame(linktype, ip_packet(src, dst, payload), family, order)
        involved = ME4 in (src, dst) or ME6 in (src, dst)
        out.append(Packet(ts, src, dst, frame, len(frame),
                          passes=involved and family != AF_INET6_LINUX))
    return out


def plain(linktype: int, n: int = 40, start: int = T0, step: float = 23, v6_every: int = 3,
          iface: int = 0, order: str = LE) -> list[Packet]:
    """Ordinary traffic on one interface (IPv6 every ``v6_every``-th packet)."""
    out = []
    for i in range(n):
        ts = start + 0.5 + i * step
        v6 = i % v6_every == 0
        src, dst, payload = talk(i + iface, v6, ts)
        family = (AF_INET6_BSD[0] if v6 else AF_INET) if linktype in (NULL, LOOP) else 0
        vlan = 10 if linktype == EN10MB and i % 4 == 1 else None
        frame = link_frame(linktype, ip_packet(src, dst, payload), family, order, vlan)
        out.append(Packet(ts, src, dst, frame, len(frame), iface,
                          passes=ME4 in (src, dst) or ME6 in (src, dst)))
    return out


def interleave(*streams: list[Packet]) -> list[Packet]:
    """Packets of several interfaces in time order (ties: by interface)."""
    return sorted((p for s in streams for p in s), key=lambda p: (p.ts, p.iface))


# ---------------------------------------------------------------- writers
def pcap_bytes(cap: Capture) -> bytes:
    iface = cap.interfaces[0]
    e = iface.order
    major, minor = cap.version or (2, 4)
    out = [struct.pack(e + "IHHiIII", 0xA1B2C3D4, major, minor, 0, 0, iface.snaplen,
                       iface.linktype)]
    for p in cap.packets:
        sec = int(p.ts)
        usec = round((p.ts - sec) * 1e6)
        data = p.frame[:iface.snaplen]
        out.append(struct.pack(e + "IIII", sec, usec, len(data), p.wirelen) + data)
    return b"".join(out)


def block(e: str, btype: int, body: bytes, trailer_delta: int = 0) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    total = 12 + len(body)
    return struct.pack(e + "II", btype, total) + body + struct.pack(e + "I", total + trailer_delta)


def section_header(e: str, version: tuple[int, int] = (1, 0)) -> bytes:
    return block(e, SHB, struct.pack(e + "IHHq", BYTE_ORDER_MAGIC, *version, -1))


def pcapng_bytes(cap: Capture) -> bytes:
    """Sections open where the interfaces' byte order changes (and where
    ``damage['section_at']`` says); interfaces are declared before their first
    packet, in their own section."""
    out: list[bytes] = []
    order = None
    declared: dict[int, int] = {}        # interface -> its number in the section
    for n, p in enumerate(cap.packets):
        iface = cap.interfaces[p.iface]
        if iface.order != order or n == cap.damage.get("section_at"):
            order = iface.order
            version = cap.damage.get("section_version", (1, 0)) if out else (cap.version or (1, 0))
            out.append(section_header(order, version))
            declared = {}
        if p.iface not in declared:
            declared[p.iface] = len(declared)
            out.append(block(order, IDB, struct.pack(order + "HHI", iface.linktype, 0,
                                                     iface.snaplen)))
        t = round(p.ts * 1e6)
        data = p.frame[:iface.snaplen]
        body = struct.pack(order + "IIIII", declared[p.iface], t >> 32, t & 0xFFFFFFFF,
                           len(data), p.wirelen) + data
        out.append(block(order, EPB, body, 4 if n == cap.damage.get("trailer_at") else 0))
    return b"".join(out)


def file_bytes(cap: Capture) -> bytes:
    return pcap_bytes(cap) if cap.kind == "pcap" else pcapng_bytes(cap)


# ---------------------------------------------------------------- the corpus
def corpus() -> dict[str, Capture]:
    """Every file by name.  Items of issue 11: 1 BSD loopback, 2 damaged headers,
    3 times past 2^31 s, 4 unknown link types, 5 interfaces that differ."""
    files: dict[str, Capture] = {}
    for linktype, name in ((NULL, "null"), (LOOP, "loop")):
        for order, tag in ((LE, "le"), (BE, "be")):
            files[f"{name}-{tag}.pcap"] = Capture(loopback(linktype, order),
                                                  [Interface(linktype, order=order)], "pcap")
    files["null-be.pcapng"] = Capture(loopback(NULL, BE), [Interface(NULL, order=BE)])
    eth = [Interface(EN10MB)]
    files["version-2.5.pcap"] = Capture(plain(EN10MB, 10), eth, "pcap", (2, 5))
    files["version-3.0.pcap"] = Capture(plain(EN10MB, 10), eth, "pcap", (3, 0))
    files["version-2.0.pcapng"] = Capture(plain(EN10MB, 10), eth, version=(2, 0))
    files["version-1.1.pcapng"] = Capture(plain(EN10MB, 10), eth, version=(1, 1))
    files["version-1.2.pcapng"] = Capture(plain(EN10MB, 30), eth, version=(1, 2))
    files["section-version-2.0.pcapng"] = Capture(
        plain(EN10MB, 30), eth, damage={"section_at": 20, "section_version": (2, 0)})
    files["trailer-mid.pcapng"] = Capture(plain(EN10MB, 30), eth, damage={"trailer_at": 20})
    files["trailer-first.pcapng"] = Capture(plain(EN10MB, 30), eth, damage={"trailer_at": 0})
    files["ts-2038.pcap"] = Capture(plain(EN10MB, 40, start=2 ** 31 - 200, step=11), eth, "pcap")
    files["linktype-999.pcap"] = Capture(plain(RAW, 5), [Interface(999)], "pcap")
    files["linktype-999.pcapng"] = Capture(plain(RAW, 5), [Interface(999)])
    files["mixed-links.pcapng"] = Capture(
        interleave(plain(EN10MB, 40, iface=0), plain(LINUX_SLL, 30, step=29, iface=1),
                   plain(RAW, 30, step=31, iface=2), plain(NULL, 30, step=37, iface=3),
                   plain(LINUX_SLL2, 20, step=41, iface=4)),
        [Interface(EN10MB), Interface(LINUX_SLL), Interface(RAW), Interface(NULL),
         Interface(LINUX_SLL2)])
    files["mixed-snaplen.pcapng"] = Capture(
        interleave(plain(EN10MB, 40, iface=0), plain(EN10MB, 40, step=19, iface=1)),
        [Interface(EN10MB, 65535), Interface(EN10MB, 60)])
    files["mixed-byte-order.pcapng"] = Capture(
        plain(EN10MB, 30) + plain(NULL, 30, start=T0 + 1000, iface=1, order=BE),
        [Interface(EN10MB), Interface(NULL, order=BE)])
    files["mixed-unsupported.pcapng"] = Capture(
        plain(EN10MB, 20) + plain(EN10MB, 10, start=T0 + 1000, iface=1),
        [Interface(EN10MB), Interface(IEEE802_11)])
    return files


def write_all(directory: str) -> list[str]:
    names = []
    for name, cap in corpus().items():
        with open(os.path.join(directory, name), "wb") as fh:
            fh.write(file_bytes(cap))
        names.append(name)
    return names


if __name__ == "__main__":
    here = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    for written in write_all(here):
        print(written)
