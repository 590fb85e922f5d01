#!/usr/bin/env python3
"""Replay a flood of new source addresses with name lookups on; count what the server saw.

    .venv/bin/python bench/dns_flood.py [--hosts 20000] [--qps 50 1000] [--seconds 200]

Starts ``tests/dnsserver.py`` on 127.0.0.1 (loopback only), replays a capture in
which every packet comes from a new address, and prints, per rate: queries the
server received, distinct addresses queried, the most queries within any one
second, and the wall time of the replay.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ncsniffer import decode, pcapgen  # noqa: E402

START = 1_700_000_000


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def max_per_second(times: list[float]) -> int:
    times.sort()
    best = j = 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


def run(tmp: str, hosts: int, qps: int, seconds: int) -> None:
    pcap = os.path.join(tmp, "flood.pcap")
    frames = []
    for i in range(hosts):
        src = f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
        pkt = pcapgen.ip_packet(src, "192.0.2.10", "udp", b"x" * 20, dport=9)
        frames.append((START + i * seconds / hosts, pcapgen.frame(decode.DLT_EN10MB, pkt)))
    pcapgen.write_pcap(pcap, decode.DLT_EN10MB, frames)
    port, log = free_port(), os.path.join(tmp, f"queries-{qps}.log")
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "dnsserver.py"),
                               "--port", str(port), "--log", log, "--synth", "10.",
                               "--lifetime", "600"], stdout=subprocess.PIPE)
    try:
        server.stdout.readline()
        conf = os.path.join(tmp, "bench.conf")
        with open(conf, "w") as fh:
            fh.write(repr({"piddir": tmp, "sniffer": tmp, "bpf": "host 192.0.2.10",
                           "resolve": True, "nameserver": f"127.0.0.1:{port}",
                           "dns_max_qps": qps}))
        began = time.monotonic()
        result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "nc.sniffer"),
                                 "-c", conf, "-r", pcap, "-q", "start"],
                                capture_output=True, text=True, timeout=600)
        wall = time.monotonic() - began
    finally:
        server.terminate()
        server.wait(10)
    probe = "1.0.0.127.in-addr.arpa."
    queries = [line.split() for line in open(log) if not line.rstrip().endswith(probe)]
    names = {name for _, name in queries}
    print(f"qps {qps:5}: {hosts} addresses, {len(queries)} queries, {len(names)} distinct, "
          f"max {max_per_second([float(t) for t, _ in queries])} in one second, "
          f"replay {wall:.1f} s")
    if result.returncode:
        print(result.stderr)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--hosts", type=int, default=20000)
    p.add_argument("--qps", type=int, nargs="+", default=[50, 1000])
    p.add_argument("--seconds", type=int, default=200, help="packet time the flood spans")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for qps in args.qps:
            run(tmp, args.hosts, qps, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
