#!/usr/bin/env python3
"""A commit's live daemon against this checkout's, on lo, with the same packets.

    bench/old_new_live.py COMMIT

Each tree (COMMIT unpacked with ``git archive``; this checkout) runs a real
daemon (``python -m ncsniffer start`` with PYTHONPATH set to the tree) on lo,
filter ``host 127.0.0.1 and udp port P``; the same packets (raw UDP from
127.x sources to 127.0.0.1, bounded in count) are sent to each, then ``dump``
and ``stop``.  The records must agree in B C N R T W and in E - S (the times
themselves differ: the runs are seconds apart), with and without max_hosts.
Loopback only; every daemon is stopped even on failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.dirname(BENCH))

import benchlib  # noqa: E402
from benchlib import PYTHON, log  # noqa: E402
from old_new import old_code  # noqa: E402
from tests.conftest import plain_read  # noqa: E402
from tests.daemonutil import free_port, mtime_ns, wait_for  # noqa: E402
from tests.netutil import RawSender, loopback_source  # noqa: E402

SOURCES = 300
PACKETS = 3000
VARIANTS = {"default": {}, "max_hosts 100": {"max_hosts": 100}}


def cli(tree: str, conf: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "NCSNIFFER_REPLAY"}
    env["PYTHONPATH"] = tree
    return subprocess.run([PYTHON, "-m", "ncsniffer", "-c", conf, *args], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=60)


def run_daemon(tree: str, directory: str, settings: dict) -> dict:
    """Start, send the packets, dump, stop; the dumped records."""
    os.makedirs(directory)
    dport = free_port()
    conf = os.path.join(directory, "nc.sniffer.conf")
    with open(conf, "w") as fh:
        fh.write(repr({"piddir": directory, "sniffer": directory, "resolve": False,
                       "bpf": f"host 127.0.0.1 and udp port {dport}", **settings}) + "\n")
    stats = os.path.join(directory, "nc.sniffer.stats")
    started = cli(tree, conf, "start")
    if started.returncode != 0:
        raise benchlib.BenchError(f"{tree}: start: {started.stderr.strip()}")
    sender = RawSender()
    try:
        for i in range(PACKETS):
            sender.send(loopback_source(i * 7919 % SOURCES), dport, b"p" * (i % 97))
        time.sleep(0.5)
        before = mtime_ns(stats)
        dumped = cli(tree, conf, "dump")
        if dumped.returncode != 0:
            raise benchlib.BenchError(f"{tree}: dump: {dumped.stderr.strip()}")
        wait_for(lambda: mtime_ns(stats) > before)
        return plain_read(stats)[1]
    finally:
        sender.close()
        cli(tree, conf, "stop")


def compare(old: dict, new: dict) -> str:
    if set(old) != set(new):
        return f"DIFFERENT hosts: {len(old)} / {len(new)}"
    for ip in old:
        a, b = old[ip], new[ip]
        if [a[k] for k in "BCNRTW"] != [b[k] for k in "BCNRTW"] or \
                a["E"] - a["S"] != b["E"] - b["S"]:
            return f"DIFFERENT at {ip}: {a} / {b}"
    return "same B C N R T W and E - S"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 1
    with old_code(sys.argv[1], "ncbench-oldnew-live-") as (scratch, old_tree, short):
        rows = []
        for vname, settings in VARIANTS.items():
            got = {side: run_daemon(tree, os.path.join(scratch, side, vname.replace(" ", "_")),
                                    settings)
                   for side, tree in (("old", old_tree), ("new", benchlib.ROOT))}
            verdict = compare(got["old"], got["new"])
            log(f"{vname}: {len(got['new'])} hosts, {verdict}")
            rows.append([vname, str(len(got["old"])), str(len(got["new"])),
                         str(sum(r["C"] for r in got["new"].values())), verdict])
        lines = [f"# Old / new live daemon on lo: {short} against this checkout", ""]
        lines += benchlib.machine_lines()
        lines += [f"- {PACKETS} UDP packets from {SOURCES} loopback sources to each daemon", ""]
        lines += benchlib.table(["settings", "old hosts", "new hosts", "new packets counted",
                                 "records"], rows, right={1, 2, 3})
        benchlib.write_results("old-new-live", lines)
    return 0


if __name__ == "__main__":
    benchlib.run_script(main, "bench/old_new_live.py")
