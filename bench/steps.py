#!/usr/bin/env python3
"""The replay of the benchmark capture at each step of a series of commits.

    bench/steps.py [--runs 3] [--variants default,match] [COMMIT ...]

Each commit is checked out into a temporary git worktree and byte-compiled;
its ``python -m ncsniffer -r`` (the project's virtualenv, run in that
checkout so that its package is imported) replays bench/work/bench.pcap with
each variant of the settings (default and match unless told), and darkstat
runs in the same round for reference.  The rows give median wall times, so
each step's before and after are the rows above and below it.  Results:
bench/results/steps-*.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib  # noqa: E402
from benchlib import FILTER, PYTHON, log  # noqa: E402

CAPTURE = os.path.join(benchlib.WORK, "bench.pcap")
# issue 7's steps: the start, then each commit that changed the replay's speed
VARIANTS = {                       # settings over the bench's bpf, resolve off
    "default": {},
    "match": {"match": "xyz", "payload": 54, "snaplen": 120},
    "max_hosts 100000": {"max_hosts": 100000},
    "max_hosts 10000": {"max_hosts": 10000},       # about 180,000 evictions
    "dns on": {"resolve": True, "nameserver": "127.0.0.1"},   # no server answers there
}
STEPS = ["5ed50c4", "843b01d", "81b642a", "f6eff4d", "45843b1", "0538130", "aaedf70",
         "527c0fd", "50a94b4", "14e4d4e", "b03cd35", "54de37a", "HEAD"]


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", benchlib.ROOT, *args], check=True,
                          capture_output=True, text=True).stdout.strip()


def checkout(commit: str, into: str) -> str:
    """A byte-compiled worktree of ``commit``; returns its short hash."""
    git("worktree", "add", "--detach", "-f", into, commit)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([PYTHON, "-m", "compileall", "-q", os.path.join(into, "ncsniffer")],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return git("-C", into, "rev-parse", "--short", "HEAD")


def measure(commits: list[str], runs: int, variants: list[str]) -> list[str]:
    scratch = tempfile.mkdtemp(prefix="ncbench-steps-")
    trees: list[str] = []
    try:
        confs = {}
        for name in variants:
            extra = VARIANTS[name]
            confs[name] = os.path.join(scratch, name.replace(" ", "-") + ".conf")
            with open(confs[name], "w") as fh:
                fh.write(repr({"piddir": scratch, "sniffer": scratch, "bpf": FILTER,
                               "resolve": False, **extra}) + "\n")
        shorts = []
        for i, commit in enumerate(commits):
            trees.append(os.path.join(scratch, f"tree{i}"))
            shorts.append(checkout(commit, trees[-1]))
        root = os.path.join(scratch, "darkstat-root")
        os.makedirs(root)
        darkstat = ["darkstat", "-r", CAPTURE, "--no-dns", "--no-daemon", "--chroot", root,
                    "-f", FILTER]
        walls: dict[tuple[str, str], list[float]] = {}
        for r in range(runs):
            for tree, short in zip(trees, shorts):
                for name, conf in confs.items():
                    log(f"run {r + 1}/{runs}: {short} {name}")
                    # -m puts the working directory first on sys.path: the checkout's package
                    run = benchlib.run_measured([PYTHON, "-m", "ncsniffer", "-q", "-c", conf,
                                                 "-r", CAPTURE, "start"], cwd=tree)
                    if run.returncode != 0:
                        raise benchlib.BenchError(f"{short} exited {run.returncode}: "
                                                  f"{run.stderr.strip()[-300:]}")
                    walls.setdefault((short, name), []).append(run.wall)
                walls.setdefault(("darkstat", "-"), []).append(
                    benchlib.run_measured(darkstat).wall)
    finally:
        for tree in trees:
            subprocess.run(["git", "-C", benchlib.ROOT, "worktree", "remove", "--force", tree],
                           capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    rows = []
    for short in shorts:
        subject = git("log", "-1", "--format=%s", short)[:70]
        rows.append([short] + [f"{benchlib.median(walls[short, v]):.2f}" for v in variants]
                    + [subject])
    lines = ["# Replay time at each step (bench/work/bench.pcap, 1,000,000 packets)", ""]
    lines += benchlib.machine_lines()
    lines += [f"- each commit run {runs} times in rounds, darkstat once a round; medians", ""]
    lines += benchlib.table(["commit"] + [f"{v} s" for v in variants] + ["change"], rows,
                            right=set(range(1, len(variants) + 1)))
    lines += [""] + [f"- {v}: `{VARIANTS[v] or 'the defaults'}`" for v in variants]
    dark = walls["darkstat", "-"]
    lines += ["", f"darkstat -r in the same rounds: median {benchlib.median(dark):.2f} s "
              f"(runs {', '.join(f'{w:.2f}' for w in dark)})",
              "", f"- load average at end: {benchlib.load_text()}"]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--variants", default="default,match",
                   help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("commits", nargs="*", default=STEPS)
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    if not set(variants) <= set(VARIANTS):
        raise benchlib.BenchError(f"unknown variant in {args.variants!r}")
    benchlib.ensure_commands("darkstat")
    benchlib.ensure_capture(CAPTURE)
    benchlib.write_results("steps", measure(args.commits, args.runs, variants))
    return 0


if __name__ == "__main__":
    benchlib.run_script(main, "steps.py")
