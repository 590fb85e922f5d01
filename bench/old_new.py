#!/usr/bin/env python3
"""A commit's replay against this checkout's: the same stats files, and CPU time.

    bench/old_new.py [--runs 5] [--skip-same] COMMIT

COMMIT is unpacked with ``git archive`` into a temporary directory (no
worktree is made); both trees run as ``python -m ncsniffer -r`` with the
project's virtualenv and PYTHONPATH set to the tree, so each imports its own
package.  First every combination of capture (samples/sample.pcap and
bench/work/bench.pcap), replay mode (default, NCSNIFFER_REPLAY=serial,
NCSNIFFER_REPLAY=libpcap) and settings (default, match, max_hosts, both, names
wanted with no server) is replayed by both and the stats files compared byte
for byte (``cmp``), and the summary lines; then
the bench capture is replayed ``--runs`` times by each, old and new
interleaved, default and with match (``--timed``: other settings), and the
median user+sys CPU time reported.  A setting the old code does not know
(``connections``) is a pair: the old side runs without it, so its row is the
cost of what it adds.  Results: bench/results/old-new-*.md (``--name``).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib  # noqa: E402
from benchlib import FILTER, PYTHON, log  # noqa: E402

CAPTURES = {"sample": os.path.join(benchlib.ROOT, "samples", "sample.pcap"),
            "bench": os.path.join(benchlib.WORK, "bench.pcap")}
SAMPLE_BPF = "host 192.0.2.10 or dst host 2001:db8::10"      # samples/demo.conf
MODES = {"default": None, "serial": "serial", "libpcap": "libpcap"}
VARIANTS = {
    "default": {},
    "match": {"match": "xyz", "payload": 54, "snaplen": 120},
    "max_hosts 10000": {"max_hosts": 10000},
    "match + max_hosts 100": {"match": "e", "payload": 20, "snaplen": 200, "max_hosts": 100},
    # names wanted, but no server on loopback's discard port answers the probe
    "dns on, no server": {"resolve": True, "nameserver": "127.0.0.1:9"},
    # issue 13: the flow fields extracted, nothing written differs; old code: default
    "connections": {"old": {}, "new": {"connections": True}},
}
TIMED = ("default", "match")


def side_settings(vname: str, side: str) -> dict:
    """A variant's settings for one side (a pair gives each side its own)."""
    settings = VARIANTS[vname]
    return settings[side] if set(settings) == {"old", "new"} else settings


def unpack(commit: str, into: str) -> str:
    """``git archive COMMIT`` unpacked into ``into``, its C extensions built (if it
    has any: without them the old code would run its numpy twins) and byte-compiled;
    its short hash."""
    archive = subprocess.run(["git", "-C", benchlib.ROOT, "archive", commit],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    if glob.glob(os.path.join(into, "ncsniffer", "*.c")):
        built = subprocess.run([benchlib.PYTHON, "setup.py", "-q", "build_ext", "--inplace"],
                               cwd=into, capture_output=True, text=True)
        if built.returncode != 0:
            raise benchlib.BenchError(f"{commit}: its C extensions do not build:\n"
                                      f"{built.stderr[-2000:]}")
    compile_tree(into)
    return subprocess.run(["git", "-C", benchlib.ROOT, "rev-parse", "--short", commit],
                          check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def old_code(commit: str, prefix: str) -> Iterator[tuple[str, str, str]]:
    """(scratch directory, the old tree in it, its short hash); all removed after."""
    scratch = tempfile.mkdtemp(prefix=prefix)
    try:
        tree = os.path.join(scratch, "old-tree")
        os.makedirs(tree)
        yield scratch, tree, unpack(commit, tree)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def compile_tree(tree: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([PYTHON, "-m", "compileall", "-q", os.path.join(tree, "ncsniffer")],
                   check=True, env=env, stdout=subprocess.DEVNULL)


def write_conf(directory: str, bpf: str, settings: dict) -> str:
    os.makedirs(directory, exist_ok=True)
    conf = os.path.join(directory, "nc.sniffer.conf")
    with open(conf, "w") as fh:
        fh.write(repr({"piddir": directory, "sniffer": directory, "bpf": bpf,
                       "resolve": False, **settings}) + "\n")
    return conf


def replay(tree: str, conf: str, capture: str, mode: str | None) -> benchlib.Run:
    """One replay by ``tree``'s package (the environment chooses the mode)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NCSNIFFER_REPLAY", "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPATH"] = tree
    if mode:
        env["NCSNIFFER_REPLAY"] = mode
    cmd = ["env", "-i", *[f"{k}={v}" for k, v in env.items()], PYTHON, "-m", "ncsniffer",
           "-q", "-c", conf, "-r", capture, "start"]       # run_measured takes no env
    run = benchlib.run_measured(cmd, cwd=tree)
    if run.returncode != 0:
        raise benchlib.BenchError(f"{tree}: exit {run.returncode}: {run.stderr.strip()}")
    return run


def same_outputs(trees: dict[str, str], scratch: str) -> list[list[str]]:
    """Every capture, mode and variant, replayed by both trees: cmp of the stats files."""
    rows = []
    for cname, capture in CAPTURES.items():
        bpf = SAMPLE_BPF if cname == "sample" else FILTER
        for mname, mode in MODES.items():
            for vname in VARIANTS:
                stats, lines = {}, {}
                for side, tree in trees.items():
                    d = os.path.join(scratch, side, cname, mname, vname.replace(" ", "_"))
                    run = replay(tree, write_conf(d, bpf, side_settings(vname, side)),
                                 capture, mode)
                    stats[side] = os.path.join(d, "nc.sniffer.stats")
                    lines[side] = run.stderr.strip().splitlines()[-1]
                same = subprocess.run(["cmp", stats["old"], stats["new"]],
                                      capture_output=True, text=True)
                verdict = "identical" if same.returncode == 0 else same.stdout.strip()
                summary = "identical" if lines["old"] == lines["new"] else "DIFFERENT"
                size = os.path.getsize(stats["new"])
                rows.append([cname, mname, vname, f"{size:,}", verdict, summary])
                log(f"{cname} {mname} {vname}: {verdict}, summary line {summary}")
    return rows


def cpu_times(trees: dict[str, str], scratch: str, runs: int,
              timed: tuple[str, ...] = TIMED) -> list[list[str]]:
    """Median user+sys of ``runs`` interleaved replays of the bench capture."""
    rows = []
    for vname in timed:
        cpu: dict[str, list[float]] = {"old": [], "new": []}
        walls: dict[str, list[float]] = {"old": [], "new": []}
        for i in range(runs):
            for side in (("old", "new") if i % 2 == 0 else ("new", "old")):
                d = os.path.join(scratch, "timed", side, vname.replace(" ", "_"))
                run = replay(trees[side], write_conf(d, FILTER, side_settings(vname, side)),
                             CAPTURES["bench"], None)
                cpu[side].append(run.user + run.sys)
                walls[side].append(run.wall)
                log(f"timed {vname} {side} run {i + 1}: cpu {run.user + run.sys:.2f} s")
        old, new = benchlib.median(cpu["old"]), benchlib.median(cpu["new"])
        rows.append([vname, f"{old:.2f}", f"{new:.2f}", f"{(new - old) / old * 100:+.1f} %",
                     f"{benchlib.median(walls['old']):.2f}", f"{benchlib.median(walls['new']):.2f}",
                     " ".join(f"{x:.2f}" for x in cpu["old"]),
                     " ".join(f"{x:.2f}" for x in cpu["new"])])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("commit", help="the old code (e.g. the branch's start)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per side, default 5")
    p.add_argument("--skip-same", action="store_true", help="only the timing")
    p.add_argument("--timed", default=",".join(TIMED),
                   help=f"settings timed, comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--name", default="old-new", help="results file prefix, default old-new")
    args = p.parse_args(argv)
    timed = tuple(args.timed.split(","))
    if not set(timed) <= set(VARIANTS):
        p.error(f"--timed: unknown settings {', '.join(sorted(set(timed) - set(VARIANTS)))}")
    benchlib.ensure_capture(CAPTURES["bench"])
    with old_code(args.commit, "ncbench-oldnew-") as (scratch, old_tree, short):
        compile_tree(benchlib.ROOT)
        trees = {"old": old_tree, "new": benchlib.ROOT}
        lines = [f"# Old / new replay: {short} against this checkout", ""]
        lines += benchlib.machine_lines()
        lines += [f"- old code: {short} (git archive); new code: this checkout", ""]
        if not args.skip_same:
            rows = same_outputs(trees, scratch)
            lines += ["## Stats files (cmp) and summary lines", ""]
            lines += benchlib.table(["capture", "mode", "settings", "bytes", "cmp",
                                     "summary line"], rows, right={3})
            lines.append("")
        rows = cpu_times(trees, scratch, args.runs, timed)
        lines += [f"## CPU time of the bench capture (user+sys, median of {args.runs}, "
                  "interleaved, default mode)", ""]
        lines += benchlib.table(["settings", "old cpu s", "new cpu s", "change", "old wall s",
                                 "new wall s", "old runs", "new runs"], rows,
                                right={1, 2, 3, 4, 5})
        lines += ["", f"- load average at end: {benchlib.load_text()}"]
        benchlib.write_results(args.name, lines)
    return 0


if __name__ == "__main__":
    benchlib.run_script(main, "bench/old_new.py")
