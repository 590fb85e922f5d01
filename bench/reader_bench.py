#!/usr/bin/env python3
"""Peak memory and time of reading a big stats file, and of its report (issue 11.18).

Writes a stats file of about --mb megabytes in each format (python, perl,
json), then reads it in a child process (``dumpfile.read_stats``) and, for
the Python format, prints its by-name report (``report.report``, what
nc.sniffer.cgi does).  Each child's peak RSS comes from wait4, so every
figure is that child's alone.  With ``--before DIR`` (an unpacked older
tree, e.g. ``git archive 0beea9a ncsniffer | tar -x -C DIR``) the same runs
use that code too, for a before/after table.  Writes
bench/results/reader-latest.md (and a dated copy).

    .venv/bin/python bench/reader_bench.py [--mb 500] [--before DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import benchlib  # noqa: E402
from ncsniffer import dumpfile  # noqa: E402

CHILD = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from ncsniffer import dumpfile, report
started = time.perf_counter()
if sys.argv[3] == "read":
    count = len(dumpfile.read_stats(sys.argv[2]).records)
else:
    with open(os.devnull, "w") as out:
        report.report(out, sys.argv[2], True)
    count = -1
print(count, time.perf_counter() - started)
"""
TLDS = ("com", "net", "org", "de", "co.uk", "com.au")
NOW = 1_700_000_000


def rows(count: int, seed: int = 11):
    """``count`` realistic rows (names on most IPs, ~25 IPs per /24) in address order."""
    rnd = random.Random(seed)
    for i in range(count):
        names = []
        if rnd.random() < 0.8:
            names = ["h%d.d%d.%s" % (rnd.randrange(1000), rnd.randrange(count // 50 + 1),
                                     rnd.choice(TLDS))]
        net, host = divmod(i, 25)
        ip = "%d.%d.%d.%d" % (10 + (net >> 16), (net >> 8) & 255, net & 255, 1 + host * 10)
        yield (ip, rnd.randrange(10_000), rnd.randrange(50), NOW - rnd.randrange(86400), names,
               rnd.randrange(100_000), NOW - 86400, NOW + rnd.randrange(86400),
               rnd.randrange(10_000_000))


def header(count: int) -> dumpfile.Header:
    return dumpfile.Header(start=NOW - 86400, current=NOW, hits=1000, bytes=5000, users=count,
                           device="eth0", promiscuous=False, bpf="host 192.0.2.1")


def write(path: str, fmt: str, megabytes: int) -> int:
    """A file of about ``megabytes`` MB; the record count is found from a sample."""
    dumpfile.write_file(path, header(10_000), rows(10_000), fmt)
    count = int(megabytes * 1e6 / os.path.getsize(path) * 10_000)
    dumpfile.write_file(path, header(count), rows(count), fmt)
    return count


def measure(src: str, path: str, step: str) -> tuple[float, int, str]:
    """(seconds, peak RSS bytes, note) of one child."""
    run = benchlib.run_measured([sys.executable, "-c", CHILD, src, path, step], timeout=1200)
    text = run.stdout.split()
    if run.returncode or len(text) != 2:
        problem = run.stderr.strip().splitlines() or ["failed"]
        return float("nan"), run.maxrss_kb * 1024, problem[-1][:60]
    return float(text[1]), run.maxrss_kb * 1024, ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=500)
    p.add_argument("--before", help="directory holding an older ncsniffer package")
    args = p.parse_args(argv)
    trees = ([("before", args.before)] if args.before else []) + [("after", ROOT)]
    lines = [f"# Reading a {args.mb} MB stats file (bench/reader_bench.py)", "",
             f"python {sys.version.split()[0]}, {os.uname().machine}, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; each figure is one child "
             "process (peak RSS from wait4).", "",
             "| format | size MB | records | step | code | seconds | peak RSS MB | RSS / size |",
             "|---|---:|---:|---|---|---:|---:|---:|"]
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        for fmt in ("python", "perl", "json"):
            path = os.path.join(tmp, f"big.{fmt}.stats")
            count = write(path, fmt, args.mb)
            size = os.path.getsize(path)
            steps = ("read", "report") if fmt == "python" else ("read",)
            for step in steps:
                for label, src in trees:
                    took, peak, note = measure(src, path, step)
                    lines.append(f"| {fmt} | {size / 1e6:.0f} | {count} | {step} | {label} | "
                                 f"{took:.1f} | {peak / 1e6:.0f} | {peak / size:.1f} |"
                                 + (f" {note}" if note else ""))
                    print(lines[-1], flush=True)
            os.unlink(path)
    benchlib.write_results("reader", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
