#!/usr/bin/env python3
"""The stats file's records section: compiled lines (_dumptext.c) against the plain twin.

    .venv/bin/python bench/dump_bench.py [--records 47000,1000000] [--runs 5]

A table of ``--records`` peers (nine in ten IPv4, one in twenty with a name, as a
replay with names on might leave), made with the accounting's own ``count_run``;
then ``dumpfile.render`` of the whole file into memory in each format, with the
compiled formatter and with the plain twin (``dumpfile._dumptext`` set to None),
interleaved, median CPU of ``--runs``.  With ``--connections`` too: the K
counters.  Writes bench/results/dump-*.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchlib import fmt_int, machine_lines, median, run_script, table, write_results  # noqa: E402

from ncsniffer import dumpfile  # noqa: E402
from ncsniffer.accounting import Accounting  # noqa: E402

FORMATS = ("python", "json", "perl")
HEADER = dumpfile.Header(start=1000, current=2000, hits=0.0, bytes=0.0, users=0,
                         device="bench", promiscuous=False, bpf="")


def records(n: int, connections: bool) -> Accounting:
    """``n`` peers: IPv4 and IPv6, a few with names, K counters when asked."""
    rng = np.random.default_rng(1)
    acct = Accounting(1000, connections=connections)
    v4 = rng.choice(2 ** 32 - 2 ** 24, n - n // 10, replace=False) + 2 ** 24
    keys = [int(x).to_bytes(4, "big") for x in v4]
    keys += [b"\x20\x01\x0d\xb8" + int(x).to_bytes(12, "big")
             for x in rng.choice(2 ** 40, n // 10, replace=False)]
    acct.count_run(keys, rng.integers(40, 1500, len(keys)).tolist(), 1000)
    for key in keys[::20]:
        acct.records.set_names(key, ["host-%d.example.com" % key[-1]], 0)
    if connections:
        k = acct.records.cols["conn"]["k"]
        k[acct.records.occupied()] = rng.integers(0, 4, k[acct.records.occupied()].shape)
    return acct


def cpu_of(acct: Accounting, fmt: str) -> float:
    began = time.process_time()
    for _ in dumpfile.render(HEADER, dumpfile.rows_from_records(acct.records), fmt):
        pass
    return time.process_time() - began


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", default="47000,1000000", help="table sizes, comma-separated")
    p.add_argument("--runs", type=int, default=5, help="runs per side (median), default 5")
    p.add_argument("--connections", action="store_true", help="also with the K counters")
    args = p.parse_args()
    compiled = dumpfile._dumptext
    rows = []
    for n in [int(x) for x in args.records.split(",")]:
        for conns in (False, True) if args.connections else (False,):
            acct = records(n, conns)
            for fmt in FORMATS:
                fast, plain = [], []
                for _ in range(args.runs):
                    dumpfile._dumptext = compiled
                    fast.append(cpu_of(acct, fmt))
                    dumpfile._dumptext = None
                    plain.append(cpu_of(acct, fmt))
                dumpfile._dumptext = compiled
                f, s = median(fast), median(plain)
                rows.append([fmt_int(n), "K" if conns else "", fmt, f"{s:.3f}", f"{f:.3f}",
                             f"{s / f:.1f}x" if f else "-"])
    lines = ["# The records section of a stats file: compiled against plain "
             "(bench/dump_bench.py)", ""] + machine_lines() + [
        f"- `dumpfile.render` into memory, CPU s, median of {args.runs} interleaved; one in "
        "ten records IPv6, one in twenty with a name; Perl has no compiled path (the same "
        "code on both sides)", ""] + table(
        ["records", "K", "format", "plain s", "compiled s", "speed-up"], rows, {0, 3, 4, 5})
    write_results("dump", lines)
    return 0


if __name__ == "__main__":
    run_script(main, "dump_bench")
