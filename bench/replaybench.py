"""Replay benchmark: one capture, the same ``host`` filter, five tools, median of N runs.

    bench/run                    (the usual entry point)
    python3 bench/replaybench.py [--runs 3] [--capture FILE]

Tools: tcpdump (libpcap read floor), darkstat -r (default host table, and with
every host kept), pmacctd print plugin reading the file, nc.sniffer -r with
default settings, with a match string and with connections: True.  Each tool's own packet count is
checked against tcpdump's where the tool reports one.  Then the short capture
(300,000 packets, 20,000 peers; ``--no-short`` skips it): tcpdump, darkstat
keeping every host, nc.sniffer in both modes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib  # noqa: E402
from benchlib import FILTER, NC, Run, fmt_int, log  # noqa: E402

CAPTURE = os.path.join(benchlib.WORK, "bench.pcap")
CONNECTIONS = "nc.sniffer -r (connections)"
# The short capture (issue 16): where start-up weighs; darkstat keeps every host.
SHORT = os.path.join(benchlib.WORK, "short-300k.pcap")
SHORT_ARGS = ("--packets", "300000", "--peers", "20000")
SHORT_TOOLS = ("tcpdump -r -w /dev/null", "darkstat -r, all hosts kept",
               "nc.sniffer -r (default)", "nc.sniffer -r (one process)")
# pmacctd sleeps this long before reading a savefile ("allowing plugins to complete
# their startup"); 0 would mean its built-in 2 s.  Subtracted from its wall time.
PMACCT_DELAY = 1
PMACCT_CONF = """\
daemonize: false
pcap_savefile: {capture}
pcap_savefile_delay: {delay}
pcap_filter: {bpf}
aggregate: src_host, dst_host
plugins: print
print_output: csv
print_output_file: {out}
print_refresh_time: 86400
print_cache_entries: 65537
plugin_pipe_size: 102400000
plugin_buffer_size: 1024000
"""


@dataclass
class Tool:
    """A measured command and how to read its own packet count (None: it reports none)."""
    name: str
    cmd: list[str]
    packets: Callable[[Run, str], int | None]
    startup: float = 0.0          # fixed sleep inside the tool, not spent on packets
    note: str = ""


def _darkstat_packets(run: Run, scratch: str) -> int | None:
    m = re.search(r"Total packets: (\d+)", run.stderr)
    return int(m.group(1)) if m else None


def _pmacct_packets(run: Run, scratch: str) -> int | None:
    path = os.path.join(scratch, "pmacct.csv")
    try:
        with open(path) as fh:
            next(fh)                                    # SRC_IP,DST_IP,PACKETS,BYTES
            total = sum(int(line.split(",")[2]) for line in fh if line.strip())
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    os.unlink(path)
    return total


def _nc_packets(run: Run, scratch: str) -> int | None:
    # "nc.sniffer: FILE: 1000000 packets, 1000000 counted, 0 unmatched, ..."
    m = re.search(r": (\d+) packets, (\d+) counted, (\d+) unmatched", run.stderr)
    if not m:
        return None
    run.extra["counted"] = int(m.group(2))
    run.extra["unmatched"] = int(m.group(3))
    return int(m.group(1))


def tools(capture: str, scratch: str) -> list[Tool]:
    """The measured commands; configuration files are written into ``scratch``."""
    base = {"piddir": scratch, "sniffer": scratch, "bpf": FILTER, "resolve": False}
    conf_default = os.path.join(scratch, "default.conf")
    conf_match = os.path.join(scratch, "match.conf")
    with open(conf_default, "w") as fh:
        fh.write(repr(base) + "\n")
    with open(conf_match, "w") as fh:
        fh.write(repr(dict(base, match="xyz", payload=54, snaplen=120)) + "\n")
    conf_conn = os.path.join(scratch, "connections.conf")
    with open(conf_conn, "w") as fh:
        fh.write(repr(dict(base, connections=True)) + "\n")
    pm_conf = os.path.join(scratch, "pmacctd.conf")
    with open(pm_conf, "w") as fh:
        fh.write(PMACCT_CONF.format(capture=capture, delay=PMACCT_DELAY, bpf=FILTER,
                                    out=os.path.join(scratch, "pmacct.csv")))
    root = os.path.join(scratch, "darkstat-root")
    os.makedirs(root, exist_ok=True)
    darkstat = ["darkstat", "-r", capture, "--no-dns", "--no-daemon", "--chroot", root,
                "-f", FILTER, "--verbose"]
    return [
        Tool("tcpdump -r -w /dev/null", ["tcpdump", "-r", capture, "-w", "/dev/null", FILTER],
             lambda run, s: None, note="libpcap read floor"),
        Tool("darkstat -r", darkstat, _darkstat_packets,
             note="default --hosts-max 1000: keeps at most 1,000 hosts"),
        Tool("darkstat -r, all hosts kept", darkstat + ["--hosts-max", "1000000",
                                                       "--hosts-keep", "1000000"],
             _darkstat_packets, note="same job as nc.sniffer: every peer tracked"),
        Tool("pmacctd print plugin", ["pmacctd", "-f", pm_conf], _pmacct_packets,
             startup=PMACCT_DELAY,
             note=f"src_host,dst_host; wall minus its fixed {PMACCT_DELAY} s savefile delay"),
        Tool("nc.sniffer -r (default)", [NC, "-q", "-c", conf_default, "-r", capture, "start"],
             _nc_packets),
        Tool("nc.sniffer -r (match 'xyz')", [NC, "-q", "-c", conf_match, "-r", capture, "start"],
             _nc_packets, note="match 'xyz', payload 54, snaplen 120"),
        Tool("nc.sniffer -r (one process)", ["env", "NCSNIFFER_REPLAY=serial", NC, "-q", "-c",
                                              conf_default, "-r", capture, "start"],
             _nc_packets, note="NCSNIFFER_REPLAY=serial: no second process"),
        Tool(CONNECTIONS, [NC, "-q", "-c", conf_conn, "-r", capture, "start"], _nc_packets,
             note="connections: True (tracking, K counters; issue 13)"),
    ]


def measure(capture: str, runs: int, short: bool = True) -> list[str]:
    """Run every tool ``runs`` times; the report's Markdown lines."""
    expected = benchlib.pcap_count(capture, FILTER)
    size_mb = os.path.getsize(capture) / 1e6
    lines = ["# Replay benchmark: same capture, same filter", ""]
    lines += benchlib.machine_lines()
    lines += [f"- capture: `{os.path.relpath(capture, benchlib.ROOT)}`, {fmt_int(expected)} "
              f"packets matching `{FILTER}` ({size_mb:.0f} MB); `bench/gen_capture.py` "
              "defaults (seed 1, 50,000 Zipf peers, TCP/UDP/IPv6, one hour)",
              f"- each tool run {runs} times in turn; the row is the run with the median wall time",
              ""]
    scratch = tempfile.mkdtemp(prefix="ncbench-replay-")
    try:
        tool_list = tools(capture, scratch)
        lines += report(tool_list, run_tools(tool_list, runs, scratch), expected)
        if short:
            lines += ["", ""] + measure_short(runs, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    lines += ["", f"- load average at end: {benchlib.load_text()}"]
    return lines


def run_tools(tool_list: list[Tool], runs: int, scratch: str) -> dict[str, list[Run]]:
    """Every tool ``runs`` times, in turn; each run's own packet count read."""
    measured: dict[str, list[Run]] = {}
    for i in range(runs):
        for tool in tool_list:
            log(f"run {i + 1}/{runs}: {tool.name}")
            run = benchlib.run_measured(tool.cmd)
            run.wall -= tool.startup
            if run.returncode != 0:
                raise benchlib.BenchError(f"{tool.name} exited {run.returncode}: "
                                          f"{run.stderr.strip()[-500:]}")
            run.extra["packets"] = tool.packets(run, scratch)
            measured.setdefault(tool.name, []).append(run)
    return measured


def measure_short(runs: int, scratch: str) -> list[str]:
    """The short capture (300,000 packets, 20,000 peers): nc.sniffer against darkstat
    keeping every host, where start-up is a large part of the run (issue 16)."""
    benchlib.ensure_capture(SHORT, *SHORT_ARGS)
    expected = benchlib.pcap_count(SHORT, FILTER)
    tool_list = [t for t in tools(SHORT, scratch) if t.name in SHORT_TOOLS]
    measured = run_tools(tool_list, runs, scratch)
    lines = ["## Short capture", "",
             f"- capture: `{os.path.relpath(SHORT, benchlib.ROOT)}`, {fmt_int(expected)} packets "
             f"matching ({os.path.getsize(SHORT) / 1e6:.0f} MB); `bench/gen_capture.py "
             f"{' '.join(SHORT_ARGS)}`", ""]
    rows, pps = [], {}
    for tool in tool_list:
        med = benchlib.median_run(measured[tool.name])
        pps[tool.name] = expected / med.wall
        counts = {r.extra.get("packets") for r in measured[tool.name]} - {None}
        rows.append([tool.name, fmt_int(pps[tool.name]), f"{med.wall:.2f}",
                     ", ".join(f"{r.wall:.2f}" for r in measured[tool.name]),
                     f"{med.user:.2f}", f"{med.sys:.2f}",
                     "no count" if not counts else ("OK" if counts == {expected} else "MISMATCH")])
    lines += benchlib.table(["tool", "packets/s", "wall s (median)", "wall s (all runs)",
                             "user s", "sys s", "packets"], rows, right={1, 2, 4, 5})
    dark = pps["darkstat -r, all hosts kept"]
    lines += ["", f"- nc.sniffer / darkstat (all hosts kept): default "
              f"{pps['nc.sniffer -r (default)'] / dark:.2f}, one process "
              f"{pps['nc.sniffer -r (one process)'] / dark:.2f} (target ≥ 1.00)"]
    return lines


def report(tool_list: list[Tool], measured: dict[str, list[Run]], expected: int) -> list[str]:
    rows, pps, sanity = [], {}, []
    for tool in tool_list:
        runs = measured[tool.name]
        med = benchlib.median_run(runs)
        pps[tool.name] = expected / med.wall
        walls = ", ".join(f"{r.wall:.2f}" for r in runs)
        rows.append([tool.name, fmt_int(pps[tool.name]), f"{med.wall:.2f}", walls,
                     f"{med.user:.2f}", f"{med.sys:.2f}", fmt_int(med.maxrss_kb / 1024),
                     tool.note])
        counts = {r.extra.get("packets") for r in runs}
        if counts == {None}:
            sanity.append(f"- {tool.name}: reports no count (tcpdump --count: {fmt_int(expected)})")
        else:
            ok = counts == {expected}
            extra = ""
            if "counted" in med.extra:
                extra = (f" ({fmt_int(med.extra['counted'])} counted, "
                         f"{fmt_int(med.extra['unmatched'])} unmatched)")
            sanity.append(f"- {tool.name}: {', '.join(fmt_int(c or 0) for c in sorted(counts, key=str))}"
                          f" packets{extra} — {'OK' if ok else 'MISMATCH'}")
    lines = benchlib.table(["tool", "packets/s", "wall s (median)", "wall s (all runs)",
                            "user s", "sys s", "peak RSS MB", "note"], rows, right={1, 2, 4, 5, 6})
    lines += ["", "CPU and peak RSS come from wait4() of the median run; they include the "
              "tool's child processes (pmacctd's plugin, nc.sniffer's reading process), peak RSS is "
              "the largest single process. "
              "nc.sniffer maps the capture file, so its peak RSS includes the file's pages.", ""]
    ours = [pps["nc.sniffer -r (default)"], pps["nc.sniffer -r (match 'xyz')"],
            pps["nc.sniffer -r (one process)"], pps[CONNECTIONS]]
    ratio_rows = []
    for other in ("darkstat -r", "darkstat -r, all hosts kept", "pmacctd print plugin"):
        ratio_rows.append([f"nc.sniffer / {other}"] + [f"{x / pps[other]:.2f}" for x in ours])
    lines += ["## Ratios (packets/s; ≥ 1.00 means nc.sniffer is faster)", ""]
    lines += benchlib.table(["", "default", "match 'xyz'", "one process", "connections"],
                            ratio_rows)
    lines += ["", "## Sanity: packets each tool reports", ""] + sanity
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--capture", default=CAPTURE)
    p.add_argument("--no-short", action="store_true", help="skip the short capture's table")
    args = p.parse_args(argv)
    benchlib.ensure_nc()
    benchlib.ensure_commands("tcpdump", "darkstat", "pmacctd")
    if args.capture == CAPTURE:
        benchlib.ensure_capture(CAPTURE)
    lines = measure(args.capture, args.runs, short=not args.no_short)
    benchlib.write_results("replay", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
