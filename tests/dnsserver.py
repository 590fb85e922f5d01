#!/usr/bin/env python3
"""A tiny real DNS server for the resolver's tests (loopback only, UDP, PTR only).

    python tests/dnsserver.py --port P [--log FILE] [--ptr IP=NAME[,NAME...]]...
                              [--synth PREFIX] [--many IP=COUNT] [--ttl N] [--soa-ttl N]
                              [--lifetime S]

Reverse names of the ``--ptr`` addresses get NOERROR with those PTR targets
(several names: several records).  Addresses starting with ``--synth`` get
one made-up name, ``h-a-b-c-d.flood.test``.  ``--many`` addresses get COUNT
PTR records of distinct long names, in one datagram of up to 64 KB whatever the
query's EDNS size: the even ones share a suffix of unprintable bytes (as text
~780 characters each, with \\DDD escapes), the odd ones a printable one (~200).  Everything else gets NXDOMAIN
with the SOA ``ns.soa.test`` in the authority section.  Every query is logged
as ``<arrival time> <query name>`` to ``--log`` (the kernel's receive time,
epoch seconds), so a test can count what a name server really received and when.  The process prints ``ready`` once the
socket is bound, and exits after ``--lifetime`` seconds whatever happens.
"""

from __future__ import annotations

import argparse
import signal
import socket
import struct
import sys
import time

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

SOA_MNAME = "ns.soa.test."
SUFFIXES = (dns.name.Name([bytes([0x80 + i]) * 63 for i in range(3)] + [b"many", b"test", b""]),
            dns.name.Name([bytes([0x61 + i]) * 60 for i in range(3)] + [b"many", b"test", b""]))
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def many_names(qname: dns.name.Name, count: int, ttl: int) -> dns.rrset.RRset:
    """``count`` PTR records of distinct long names."""
    rrset = dns.rrset.RRset(qname, dns.rdataclass.IN, dns.rdatatype.PTR)
    for i in range(count):
        target = dns.name.Name([b"n%d" % i] + list(SUFFIXES[i % 2].labels))
        rrset.add(dns.rdata.from_text("IN", "PTR", target.to_text()), ttl)
    return rrset


def answer(query: dns.message.Message, ptrs: dict, synth: str | None, ttl: int,
           soa_ttl: int, many: dict | None = None) -> dns.message.Message:
    """The response to one query."""
    response = dns.message.make_response(query)
    if len(query.question) != 1 or query.question[0].rdtype != dns.rdatatype.PTR:
        response.set_rcode(dns.rcode.REFUSED)
        return response
    qname = query.question[0].name
    try:
        address = dns.reversename.to_address(qname)
    except (dns.exception.SyntaxError, ValueError):
        address = None
    if many and address in many:
        response.answer.append(many_names(qname, many[address], ttl))
        return response
    names = ptrs.get(address)
    if names is None and synth and address and address.startswith(synth):
        names = ["h-" + address.replace(".", "-").replace(":", "-") + ".flood.test"]
    if names:
        rrset = dns.rrset.from_text_list(qname, ttl, "IN", "PTR",
                                         [n if n.endswith(".") else n + "." for n in names])
        response.answer.append(rrset)
    else:
        response.set_rcode(dns.rcode.NXDOMAIN)
        zone = dns.name.from_text("arpa.")
        soa = dns.rrset.from_text(zone, soa_ttl, "IN", "SOA",
                                  f"{SOA_MNAME} hostmaster.soa.test. 1 3600 600 86400 300")
        response.authority.append(soa)
    return response


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log")
    p.add_argument("--ptr", action="append", default=[])
    p.add_argument("--synth")
    p.add_argument("--many", action="append", default=[])
    p.add_argument("--ttl", type=int, default=3600)
    p.add_argument("--soa-ttl", type=int, default=900)
    p.add_argument("--lifetime", type=float, default=300.0)
    args = p.parse_args()
    if not (args.host.startswith("127.") or args.host == "::1"):
        sys.exit("dnsserver: loopback addresses only")
    ptrs = {}
    for item in args.ptr:
        ip, _, names = item.partition("=")
        ptrs[ip] = names.split(",")
    many = {ip: int(count) for ip, _, count in (item.partition("=") for item in args.many)}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind((args.host, args.port))
    sock.settimeout(0.2)
    log = open(args.log, "a", buffering=1) if args.log else None
    print("ready", flush=True)
    end = time.monotonic() + args.lifetime
    while time.monotonic() < end:
        try:
            wire, ancdata, _, source = sock.recvmsg(65535, socket.CMSG_SPACE(16))
        except socket.timeout:
            continue
        t = time.time()
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                sec, nsec = struct.unpack("=qq", data[:16])
                t = sec + nsec / 1e9
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            continue
        if log is not None:
            qname = query.question[0].name.to_text() if query.question else "-"
            log.write(f"{t:.6f} {qname}\n")
        response = answer(query, ptrs, args.synth, args.ttl, args.soa_ttl, many)
        sock.sendto(response.to_wire(max_size=65535), source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
