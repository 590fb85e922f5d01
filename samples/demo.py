#!/usr/bin/env python3
"""`make demo`: replay the bundled capture, print the stats file and a summary."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)


def run(*args: str) -> None:
    print("$ " + " ".join(args), flush=True)
    subprocess.run(args, check=True, cwd=ROOT)


def main() -> int:
    os.makedirs(os.path.join(ROOT, "demo-out"), exist_ok=True)
    run(os.path.join(BIN, "nc.sniffer"), "-c", "samples/demo.conf", "-r", "samples/sample.pcap", "start")
    stats = os.path.join(ROOT, "demo-out", "nc.sniffer.stats")
    with open(stats, encoding="utf-8") as fh:
        text = fh.read()
    lines = text.splitlines()
    print(f"\n---- {os.path.relpath(stats, ROOT)} (first 25 lines of {len(lines)}) ----")
    print("\n".join(lines[:25]))
    sys.path.insert(0, ROOT)
    from ncsniffer import dumpfile
    data = dumpfile.read_stats(stats)
    top = sorted(data.records.items(), key=lambda kv: -kv[1]["W"])[:5]
    print("\n---- summary ----")
    print(f"{len(data.records)} peers; {data.header_value('hits')}; {data.header_value('bytes')}")
    print("busiest peers (bytes/hour, packets/hour):")
    for ip, rec in top:
        print(f"  {ip:<18} {rec['W']:>10.0f} B/h {rec['R']:>8.0f} pkt/h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
