#!/usr/bin/env python3
"""Where the wall time of ``nc.sniffer -r`` goes, phase by phase (issues 13 and 16).

    bench/phases.py [--runs 5] [--capture bench/work/bench.pcap]

Each run is traced from outside by ``strace -f -ttt`` (seccomp-filtered to a few
system calls; nothing in the package is changed or imported) and cut at:

- start-up: from ``execve`` to the counting process's first read of the pipe
  from the reading process (interpreter, imports, configuration, the file
  opened; the reading process is forked before it, and with the head start
  (``ncsniffer.headstart``) at its beginning, before numpy); tracing slows it
  most (every import's reads), so the table gives the untraced wall time less
  the other phases;
- first batch: from there to the end of the first batch's read (with the head
  start the read after READY's, its header: the batch is in memory both map):
  the wait for the first batch;
- batches: from there to the creation of the stats file's temporary file (every
  batch counted; the end of the capture);
- dump: from there to its rename over the stats file (formatting, write, fsync);
- exit: from the rename to the process's end.

Then ``counting busy`` is the untraced wall time less the counting process's
waits for the reading one (the first batch, and its blocked reads of the pipe
after it): the lowest wall time the two-process replay can reach while the
counting process's own work stays what it is, however fast the reading.  Beside
it, the untraced wall time of tcpdump -r -w /dev/null and darkstat, each run once
before each of ours (in turn: the machine's speed drifts within minutes), and of
the interpreter alone and importing numpy (the start-up's share that is not
ncsniffer's).  Default settings and ``connections: True``; every nc.sniffer run in
the two-process mode (``NCSNIFFER_REPLAY=batch``, whatever the load).  Results:
bench/results/phases-*.md.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib  # noqa: E402
import replaybench  # noqa: E402
from benchlib import FILTER, NC, log  # noqa: E402

SYSCALLS = "execve,clone,clone3,pipe2,read,openat,rename,exit_group"
PHASES = ("start-up", "first batch", "batches", "dump", "exit")
CONFIGS = {"default": {}, "connections: True": {"connections": True}}
# the start-up's share that is not ncsniffer's: the interpreter, and numpy's import
PYTHON_ALONE = {"the interpreter alone": "pass", "importing numpy": "import numpy"}
LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
DURATION = re.compile(r"<(\d+\.\d+)>$")
RETURNED = re.compile(r"\) = (\d+) <")
# the head start's messages (READY, then each batch's header; the batches cross in
# shared memory): ncsniffer.headstart.HEAD's size, a byte and ten 8-byte counts
HEADSTART_MESSAGE = 81


def _env() -> dict[str, str]:
    """The measured commands' environment: bytecode kept, OpenBLAS on one thread (as
    ncsniffer sets it), the two-process path whatever the load."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "NCSNIFFER_REPLAY")}
    env.update(NCSNIFFER_REPLAY="batch", OPENBLAS_NUM_THREADS="1")
    return env


def trace(conf: str, capture: str, scratch: str) -> list[tuple[int, float, float, str]]:
    """(pid, entry time, seconds inside, call text) of every traced call of one replay;
    a call strace shows in two pieces (unfinished, resumed) is joined."""
    out = os.path.join(scratch, "strace.txt")
    env = _env()
    run = subprocess.run(["strace", "--seccomp-bpf", "-f", "-ttt", "-T", "-e",
                          f"trace={SYSCALLS}", "-o", out, NC, "-q", "-c", conf, "-r", capture,
                          "start"], env=env, capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise benchlib.BenchError(f"traced replay failed: {run.stderr.strip()[-300:]}")
    calls, pending = [], {}
    with open(out) as fh:
        for line in fh:
            m = LINE.match(line)
            if not m:
                continue
            pid, when, text = int(m.group(1)), float(m.group(2)), m.group(3).rstrip()
            if text.endswith("<unfinished ...>"):
                pending[pid] = (when, text[:-len("<unfinished ...>")])
                continue
            if "resumed>" in text and pid in pending:
                when, head = pending.pop(pid)
                text = head + text.split("resumed>", 1)[1]
            d = DURATION.search(text)
            calls.append((pid, when, float(d.group(1)) if d else 0.0, text))
    return calls


def _reads_of(mine: list, opened: float, pipe: str) -> list[tuple[float, float, int]]:
    """(entry time, seconds inside, bytes) of the counting process's reads of the read
    end of the pipe ``pipe`` made at ``opened`` (none: not the reading process's pipe,
    e.g. the head start's ring's, through which slots go back)."""
    rfd = int(re.match(r"pipe2\(\[(\d+),", pipe).group(1))
    return [(t, d, int(RETURNED.search(text).group(1))) for t, d, text in mine
            if t > opened and text.startswith(f"read({rfd},") and RETURNED.search(text)]


def phases(calls: list[tuple[int, float, float, str]]) -> tuple[dict[str, float], float]:
    """Seconds per phase, and the counting process's time blocked on the pipe after
    its first batch."""
    parent, t0 = calls[0][0], calls[0][1]
    mine = [(t, d, text) for pid, t, d, text in calls if pid == parent]
    reads = next(filter(None, (_reads_of(mine, t, text) for t, d, text in mine
                               if text.startswith("pipe2("))))
    ready = reads[0][0]
    at = 1 if reads[0][2] == HEADSTART_MESSAGE else 0     # after the head start's READY
    first = reads[at][0] + reads[at][1]
    tmp = next(t for t, d, text in mine if text.startswith("openat(") and '.tmp"' in text)
    rename = next(t + d for t, d, text in mine if text.startswith("rename("))
    end = max(t + d for t, d, _ in mine)
    cut = {"start-up": (t0, ready), "first batch": (ready, first), "batches": (first, tmp),
           "dump": (tmp, rename), "exit": (rename, end)}
    blocked = sum(d for t, d, n in reads[at + 1:] if t < tmp)
    return {name: b - a for name, (a, b) in cut.items()}, blocked


def measure(config: str, extra: dict, capture: str, scratch: str, runs: int,
            refs: dict) -> dict:
    """The phases of ``runs`` replays with ``extra`` settings; before each, every tool of
    ``refs`` runs once (their medians under "refs"): in turn, so that the ratios see the
    same minutes of a machine whose speed drifts."""
    conf = os.path.join(scratch, "nc.conf")
    base = {"piddir": scratch, "sniffer": scratch, "bpf": FILTER, "resolve": False}
    with open(conf, "w") as fh:
        fh.write(repr(dict(base, **extra)) + "\n")
    per: dict[str, list[float]] = {name: [] for name in PHASES}
    totals, busy, walls = [], [], []
    ref_walls: dict[str, list[float]] = {name: [] for name in refs}
    for i in range(runs):
        log(f"{config}: run {i + 1}/{runs}")
        for name, tool in refs.items():
            ref_walls[name].append(benchlib.run_measured(tool.cmd).wall)
        untraced = benchlib.run_measured([NC, "-q", "-c", conf, "-r", capture, "start"],
                                         env=_env())
        walls.append(untraced.wall)
        cut, blocked = phases(trace(conf, capture, scratch))
        for name, seconds in cut.items():
            per[name].append(seconds)
        totals.append(sum(cut.values()))
        busy.append(sum(cut.values()) - cut["first batch"] - blocked)
    wall = statistics.median(walls)
    med = {k: statistics.median(v) for k, v in per.items()}
    # tracing slows the start-up most (every import's reads): it is what the
    # untraced wall leaves once the later phases, traced at little cost, are taken
    rest = statistics.median(t - s for t, s in zip(totals, per["start-up"]))
    med["start-up"] = wall - rest
    return {"phases": med, "traced": statistics.median(totals),
            "busy": wall - statistics.median(t - b for t, b in zip(totals, busy)), "wall": wall,
            "refs": {name: statistics.median(w) for name, w in ref_walls.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--capture", default=replaybench.CAPTURE)
    args = p.parse_args(argv)
    benchlib.ensure_commands("tcpdump", "darkstat", "strace")
    benchlib.ensure_nc()
    benchlib.ensure_capture(args.capture)
    lines = ["# Where the replay's wall time goes", "", *benchlib.machine_lines(),
             f"- capture: `{os.path.relpath(args.capture, benchlib.ROOT)}`, filter `{FILTER}`; "
             f"median of {args.runs} runs; phases from `strace -f -ttt` (see bench/phases.py)", ""]
    with tempfile.TemporaryDirectory(prefix="ncs-phases-") as scratch:
        refs = {t.name: t for t in replaybench.tools(args.capture, scratch)
                if t.name in ("tcpdump -r -w /dev/null", "darkstat -r")}
        python = {what: statistics.median(benchlib.run_measured(
                      [benchlib.PYTHON, "-c", code], env=_env()).wall for _ in range(args.runs))
                  for what, code in PYTHON_ALONE.items()}
        results = {c: measure(c, extra, args.capture, scratch, args.runs, refs)
                   for c, extra in CONFIGS.items()}
    header = ["phase (s)", *results]
    rows = [[name, *(f"{r['phases'][name]:.3f}" for r in results.values())] for name in PHASES]
    rows += [["total, traced", *(f"{r['traced']:.3f}" for r in results.values())],
             ["counting busy (the floor)", *(f"{r['busy']:.3f}" for r in results.values())],
             ["wall, untraced", *(f"{r['wall']:.3f}" for r in results.values())]]
    lines += benchlib.table(header, rows, right=set(range(1, len(header))))
    lines += [""] + [f"Untraced, in turn with {config}: " + ", ".join(
        f"{name} {w:.3f} s" for name, w in r["refs"].items()) for config, r in results.items()]
    lines += ["Untraced: " + ", ".join(f"{what} {w:.3f} s" for what, w in python.items()), ""]
    for config, r in results.items():
        for name, w in r["refs"].items():
            lines.append(f"- {config}: {name} / nc.sniffer wall = {w / r['wall']:.2f}; "
                         f"at the floor it would be {w / r['busy']:.2f}")
    lines += ["", f"- load average at end: {benchlib.load_text()}"]
    benchlib.write_results("phases", lines)
    return 0


if __name__ == "__main__":
    benchlib.run_script(main, "bench/phases.py")
