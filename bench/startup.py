#!/usr/bin/env python3
"""Start-up cost of the short commands (issue 16): wall time, median of N runs.

    python3 bench/startup.py [--runs 11] [--name startup] [--old COMMIT]

Measured, each in turn, N times: the interpreter alone (``python -c pass``, the
floor), ``nc.sniffer -r EMPTY.pcap start`` (a capture with no packets),
``nc.sniffer status`` (no daemon running), ``nc.sniffer.cgi`` serving a cached
page (the cache younger than ``refresh``, so no dump request).  Every command's
exit code and output are checked.  Besides the time,
the modules each command imported (``-X importtime`` run once), whether numpy
was among them, and the costliest imports the program itself made (where the
start-up goes).  With ``--old COMMIT`` the same commands also run from that
commit's tree and from this checkout's, each as ``python scripts/PROGRAM`` with
PYTHONPATH set to the tree (unpacked as ``bench/old_new.py`` does): the code's
own before and after, in one run.  Writes bench/results/startup-*.md.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib  # noqa: E402
import old_new  # noqa: E402
from benchlib import NC, PYTHON, fmt_int, log  # noqa: E402

CGI = os.path.join(os.path.dirname(NC), "nc.sniffer.cgi")
HEAVIEST = 6          # imports listed per command
IMPORT_RUNS = 5       # -X importtime runs per command: each module's least time
TARGETS = {"nc.sniffer -r EMPTY.pcap start": 0.10, "nc.sniffer status": 0.08,
           "nc.sniffer.cgi (cached page)": 0.08}


def scratch_files(scratch: str) -> dict[str, str]:
    """An empty capture, a daemon configuration, a web configuration with a fresh cache."""
    paths = {k: os.path.join(scratch, k) for k in ("empty.pcap", "nc.conf", "cgi.conf")}
    with open(paths["empty.pcap"], "wb") as fh:       # the global header, no packet
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    with open(paths["nc.conf"], "w") as fh:
        fh.write(repr({"piddir": scratch, "sniffer": scratch, "bpf": "host 10.0.0.1",
                       "resolve": False}) + "\n")
    open(os.path.join(scratch, "stats"), "w").close()
    with open(os.path.join(scratch, "cache.0"), "w") as fh:
        fh.write("the cached report\n")
    with open(paths["cgi.conf"], "w") as fh:
        fh.write(repr({"stats": os.path.join(scratch, "stats"),
                       "cache": os.path.join(scratch, "cache"), "refresh": 86400}) + "\n")
    return paths


def commands(paths: dict[str, str], nc: list[str] = [NC], cgi: list[str] = [CGI],
             suffix: str = "") -> list[tuple[str, list[str], int, str]]:
    """(row, command, expected exit code, text its output must contain)."""
    conf = paths["nc.conf"]
    return [
        ("nc.sniffer -r EMPTY.pcap start" + suffix, nc + ["-q", "-c", conf, "-r",
                                                          paths["empty.pcap"], "start"],
         0, "0 packets, 0 counted"),
        ("nc.sniffer status" + suffix, nc + ["-c", conf, "status"], 3, "not running"),
        ("nc.sniffer.cgi (cached page)" + suffix, cgi + ["-c", paths["cgi.conf"], "0"], 0,
         "the cached report"),
    ]


def tree_commands(paths: dict[str, str], tree: str, label: str) -> list:
    """The commands from ``tree``'s own scripts (PYTHONPATH: the tree, set by run)."""
    scripts = os.path.join(tree, "scripts")
    return [(row, ["env", f"PYTHONPATH={tree}"] + cmd, code, text) for row, cmd, code, text in
            commands(paths, [PYTHON, os.path.join(scripts, "nc.sniffer")],
                     [PYTHON, os.path.join(scripts, "nc.sniffer.cgi")], f" ({label})")]


def importtime(cmd: list[str]) -> list[tuple[int, int, str]]:
    """``cmd``'s imports in ``-X importtime`` order: (depth, cumulative µs, module)."""
    env = {}
    if cmd[0] == "env":
        env, cmd = dict([cmd[1].split("=", 1)]), cmd[2:]
    if cmd[0] != PYTHON:
        cmd = [PYTHON] + cmd
    err = subprocess.run([cmd[0], "-X", "importtime"] + cmd[1:], capture_output=True,
                         text=True, stdin=subprocess.DEVNULL,
                         env=dict(os.environ, **env)).stderr
    found = []
    for line in err.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|", 2)
        if cumulative.strip().isdigit():                    # not the header line
            found.append(((len(name) - len(name.lstrip())) // 2, int(cumulative),
                          name.strip()))
    return found


def least_times(cmd: list[str], runs: int = IMPORT_RUNS) -> list[tuple[int, int, str]]:
    """``importtime`` of ``cmd``, each module's time the least of ``runs`` (the
    machine is shared: one run's clock catches the neighbours)."""
    first, *more = [importtime(cmd) for _ in range(runs)]
    least = {name: us for _, us, name in first}
    for imports in more:
        for _, us, name in imports:
            least[name] = min(least.get(name, us), us)
    return [(depth, least[name], name) for depth, _, name in first]


def heaviest(imports: list[tuple[int, int, str]], interpreter: set[str],
             most: int = HEAVIEST) -> list[str]:
    """The costliest modules imported by the program itself (the script or one of
    ours, not by another library nor by the interpreter's start, ``interpreter``),
    each with everything it brought: where a short command's time goes."""
    parents: list[str] = []
    own = []
    for depth, cumulative, name in reversed(imports):   # a parent, then its imports
        del parents[depth:]
        parent = parents[-1] if parents else ""
        parents.append(name)
        if (not name.startswith("ncsniffer") and name not in interpreter
                and (not parent or parent.startswith("ncsniffer"))):
            own.append((cumulative, name))
    return [f"{name} {us / 1000:.1f}" for us, name in sorted(own, reverse=True)[:most]]

def measure(runs: int, old: str | None = None) -> list[str]:
    lines = ["# Start-up: wall time of the short commands", ""]
    lines += benchlib.machine_lines()
    lines += [f"- each command run {runs} times in turn; the median wall time "
              "(fork/exec to exit, `wait4`)", ""]
    scratch = tempfile.mkdtemp(prefix="ncbench-startup-")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    try:
        paths = scratch_files(scratch)
        cmds = [("python -c pass (floor)", [PYTHON, "-c", "pass"], 0, "")] + commands(paths)
        if old:
            tree = os.path.join(scratch, "old-tree")
            os.makedirs(tree)
            short = old_new.unpack(old, tree)
            cmds += tree_commands(paths, tree, f"old code, {short}")
            cmds += tree_commands(paths, benchlib.ROOT, "new code")
        walls: dict[str, list[float]] = {}
        cpus: dict[str, list[float]] = {}
        for i in range(runs):
            for name, cmd, code, text in cmds:
                run = benchlib.run_measured(cmd, timeout=30, env=env)
                if run.returncode != code or text not in run.stdout + run.stderr:
                    raise benchlib.BenchError(f"{name}: exit {run.returncode}, "
                                              f"{(run.stdout + run.stderr).strip()[-300:]}")
                walls.setdefault(name, []).append(run.wall)
                cpus.setdefault(name, []).append(run.user + run.sys)
            log(f"run {i + 1}/{runs} done")
        rows, costs = [], []
        interpreter = {m for _, _, m in importtime(cmds[0][1])}      # the floor's
        for name, cmd, _, _ in cmds:
            imports = least_times(cmd)
            count, numpy = len(imports), any(m == "numpy" for _, _, m in imports)
            if cmd != cmds[0][1]:
                costs.append([name, ", ".join(heaviest(imports, interpreter))])
            ws = sorted(walls[name])
            target = TARGETS.get(name)
            rows.append([name, f"{benchlib.median(ws):.3f}", f"{ws[0]:.3f}", f"{ws[-1]:.3f}",
                         f"{benchlib.median(cpus[name]):.3f}",
                         f"≤ {target:.2f}" if target else "", fmt_int(count),
                         "yes" if numpy else "no"])
        lines += benchlib.table(["command", "wall s (median)", "min", "max", "CPU s (median)",
                                 "target (wall)", "modules imported", "numpy"], rows,
                                right={1, 2, 3, 4, 6})
        lines += ["", "CPU is user + sys of the process (`wait4`): on a loaded machine the "
                  "wall time's median mostly measures the queue for a core, the minimum and "
                  "the CPU time the command itself.", "",
                  f"Where the start-up goes: the {HEAVIEST} costliest imports of each command "
                  "made by the script or an ncsniffer module, with what they import in turn "
                  "(a module several import counts where it came first, e.g. `re` under `argparse` "
                  f"or `typing`); ms, `-X importtime`, the least of {IMPORT_RUNS} "
                  "runs (its clock slows the imports somewhat)", ""]
        lines += benchlib.table(["command", "heaviest imports (ms)"], costs, right=set())
    finally:
        subprocess.run(["rm", "-rf", scratch], check=False)
    lines += ["", f"- load average at end: {benchlib.load_text()}"]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=11)
    p.add_argument("--name", default="startup", help="results file name (default startup)")
    p.add_argument("--old", metavar="COMMIT", help="also the code of COMMIT and this code, "
                   "from their trees")
    args = p.parse_args(argv)
    benchlib.ensure_nc()
    benchlib.write_results(args.name, measure(args.runs, args.old))
    return 0


if __name__ == "__main__":
    benchlib.run_script(main, "bench/startup.py")
