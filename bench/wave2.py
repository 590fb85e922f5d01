#!/usr/bin/env python3
"""Issue 16's before/after: a commit's replay and this checkout's, side by side with
tcpdump and darkstat, wall time, in one run.

    bench/wave2.py [--runs 3] COMMIT

COMMIT is unpacked as ``bench/old_new.py`` does (``git archive``, no worktree);
both trees run as ``python -m ncsniffer -r`` with the project's virtualenv and
PYTHONPATH set to the tree.  Captures: the bench capture (1,000,000 packets) and
the short one (300,000 packets, 20,000 peers; ``bench/replaybench.py`` makes
both).  Per capture, in turn ``--runs`` times: ``tcpdump -r F -w /dev/null``,
darkstat (its default, and keeping every host), old and new in the default mode and in one process
(``NCSNIFFER_REPLAY=serial``); the median wall time of each, and the ratios of
packets per second.  Results: bench/results/wave2-*.md.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib  # noqa: E402
import old_new  # noqa: E402
import replaybench  # noqa: E402
from benchlib import FILTER, fmt_int, log  # noqa: E402

# capture -> whether darkstat keeping every host runs too (9 s a run on the long one,
# whose target is darkstat's default; the short one's is darkstat keeping every host)
CAPTURES = {"bench (1M packets, 50k peers)": (replaybench.CAPTURE, False),
            "short (300k packets, 20k peers)": (replaybench.SHORT, True)}
MODES = {"default": None, "one process": "serial"}


def reference_tools(capture: str, scratch: str, all_kept: bool) -> dict:
    """tcpdump and darkstat (also keeping every host) of ``replaybench``, by row name."""
    keep = {"tcpdump -r -w /dev/null": "tcpdump -r -w /dev/null",
            "darkstat -r": "darkstat (default: 1,000 hosts)"}
    if all_kept:
        keep["darkstat -r, all hosts kept"] = "darkstat, all hosts kept"
    return {keep[t.name]: t for t in replaybench.tools(capture, scratch) if t.name in keep}


def one_capture(name: str, capture: str, all_kept: bool, trees: dict[str, str], scratch: str,
                runs: int) -> list[str]:
    expected = benchlib.pcap_count(capture, FILTER)
    others = reference_tools(capture, scratch, all_kept)
    walls: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    conf = old_new.write_conf(os.path.join(scratch, "conf"), FILTER, {})
    for i in range(runs):
        log(f"{name}: run {i + 1}/{runs}")
        for row, tool in others.items():
            run = benchlib.run_measured(tool.cmd)
            if run.returncode != 0 or tool.packets(run, scratch) not in (None, expected):
                raise benchlib.BenchError(f"{row}: exit {run.returncode}")
            walls.setdefault(row, []).append(run.wall)
            cpus.setdefault(row, []).append(run.user + run.sys)
        for side, tree in trees.items():
            for mode, value in MODES.items():
                run = old_new.replay(tree, conf, capture, value)
                if f": {expected} packets, {expected} counted" not in run.stderr:
                    raise benchlib.BenchError(f"{side} {mode}: {run.stderr.strip()[-300:]}")
                walls.setdefault(f"nc.sniffer {side}, {mode}", []).append(run.wall)
                cpus.setdefault(f"nc.sniffer {side}, {mode}", []).append(run.user + run.sys)
    med = {row: benchlib.median(w) for row, w in walls.items()}
    dark, floor = med["darkstat (default: 1,000 hosts)"], med["tcpdump -r -w /dev/null"]
    kept = med.get("darkstat, all hosts kept")
    rows = [[row, f"{med[row]:.2f}", ", ".join(f"{w:.2f}" for w in walls[row]),
             fmt_int(expected / med[row]), f"{dark / med[row]:.2f}",
             f"{kept / med[row]:.2f}" if kept else "",
             f"{floor / med[row]:.2f}", f"{benchlib.median(cpus[row]):.2f}"] for row in walls]
    lines = [f"## {name}", "", f"- `{os.path.relpath(capture, benchlib.ROOT)}`, "
             f"{fmt_int(expected)} packets matching `{FILTER}`", ""]
    return lines + benchlib.table(["", "wall s (median)", "all runs", "packets/s",
                                   "× darkstat", "× darkstat all kept", "× tcpdump",
                                   "CPU s (median)"], rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("commit", help="the code before (e.g. the branch's base)")
    args = p.parse_args(argv)
    benchlib.ensure_nc()
    benchlib.ensure_commands("tcpdump", "darkstat")
    benchlib.ensure_capture(replaybench.CAPTURE)
    benchlib.ensure_capture(replaybench.SHORT, *replaybench.SHORT_ARGS)
    with old_new.old_code(args.commit, "ncbench-wave2-") as (scratch, tree, short):
        lines = ["# Issue 16, before and after: replay wall time beside tcpdump and darkstat", ""]
        lines += benchlib.machine_lines()
        lines += [f"- old: commit {short} (`python -m ncsniffer`, PYTHONPATH its tree); new: "
                  "this checkout the same way", f"- median of {args.runs} runs, in turn; "
                  "× darkstat, × tcpdump: their wall time over the row's (≥ 1: the row is faster); "
                  "CPU: user + sys (wait4, children included), what the machine's load "
                  "changes least", ""]
        trees = {"old": tree, "new": benchlib.ROOT}
        for name, (capture, all_kept) in CAPTURES.items():
            lines += one_capture(name, capture, all_kept, trees, scratch, args.runs) + [""]
        lines += [f"- load average at end: {benchlib.load_text()}"]
    benchlib.write_results("wave2", lines)
    return 0


if __name__ == "__main__":
    benchlib.run_script(main, "bench/wave2.py")
