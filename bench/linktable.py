#!/usr/bin/env python3
"""Old against new code of one change: identical stats files, CPU time of the replay.

    bench/linktable.py [--runs 5] [--old 526ea9f] [--new HEAD]

Both commits are exported with ``git archive`` into temporary directories (no
worktree) and byte-compiled; the project's ``.venv/bin/nc.sniffer`` runs each
with PYTHONPATH pointing at its copy.  First the stats files of every capture
and replay path (samples/sample.pcap with the demo's filter, bench/work/bench.pcap
with the bench's; default, serial, libpcap, with a match string) are compared
byte for byte; then the bench capture is replayed ``--runs`` times per commit,
old and new interleaved, and the medians of user+sys CPU seconds (wait4,
children included: the machine is shared, CPU time is steadier than wall time)
are tabled, and so are the stages the change touched (import, reading the
batches, decoding them) timed inside one process.  Results:
bench/results/linktable.md.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib  # noqa: E402
from benchlib import FILTER, NC, PYTHON, ROOT, log  # noqa: E402

BENCH_CAPTURE = os.path.join(benchlib.WORK, "bench.pcap")
SAMPLE = os.path.join(ROOT, "samples", "sample.pcap")
SAMPLE_FILTER = "host 192.0.2.10 or dst host 2001:db8::10"
MATCH = {"match": "xyz", "payload": 54, "snaplen": 120}
# (name, capture, filter, extra settings, NCSNIFFER_REPLAY)
CASES = [
    ("sample", SAMPLE, SAMPLE_FILTER, {}, None),
    ("sample serial", SAMPLE, SAMPLE_FILTER, {}, "serial"),
    ("sample libpcap", SAMPLE, SAMPLE_FILTER, {}, "libpcap"),
    ("sample match", SAMPLE, SAMPLE_FILTER, MATCH, None),
    ("bench", BENCH_CAPTURE, FILTER, {}, None),
    ("bench serial", BENCH_CAPTURE, FILTER, {}, "serial"),
    ("bench libpcap", BENCH_CAPTURE, FILTER, {}, "libpcap"),
    ("bench match", BENCH_CAPTURE, FILTER, MATCH, None),
]
TIMED = ["bench", "bench match"]
# The parts the change touched, in one process (less noise than a whole replay):
# importing, reading every batch of the bench capture, decoding each batch.
STAGES = ["import", "read", "decode"]
STAGE_SCRIPT = """
import sys, time
t0 = time.process_time()
from ncsniffer import batch, pcapfile, replay
from ncsniffer.gather import HEAD, Gather, Heads
import numpy as np
t1 = time.process_time()
with open(sys.argv[1], "rb") as fh:
    batches = list(pcapfile.Reader(fh, sys.argv[1]).batches())
    t2 = time.process_time()
    for b in batches:
        batch.decode_batch(1, Heads(Gather(b.u8), b.offs, HEAD), np.arange(len(b.offs)), b.caplen)
    t3 = time.process_time()
print(t1 - t0, t2 - t1, t3 - t2)
"""


def export(commit: str, into: str) -> str:
    """``commit``'s files in ``into``, byte-compiled; returns its short hash."""
    os.makedirs(into)
    archive = subprocess.run(["git", "-C", ROOT, "archive", commit], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([PYTHON, "-m", "compileall", "-q", os.path.join(into, "ncsniffer")],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", commit], check=True,
                          capture_output=True, text=True).stdout.strip()


def replay(tree: str, case: tuple, out: str) -> benchlib.Run:
    """One replay of ``case`` by the code in ``tree``; its stats file is out/nc.sniffer.stats."""
    name, capture, bpf, extra, mode = case
    os.makedirs(out, exist_ok=True)
    conf = os.path.join(out, "nc.sniffer.conf")
    with open(conf, "w") as fh:
        fh.write(repr({"piddir": out, "sniffer": out, "bpf": bpf, "resolve": False,
                       **extra}) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("NCSNIFFER_REPLAY", "PYTHONPATH")}
    env["PYTHONPATH"] = tree
    if mode:
        env["NCSNIFFER_REPLAY"] = mode
    run = benchlib.run_measured([NC, "-q", "-c", conf, "-r", capture, "start"], cwd=out, env=env)
    if run.returncode != 0:
        raise benchlib.BenchError(f"{tree} {name}: exit {run.returncode}: {run.stderr[-300:]}")
    return run


def identical(trees: dict[str, str], scratch: str) -> list[list[str]]:
    """Per case: the stats files' size and whether old and new wrote the same bytes."""
    rows = []
    for case in CASES:
        stats = []
        for label, tree in trees.items():
            out = os.path.join(scratch, label, case[0].replace(" ", "-"))
            log(f"identity: {label} {case[0]}")
            replay(tree, case, out)
            stats.append(os.path.join(out, "nc.sniffer.stats"))
        same = filecmp.cmp(*stats, shallow=False)
        rows.append([case[0], f"{os.path.getsize(stats[0]):,}", "identical" if same else "DIFFER"])
    return rows


def timed(trees: dict[str, str], scratch: str, runs: int) -> list[list[str]]:
    """Per timed case and commit: median user+sys and wall seconds over ``runs``."""
    cpu: dict[tuple[str, str], list[float]] = {}
    wall: dict[tuple[str, str], list[float]] = {}
    cases = [c for c in CASES if c[0] in TIMED]
    for r in range(runs):
        for case in cases:
            for label, tree in trees.items():
                log(f"run {r + 1}/{runs}: {label} {case[0]}")
                run = replay(tree, case, os.path.join(scratch, "timed", label))
                cpu.setdefault((case[0], label), []).append(run.user + run.sys)
                wall.setdefault((case[0], label), []).append(run.wall)
    rows = []
    for case in cases:
        old, new = (benchlib.median(cpu[case[0], label]) for label in trees)
        rows.append([case[0]] + [f"{benchlib.median(cpu[case[0], label]):.2f}" for label in trees]
                    + [f"{(new - old) / old * 100:+.1f} %"]
                    + [f"{benchlib.median(wall[case[0], label]):.2f}" for label in trees]
                    + ["; ".join(f"{label} " + " ".join(f"{v:.2f}" for v in cpu[case[0], label])
                                 for label in trees)])
    return rows


def stages(trees: dict[str, str], runs: int) -> list[list[str]]:
    """Per stage and commit: median CPU seconds over ``runs`` interleaved processes."""
    took: dict[tuple[str, str], list[float]] = {}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for r in range(runs):
        for label, tree in trees.items():
            log(f"stages {r + 1}/{runs}: {label}")
            out = subprocess.run([PYTHON, "-c", STAGE_SCRIPT, BENCH_CAPTURE], check=True,
                                 capture_output=True, text=True, cwd=tree,
                                 env={**env, "PYTHONPATH": tree}).stdout.split()
            for stage, value in zip(STAGES, out):
                took.setdefault((stage, label), []).append(float(value))
    rows = []
    for stage in STAGES:
        old, new = (benchlib.median(took[stage, label]) for label in trees)
        rows.append([stage, f"{old:.3f}", f"{new:.3f}", f"{(new - old) / old * 100:+.1f} %"])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--old", default="526ea9f")
    p.add_argument("--new", default="HEAD")
    args = p.parse_args(argv)
    benchlib.ensure_capture(BENCH_CAPTURE)
    scratch = tempfile.mkdtemp(prefix="ncbench-linktable-")
    try:
        trees, shorts = {}, {}
        for label, commit in (("old", args.old), ("new", args.new)):
            trees[label] = os.path.join(scratch, f"tree-{label}")
            shorts[label] = export(commit, trees[label])
        lines = [f"# Link table restructure: old {shorts['old']} against new {shorts['new']}", ""]
        lines += benchlib.machine_lines()
        code = {label: subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%h", commit,
                                       "--", "ncsniffer"], check=True, capture_output=True,
                                      text=True).stdout.strip()
                for label, commit in (("old", args.old), ("new", args.new))}
        lines += [f"- package code (last commit under ncsniffer/): old {code['old']}, "
                  f"new {code['new']}"]
        lines += ["", "## Stats files, old and new (compared byte for byte)", ""]
        lines += benchlib.table(["replay", "bytes", "old vs new"], identical(trees, scratch))
        lines += ["", f"## CPU time of the replay (user+sys s, median of {args.runs}, "
                  "old and new interleaved)", ""]
        lines += benchlib.table(["replay", f"old {shorts['old']}", f"new {shorts['new']}",
                                 "change", "old wall s", "new wall s", "CPU s of each run"],
                                timed(trees, scratch, args.runs), right={1, 2, 3, 4, 5})
        lines += ["", f"## The touched stages in one process (CPU s, median of {args.runs})", ""]
        lines += benchlib.table(["stage", f"old {shorts['old']}", f"new {shorts['new']}",
                                 "change"], stages(trees, args.runs))
        lines += ["", "- stages: importing the package, reading the bench capture's batches "
                  "(pcapfile), decoding them (batch.decode_batch, Ethernet)",
                  f"- bench: `{FILTER}` on bench/work/bench.pcap (1,000,000 packets); "
                  f"match: `{MATCH}`; serial / libpcap: NCSNIFFER_REPLAY",
                  f"- sample: `{SAMPLE_FILTER}` on samples/sample.pcap (the demo's)",
                  f"- load average at end: {benchlib.load_text()}"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    path = os.path.join(benchlib.RESULTS, "linktable.md")
    with open(path, "w") as fh:
        fh.write(text)
    print(text, end="")
    log(f"written {os.path.relpath(path, ROOT)}")
    return 0


if __name__ == "__main__":
    benchlib.run_script(main, "linktable.py")
