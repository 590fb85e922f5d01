#!/usr/bin/env python3
"""Generate the benchmark capture: seeded, Zipf-like peers, TCP/UDP/IPv6 mix, one hour.

    bench/gen_capture.py OUT.pcap [--packets 1000000] [--peers 50000] [--seed 1]

The sniffed host is 10.0.0.1 (and 2001:db8::1 for IPv6).  Frames are Ethernet,
built once per shape and patched with struct, so a million take seconds.
"""

import argparse
import bisect
import itertools
import random
import struct

ME4 = bytes([10, 0, 0, 1])
ME6 = bytes.fromhex("20010db8000000000000000000000001")
START = 1_700_000_000
ETH = b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb"


def zipf_cdf(n: int, s: float = 1.0):
    weights = [1.0 / (i + 1) ** s for i in range(n)]
    return list(itertools.accumulate(weights))


def peer_address(i: int, six: bool) -> bytes:
    if six:
        return bytes.fromhex("20010db8beef") + i.to_bytes(10, "big")
    return bytes([11 + (i >> 16), (i >> 8) & 255, i & 255, 1 + i % 250])


def frame(src: bytes, dst: bytes, proto: int, payload_len: int) -> bytes:
    l4 = (struct.pack("!HHIIBBHHH", 443, 40000, 1, 1, 0x50, 0x10, 65535, 0, 0)
          if proto == 6 else struct.pack("!HHHH", 53, 40000, 8 + payload_len, 0))
    body = l4 + bytes(payload_len)
    if len(src) == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, proto, 0, src, dst)
        return ETH + b"\x08\x00" + ip + body
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(body), proto, 64, src, dst)
    return ETH + b"\x86\xdd" + ip + body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--peers", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seconds", type=int, default=3600)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    cdf = zipf_cdf(args.peers)
    total = cdf[-1]
    rec = struct.Struct("=IIII")
    with open(args.out, "wb") as fh:
        fh.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        step = args.seconds / args.packets
        for n in range(args.packets):
            peer = bisect.bisect_left(cdf, rnd.random() * total)
            six = peer % 10 == 0                      # 10% of peers speak IPv6
            addr = peer_address(peer, six)
            me = ME6 if six else ME4
            src, dst = (me, addr) if rnd.random() < 0.5 else (addr, me)
            proto = 6 if rnd.random() < 0.6 else 17
            data = frame(src, dst, proto, rnd.choice((0, 0, 40, 120, 512, 1200)))
            ts = START + n * step
            sec = int(ts)
            fh.write(rec.pack(sec, int((ts - sec) * 1e6), len(data), len(data)))
            fh.write(data)


if __name__ == "__main__":
    main()
