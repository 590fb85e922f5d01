#!/usr/bin/env python3
"""Issue 13's speed target, focused: ``nc.sniffer -r`` with ``connections: True``
against darkstat's default run, in the same run, wall time.

    bench/ct_replay.py [--runs 3] [--label NAME] [--base DIR]

Per run, in turn: darkstat -r (its default), nc.sniffer -r with connections in
the default mode (two processes) and in one process (``NCSNIFFER_REPLAY=serial``);
with ``--base DIR`` (a checkout of an earlier commit, its extensions built), the
same two of that code too, interleaved with these: before and after in one run.
The median wall time of each, the ratio of packets per second to darkstat's, the
load average.  Results: bench/results/ct-replay[-NAME]-*.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib  # noqa: E402
import replaybench  # noqa: E402
from benchlib import FILTER, NC, fmt_int, log  # noqa: E402

DARKSTAT = "darkstat -r"


def commands(capture: str, scratch: str, base: str | None = None) -> dict[str, list[str]]:
    """Row name -> command: darkstat's default and the two replay modes with connections
    (and those of the code in ``base``: ``-P``, or the current directory's package would
    come first)."""
    tools = {t.name: t for t in replaybench.tools(capture, scratch)}
    conn = tools[replaybench.CONNECTIONS].cmd
    conf = conn[conn.index("-c") + 1]
    args = ["-q", "-c", conf, "-r", capture, "start"]
    out = {DARKSTAT: tools[DARKSTAT].cmd}
    for name, prefix in [("", [NC])] + ([(f" [{os.path.basename(base.rstrip('/'))}]",
                                          ["env", f"PYTHONPATH={base}", sys.executable,
                                           "-P", "-m", "ncsniffer"])] if base else []):
        out[f"nc.sniffer -r, connections (default: two processes){name}"] = prefix + args
        out[f"nc.sniffer -r, connections (one process){name}"] = \
            ["env", "NCSNIFFER_REPLAY=serial"] + prefix + args
    return out


def measure(runs: int, base: str | None = None) -> list[str]:
    capture = replaybench.CAPTURE
    benchlib.ensure_capture(capture)
    expected = benchlib.pcap_count(capture, FILTER)
    lines = ["# Replay with connections: True against darkstat (issue 13)", ""]
    lines += benchlib.machine_lines()
    walls: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    loads = [benchlib.load_text()]
    with tempfile.TemporaryDirectory(prefix="ct-replay-") as scratch:
        cmds = commands(capture, scratch, base)
        for i in range(runs):
            log(f"run {i + 1}/{runs}")
            for row, cmd in cmds.items():
                run = benchlib.run_measured(cmd)
                if run.returncode != 0:
                    raise benchlib.BenchError(f"{row}: exit {run.returncode}: {run.stderr[-500:]}")
                walls.setdefault(row, []).append(run.wall)
                cpus.setdefault(row, []).append(run.user + run.sys)
            loads.append(benchlib.load_text())
    lines += [f"- capture: `{os.path.relpath(capture, benchlib.ROOT)}`, {fmt_int(expected)} "
              f"packets pass `{FILTER}`; {runs} runs, medians",
              f"- load average after each run: {'; '.join(loads[1:])}", ""]
    base = benchlib.median(walls[DARKSTAT])
    rows = []
    for row in walls:
        wall = benchlib.median(walls[row])
        rows.append([row, f"{wall:.3f}", f"{benchlib.median(cpus[row]):.3f}",
                     fmt_int(expected / wall), f"{base / wall:.2f}x",
                     " ".join(f"{w:.2f}" for w in walls[row])])
    lines += benchlib.table(["", "wall (s)", "CPU (s)", "packets/s", "vs darkstat",
                             "walls (s)"], rows)
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--label", default="", help="results name: ct-replay-LABEL")
    ap.add_argument("--base", help="a checkout of earlier code to measure beside this one")
    args = ap.parse_args(argv)
    benchlib.ensure_commands("darkstat", "tcpdump")
    benchlib.ensure_nc()
    lines = measure(args.runs, args.base)
    benchlib.write_results("ct-replay" + (f"-{args.label}" if args.label else ""), lines)
    return 0


if __name__ == "__main__":
    benchlib.run_script(main, "ct_replay")
