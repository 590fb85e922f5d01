#!/usr/bin/env python3
"""Time the report of a 100,000-record stats file (the goal: under 2 seconds).

Generates a stats file in each format (python, perl, json) with realistic
records (names on most IPs, a few thousand /24s), then times read + report of
both report types.  Writes the table to bench/results/report.txt.

    .venv/bin/python bench/report_bench.py [--records N] [--repeat K]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ncsniffer import dumpfile, report  # noqa: E402

TLDS = ("com", "net", "org", "de", "co.uk", "com.au")


def make_records(n: int, seed: int = 5) -> dict:
    """n records in about n/25 networks, 80 % with one or two names, some IPv6."""
    rnd = random.Random(seed)
    records = {}
    now = 1_700_000_000
    while len(records) < n:
        if rnd.random() < 0.05:
            ip = "2001:db8:%x:%x::%x" % (rnd.randrange(64), rnd.randrange(16), rnd.randrange(1, 65535))
        else:
            net = rnd.randrange(n // 25 + 1)
            ip = "%d.%d.%d.%d" % (10 + net // 65536, (net >> 8) & 255, net & 255, rnd.randrange(1, 255))
        names = []
        if rnd.random() < 0.8:
            dom = "d%d.%s" % (rnd.randrange(n // 50 + 1), rnd.choice(TLDS))
            names = ["h%d.%s" % (rnd.randrange(1000), dom)]
            if rnd.random() < 0.1:
                names.append("alias.%s" % dom)
        elif rnd.random() < 0.3:
            names = [":ns%d.example.net" % rnd.randrange(50)]
        records[ip] = {"B": rnd.randrange(10_000), "C": rnd.randrange(50),
                       "E": now - rnd.randrange(86400), "N": names,
                       "R": rnd.randrange(100_000), "S": now - 86400,
                       "T": now + rnd.randrange(86400), "W": rnd.randrange(10_000_000)}
    return records


def header(n: int) -> dumpfile.Header:
    return dumpfile.Header(start=1_699_913_600, current=1_700_000_000, hits=1000, bytes=5000,
                           users=n, device="eth0", promiscuous=False, bpf="host 192.0.2.1")


def time_report(path: str, by_name: bool, repeat: int) -> float:
    """Best of ``repeat`` runs of read + report (what nc.sniffer.cgi does)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        out = io.StringIO()
        report.report(out, path, by_name)
        best = min(best, time.perf_counter() - started)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "report.txt"))
    args = p.parse_args(argv)
    records = make_records(args.records)
    rows = dumpfile.rows_from_dicts(records)
    lines = [f"report of a {args.records}-record stats file: read + report, best of "
             f"{args.repeat} (python {sys.version.split()[0]}, {os.uname().machine})",
             "%-8s %10s %12s %12s %12s" % ("format", "size MB", "read s", "/24 s", "by name s")]
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("python", "perl", "json"):
            path = os.path.join(tmp, f"bench.{fmt}.stats")
            dumpfile.write_file(path, header(args.records), rows, fmt)
            started = time.perf_counter()
            report.read_stf(path)
            read = time.perf_counter() - started
            cidr = time_report(path, False, args.repeat)
            name = time_report(path, True, args.repeat)
            lines.append("%-8s %10.1f %12.3f %12.3f %12.3f" % (
                fmt, os.path.getsize(path) / 1e6, read, cidr, name))
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
