#!/usr/bin/env python3
"""Captures for the live and memory benchmarks: IPv4 only, sniffed host 10.213.77.1.

    python3 bench/livecap.py OUT.pcap --zipf --packets 400000 --peers 50000 [--seed 2]
    python3 bench/livecap.py OUT.pcap --distinct --peers 1000000 [--offset 0]

Frames come from gen_capture.frame(): destination MAC 00:11:22:33:44:55 (the
sniffing veth is given that address), source MAC 66:77:88:99:aa:bb.  --zipf:
Zipf-like peer popularity and the packet size mix of gen_capture.py; --distinct:
one small packet per peer, peers numbered from --offset, so the daemon tracks
exactly --peers addresses.  Peers are 11.0.0.0 - 26.255.255.255 (never routed
outside the namespaces).
"""

from __future__ import annotations

import argparse
import bisect
import os
import random
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gen_capture import frame, peer_address, zipf_cdf  # noqa: E402

ME = bytes([10, 213, 77, 1])
START = 1_700_000_000
RECORD = struct.Struct("=IIII")


def write_header(fh) -> None:
    fh.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))


def write_zipf(path: str, packets: int, peers: int, seed: int) -> None:
    """Zipf-like peers, half the packets towards the sniffed host, TCP/UDP, mixed sizes."""
    rnd = random.Random(seed)
    cdf = zipf_cdf(peers)
    total = cdf[-1]
    with open(path, "wb") as fh:
        write_header(fh)
        for n in range(packets):
            addr = peer_address(bisect.bisect_left(cdf, rnd.random() * total), False)
            src, dst = (ME, addr) if rnd.random() < 0.5 else (addr, ME)
            proto = 6 if rnd.random() < 0.6 else 17
            data = frame(src, dst, proto, rnd.choice((0, 0, 40, 120, 512, 1200)))
            fh.write(RECORD.pack(START + n // 1000, (n % 1000) * 1000, len(data), len(data)))
            fh.write(data)


def write_distinct(path: str, peers: int, offset: int) -> None:
    """One 60-byte UDP packet from each of ``peers`` new addresses to the sniffed host."""
    template = frame(peer_address(0, False), ME, 17, 0)
    src_at = 14 + 12
    with open(path, "wb") as fh:
        write_header(fh)
        head = RECORD.pack(START, 0, len(template), len(template))
        for i in range(offset, offset + peers):
            fh.write(head)
            fh.write(template[:src_at] + peer_address(i, False) + template[src_at + 4:])


def ensure(path: str, *args: str) -> str:
    """Generate ``path`` with these arguments unless it exists; returns the path."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        main([path + ".part", *args])
        os.replace(path + ".part", path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--zipf", action="store_true")
    mode.add_argument("--distinct", action="store_true")
    p.add_argument("--packets", type=int, default=400_000)
    p.add_argument("--peers", type=int, default=50_000)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--seed", type=int, default=2)
    args = p.parse_args(argv)
    if args.zipf:
        write_zipf(args.out, args.packets, args.peers, args.seed)
    else:
        write_distinct(args.out, args.peers, args.offset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
