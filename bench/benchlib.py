"""Shared plumbing of the benchmark scripts: paths, packages, timed runs, tables, results.

Standard library only: the harness measures the installed ``nc.sniffer`` command
and never imports the package it measures.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
WORK = os.path.join(BENCH, "work")
RESULTS = os.path.join(BENCH, "results")
NC = os.path.join(ROOT, ".venv", "bin", "nc.sniffer")
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
FILTER = "host 10.0.0.1 or host 2001:db8::1"

# command -> Debian package that provides it
PACKAGES = {"tcpdump": "tcpdump", "darkstat": "darkstat", "pmacctd": "pmacct",
            "tcpreplay": "tcpreplay", "tcprewrite": "tcpreplay", "ip": "iproute2",
            "strace": "strace"}


class BenchError(Exception):
    """The benchmark could not run."""


def run_script(main, name: str) -> None:
    """Run a bench script's main(); a BenchError is one line on stderr, exit 1."""
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        sys.exit(1)


def ensure_commands(*commands: str) -> None:
    """apt-get install the packages of missing commands (as root, only when missing)."""
    missing = [c for c in commands if not (shutil.which(c) or os.path.exists("/usr/sbin/" + c))]
    if not missing:
        return
    packages = sorted({PACKAGES[c] for c in missing})
    if os.geteuid() != 0:
        raise BenchError(f"missing {', '.join(missing)}: run as root or apt-get install "
                         + " ".join(packages))
    log(f"installing {' '.join(packages)} (missing: {', '.join(missing)})")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # darkstat's postinst asks debconf questions; noninteractive takes the defaults
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
                   check=True, env=env)


def ensure_nc() -> None:
    """The measured command must be installed in the project's virtualenv, its
    modules byte-compiled as a normal install leaves them (an environment with
    PYTHONDONTWRITEBYTECODE would otherwise compile them at every start)."""
    if not os.access(NC, os.X_OK):
        raise BenchError(f"{NC} not found: create the virtualenv and pip install -e . first")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([PYTHON, "-m", "compileall", "-q", os.path.join(ROOT, "ncsniffer")],
                   check=True, env=env, stdout=subprocess.DEVNULL)


def log(message: str) -> None:
    """Progress on stderr, so that stdout carries only the tables."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Run:
    """One finished process: wall clock, CPU (self + reaped children), peak RSS, output."""
    wall: float
    user: float
    sys: float
    maxrss_kb: int
    returncode: int
    stdout: str
    stderr: str
    extra: dict = field(default_factory=dict)


def run_measured(cmd: list[str], timeout: float = 600.0, cwd: str | None = None,
                 env: dict[str, str] | None = None) -> Run:
    """Run ``cmd`` to completion; rusage from wait4 covers the children it reaped."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd,
                                env=env)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from waiting again
        out.seek(0)
        err.seek(0)
        return Run(wall, usage.ru_utime, usage.ru_stime, usage.ru_maxrss, proc.returncode,
                   out.read(), err.read())


def median_run(runs: list[Run]) -> Run:
    """The run with the median wall time (its CPU and RSS belong to that same run)."""
    ordered = sorted(runs, key=lambda r: r.wall)
    return ordered[len(ordered) // 2]


def median(values: list[float]) -> float:
    return statistics.median(values)


def ensure_capture(path: str, *gen_args: str) -> None:
    """Generate a capture with gen_capture.py unless it exists (generation is seeded)."""
    if os.path.exists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    log(f"generating {os.path.relpath(path, ROOT)} ({' '.join(gen_args) or 'defaults'})")
    tmp = path + ".part"
    subprocess.run([sys.executable, os.path.join(BENCH, "gen_capture.py"), tmp, *gen_args],
                   check=True)
    os.replace(tmp, path)


def pcap_count(path: str, bpf: str = "") -> int:
    """Packets of ``path`` that match ``bpf``, counted by tcpdump (the reference count)."""
    out = subprocess.run(["tcpdump", "--count", "-r", path] + ([bpf] if bpf else []),
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def machine_lines() -> list[str]:
    """Who measured where: CPU, cores, kernel, Python, load average."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return [f"- machine: {model}, {os.cpu_count()} cores, Linux {platform.release()}, "
            f"Python {platform.python_version()}",
            f"- measured code: {code_version()}",
            f"- load average at start: {load_text()}"]


def code_version() -> str:
    """HEAD of the checkout and whether ncsniffer/ differs from it (read-only git calls)."""
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        # diff-index does not refresh (write) the index, unlike git status / git diff
        dirty = subprocess.run(["git", "-C", ROOT, "diff-index", "--quiet", "HEAD", "--",
                                "ncsniffer"], capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return f"commit {head}" + (" with uncommitted changes under ncsniffer/" if dirty else "")


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min)"


def table(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> list[str]:
    """A Markdown table; columns in ``right`` are right-aligned."""
    right = right if right is not None else set(range(1, len(header)))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells):
        return "| " + " | ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                         for i, w in enumerate(widths)) + "|"
    return [line(header), sep] + [line(r) for r in rows]


def write_results(kind: str, lines: list[str]) -> str:
    """bench/results/KIND-YYYYMMDD-HHMMSS.md and KIND-latest.md, the report on
    stdout too; returns the dated path."""
    os.makedirs(RESULTS, exist_ok=True)
    text = "\n".join(lines).rstrip() + "\n"
    path = os.path.join(RESULTS, f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.md")
    for target in (path, os.path.join(RESULTS, f"{kind}-latest.md")):
        with open(target, "w") as fh:
            fh.write(text)
    print(text, end="")
    log(f"written {os.path.relpath(path, ROOT)} and {kind}-latest.md")
    return path


def fmt_int(n: float) -> str:
    return f"{int(round(n)):,}"
