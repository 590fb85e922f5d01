#!/usr/bin/env python3
"""ClickHouse export benchmark: the CPU of a replay with and without the export (issue 14).

    .venv/bin/python bench/clickhouse_replay.py [--runs 3] [--interval 60] [--connections]

A clickhouse-server on loopback (tests/chserver.py: its own config, ports and data in a
temporary directory, killed at the end), the bench capture (bench/gen_capture.py defaults,
generated once), then ``nc.sniffer -r`` without and with ``clickhouse`` in turn, --runs
times each; the CPU (user + sys of the process, its export thread included) from wait4.
The server's rows of the last run are checked: every counted packet once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.dirname(BENCH))

import benchlib  # noqa: E402

CAPTURE = os.path.join(BENCH, "work", "bench.pcap")
BPF = "host 10.0.0.1 or host 2001:db8::1"


def write_conf(directory: str, **extra) -> str:
    path = os.path.join(directory, "bench.conf")
    conf = {"piddir": directory, "sniffer": directory, "bpf": BPF, "resolve": False, **extra}
    with open(path, "w") as fh:
        fh.write(repr(conf) + "\n")
    return path


def measure(runs: int, interval: int, connections: bool) -> list[str]:
    from tests.chserver import Server
    benchlib.ensure_capture(CAPTURE)
    lines = ["# Replay of bench/work/bench.pcap with and without the ClickHouse export (issue 14)",
             "", *benchlib.machine_lines(),
             "- server: Debian's clickhouse-server on loopback (tests/chserver.py), "
             "clickhouse-driver; bpf `" + BPF + "`",
             f"- CPU: user+sys of the `nc.sniffer -r` process (the export thread included), "
             f"{runs} runs each, interleaved" + (", connections: True in both" if connections
                                                 else ""), ""]
    with tempfile.TemporaryDirectory(prefix="ncs-chbench-") as tmp:
        server = Server(tmp)
        server.start()
        try:
            base = {"connections": True} if connections else {}
            settings = {"off": write_conf(_dir(tmp, "off"), **base),
                        f"clickhouse, interval {interval}": write_conf(
                            _dir(tmp, "on"), **base, clickhouse={
                                "url": server.url, "interval": interval, "sniffer": "bench"})}
            results: dict[str, list] = {name: [] for name in settings}
            for i in range(runs):
                for name, conf in settings.items():
                    benchlib.log(f"run {i + 1}/{runs}: {name}")
                    run = benchlib.run_measured([benchlib.NC, "-c", conf, "-r", CAPTURE, "start"])
                    if run.returncode != 0:
                        raise benchlib.BenchError(f"{name}: exit {run.returncode}: {run.stderr}")
                    results[name].append(run)
            rows = [[name, f"{benchlib.median([r.user + r.sys for r in got]):.2f}",
                     " ".join(f"{r.user + r.sys:.2f}" for r in got),
                     got[-1].stderr.strip().splitlines()[-1].split(": ", 2)[-1]]
                    for name, got in results.items()]
            lines += benchlib.table(["settings", "median cpu s", "runs", "last line"], rows,
                                    right={1})
            (total, peers), = server.query(
                "SELECT sum(packets), uniqExact(peer) FROM ncs.ncsniffer_traffic FINAL "
                "WHERE batch LIKE '%/' || (SELECT any(substring(batch, -8)) FROM "
                "ncs.ncsniffer_traffic WHERE start = (SELECT max(start) FROM "
                "ncs.ncsniffer_traffic))")
            lines += ["", f"On the server (`FINAL`, the last run's rows): sum(packets) = "
                      f"{benchlib.fmt_int(total)}, {benchlib.fmt_int(peers)} distinct peers."]
        finally:
            server.kill()
    lines += [f"- load average at end: {benchlib.load_text()}"]
    return lines


def _dir(parent: str, name: str) -> str:
    path = os.path.join(parent, name)
    os.mkdir(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--interval", type=int, default=60)
    p.add_argument("--connections", action="store_true", help="connections: True in both")
    p.add_argument("--name", default="clickhouse-replay", help="results file name")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run the finally blocks
    benchlib.ensure_nc()
    benchlib.write_results(args.name, measure(args.runs, args.interval, args.connections))
    return 0


if __name__ == "__main__":
    benchlib.run_script(main, "clickhouse_replay.py")
