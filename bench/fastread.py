#!/usr/bin/env python3
"""The replay's C read path against its numpy twin (issue 16): ``nc.sniffer -r`` of the
bench capture with ``NCSNIFFER_FASTREAD`` unset (C) and ``=0`` (numpy), default and
``connections: True``, two processes (``NCSNIFFER_REPLAY=batch``) and one (``=serial``).

    .venv/bin/python bench/fastread.py [--runs 3] [--capture bench/work/bench.pcap]

Each configuration's C and numpy runs alternate (the machine is shared: a
comparison holds only within one run of this script); each row is the median
wall time of ``--runs``.  The two stats files of a configuration are compared
byte for byte (``cmp``).  Writes bench/results/fastread-*.md.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (FILTER, NC, WORK, BenchError, ensure_capture, ensure_nc, fmt_int,  # noqa: E402
                      log, machine_lines, median_run, run_measured, run_script, table,
                      write_results)

PATHS = {"C": {}, "numpy": {"NCSNIFFER_FASTREAD": "0"}}
CONFIGS = {"default": {}, "connections": {"connections": True}}
PROCESSES = {"two processes": {"NCSNIFFER_REPLAY": "batch"},     # (forced: not by the load)
             "one process": {"NCSNIFFER_REPLAY": "serial"}}
PACKETS = 1_000_000            # bench/gen_capture.py's default capture


def measure(capture: str, runs: int, scratch: str) -> tuple[list[list[str]], list[str]]:
    """(table rows, stats comparisons) for every configuration and process mode."""
    rows, same = [], []
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for config, extra in CONFIGS.items():
        for processes, penv in PROCESSES.items():
            measured = {path: [] for path in PATHS}
            stats = {}
            for _ in range(runs):
                for path, fenv in PATHS.items():
                    work = os.path.join(scratch, f"{config}-{processes}-{path}".replace(" ", "-"))
                    os.makedirs(work, exist_ok=True)
                    conf = os.path.join(work, "nc.conf")
                    with open(conf, "w") as fh:
                        fh.write(repr({"piddir": work, "sniffer": work, "bpf": FILTER,
                                       "resolve": False, **extra}) + "\n")
                    run = run_measured([NC, "-q", "-c", conf, "-r", capture, "start"],
                                       env={**env, **penv, **fenv})
                    if run.returncode:
                        raise BenchError(f"{config} {processes} {path}: exit {run.returncode}: "
                                         f"{run.stderr}")
                    measured[path].append(run)
                    stats[path] = os.path.join(work, "nc.sniffer.stats")
            walls = {path: median_run(r).wall for path, r in measured.items()}
            for path, r in measured.items():
                m = median_run(r)
                rows.append([config, processes, path, fmt_int(PACKETS / m.wall), f"{m.wall:.3f}",
                             ", ".join(f"{x.wall:.2f}" for x in r), f"{m.user:.2f}",
                             f"{m.sys:.2f}", f"{walls['numpy'] / m.wall:.2f}"])
            identical = filecmp.cmp(stats["C"], stats["numpy"], shallow=False)
            same.append(f"- {config}, {processes}: stats files "
                        f"{'byte-identical' if identical else 'DIFFER'} (cmp)")
            log(f"{config} {processes}: C {walls['C']:.3f} s, numpy {walls['numpy']:.3f} s")
    return rows, same


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--capture", default=os.path.join(WORK, "bench.pcap"))
    args = p.parse_args(argv)
    ensure_capture(args.capture)
    ensure_nc()
    with tempfile.TemporaryDirectory() as scratch:
        rows, same = measure(args.capture, args.runs, scratch)
    lines = ["# The replay's C read path (_fastread.c) against the numpy path", ""]
    lines += machine_lines()
    lines += [f"- capture: `{os.path.relpath(args.capture)}`, filter `{FILTER}`; "
              f"C and numpy runs alternate, {args.runs} each; the row is the median run", ""]
    lines += table(["config", "processes", "path", "packets/s", "wall s (median)",
                    "wall s (all runs)", "user s", "sys s", "speed-up vs numpy"],
                   rows, right={3, 4, 6, 7, 8})
    lines += [""] + same
    write_results("fastread", lines)
    return 0


if __name__ == "__main__":
    run_script(main, "bench/fastread.py")
