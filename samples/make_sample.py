#!/usr/bin/env python3
"""Regenerate samples/sample.pcap: deterministic traffic of one host with its peers.

About forty IPv4 peers, a few IPv6 ones and one VLAN-tagged peer talk to
192.0.2.10 (the sniffed host) over 30 minutes, with some DNS queries that
mention example.com so the payload match can be tried.
"""

import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ncsniffer import decode, pcapgen  # noqa: E402

ME4, ME6 = "192.0.2.10", "2001:db8::10"
START = 1700000000
DURATION = 30 * 60


def packets(seed: int = 7):
    rnd = random.Random(seed)
    peers = [f"198.51.100.{i}" for i in range(1, 31)] + [f"203.0.113.{i}" for i in (5, 6, 7, 80, 81, 200, 201, 202, 250, 251)]
    peers6 = ["2001:db8:1::5", "2001:db8:1::6", "2001:db8:2::1"]
    weights = [1.0 / (i + 1) for i in range(len(peers))]
    out = []
    for n in range(1800):
        ts = START + n + rnd.random()
        r = rnd.random()
        if r < 0.08:
            peer, me, vlans = rnd.choice(peers6), ME6, ()
        elif r < 0.12:
            peer, me, vlans = "198.51.100.99", ME4, (42,)
        else:
            peer, me, vlans = rnd.choices(peers, weights)[0], ME4, ()
        dns = rnd.random() < 0.3
        payload = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
                   if dns else bytes(rnd.randrange(10, 400)))
        proto = "udp" if dns else rnd.choice(("tcp", "udp"))
        # IPv6 traffic only arrives: the bpf's first host (192.0.2.10) is "me".
        src, dst = (peer, me) if me == ME6 or rnd.random() < 0.5 else (me, peer)
        pkt = pcapgen.ip_packet(src, dst, proto, payload, dport=53 if dns else 80)
        out.append((ts, pcapgen.frame(decode.DLT_EN10MB, pkt, vlans)))
    return out


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample.pcap")
    pcapgen.write_pcap(path, decode.DLT_EN10MB, packets())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
