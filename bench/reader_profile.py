#!/usr/bin/env python3
"""Where the replay's reading process spends its time (issue 16): the read, the
record walk, the filter and decoding, per batch.

    .venv/bin/python bench/reader_profile.py [--capture bench/work/bench.pcap] [--runs 5]

Like bench/conntrack_profile.py this imports the package: the reading process's
loop (``replay._one_process`` over ``replay._open``'s batches, as the forked
process runs it) over the whole capture, default settings, under cProfile; the
run with the least total of ``--runs`` is reported (the first one warms the page
cache and the allocator).  Writes bench/results/reader-profile-*.md.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchlib import FILTER, ensure_capture, machine_lines, run_script, table, write_results  # noqa: E402

from ncsniffer import config, replay, sniffer  # noqa: E402
from ncsniffer.clock import PacketClock  # noqa: E402

# (row, the profiled function's name as pstats shows it)
STEPS = [("the read (pread into the reused buffer)", "{built-in method posix.preadv}"),
         ("the record walk (_fastread.walk)", "{built-in method ncsniffer._fastread.walk}"),
         ("filter, decode, targets (_fastread.prepare)",
          "{built-in method ncsniffer._fastread.prepare}")]


def one_run(capture: str, scratch: str) -> tuple[float, int, pstats.Stats]:
    settings = config.validate({"piddir": scratch, "sniffer": scratch, "bpf": FILTER,
                                "resolve": False}, "nc.sniffer", offline=True)
    batches, linktype, prog, close = replay._open(capture, settings)
    rules = sniffer.Sniffer(settings, linktype, PacketClock(), device=capture).rules
    profile = cProfile.Profile()
    began = time.perf_counter()
    profile.enable()
    n = sum(1 for _ in replay._one_process(batches, prog, rules))
    profile.disable()
    wall = time.perf_counter() - began
    close()
    return wall, n, pstats.Stats(profile)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--capture", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                     "work", "bench.pcap"))
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    ensure_capture(args.capture)
    scratch = os.path.join(os.path.dirname(os.path.abspath(__file__)), "work")
    wall, n, stats = min((one_run(args.capture, scratch) for _ in range(args.runs)),
                         key=lambda r: r[0])
    by_name = {pstats.func_std_string(f): v[2] for f, v in stats.stats.items()}
    rows, named = [], 0.0
    for row, name in STEPS:
        seconds = by_name.get(name, 0.0)
        named += seconds
        rows.append([row, f"{seconds:.3f}", f"{1000 * seconds / n:.2f}"])
    rows.append(["the rest (Python between the steps, the profiler)", f"{wall - named:.3f}",
                 f"{1000 * (wall - named) / n:.2f}"])
    rows.append(["the reading loop, whole", f"{wall:.3f}", f"{1000 * wall / n:.2f}"])
    lines = ["# The replay's reading process, step by step (bench/reader_profile.py)", "",
             *machine_lines(),
             f"- capture: `{os.path.relpath(args.capture)}`, default settings, {n} batches; "
             f"the fastest of {args.runs} runs, under cProfile", ""]
    lines += table(["step", "s", "ms a batch"], rows, right={1, 2})
    write_results("reader-profile", lines)
    return 0


if __name__ == "__main__":
    run_script(main, "bench/reader_profile.py")
