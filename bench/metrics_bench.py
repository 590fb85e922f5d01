#!/usr/bin/env python3
"""Metrics benchmark: /metrics scraped while the daemon tracks 100,000 peers and counts a
steady packet rate (issue 14): series count, scrape latency, and packet loss.

    python3 bench/metrics_bench.py [--rate 100000] [--seconds 5] [--interval 0.2]

The namespaces and veth pair of bench/live.py (deleted afterwards, also on failure).
A daemon with ``metrics`` on in the sniffer namespace is first fed 100,000 distinct
peers (bench/livecap.py --distinct), then the Zipf capture at --rate for --seconds
while a scraper in the same namespace GETs /metrics every --interval seconds (five
times as often as a 1 s Prometheus scrape).  Loss: tcpreplay's successful packets
against the daemon's ``stopped:`` counters (pcap dropped included).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib  # noqa: E402
import live  # noqa: E402
import livecap  # noqa: E402
from benchlib import PYTHON, BenchError, fmt_int, log  # noqa: E402

PEERS = 100_000
METRICS_PORT = 9108          # inside the sniffer namespace: nothing else listens there
FILL_PPS = 50_000
SCRAPER = r"""
import json, sys, time, urllib.request
port, seconds, interval = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
took, series, hosts = [], 0, 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    t = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        body = r.read().decode()
    took.append(time.perf_counter() - t)
    lines = [l for l in body.splitlines() if l and not l.startswith("#")]
    series = max(series, len(lines))
    hosts = max([hosts] + [float(l.split()[-1]) for l in lines if l.startswith("ncsniffer_hosts")])
    time.sleep(interval)
took.sort()
print(json.dumps({"scrapes": len(took), "max_ms": took[-1] * 1000,
                  "median_ms": took[len(took) // 2] * 1000, "series": series, "hosts": hosts}))
"""


def scrape(bed: live.Testbed, seconds: float, interval: float) -> subprocess.Popen:
    """The scraper, in the sniffer namespace, for ``seconds``."""
    return subprocess.Popen(["ip", "netns", "exec", bed.sniff_ns, PYTHON, "-c", SCRAPER,
                             str(METRICS_PORT), str(seconds), str(interval)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def with_metrics(daemon: live.Daemon) -> None:
    """Turn ``metrics`` on in the config bench/live.py's Daemon wrote."""
    with open(daemon.conf) as fh:
        config = ast.literal_eval(fh.read())
    config.update(metrics=f"127.0.0.1:{METRICS_PORT}", max_hosts=0)
    with open(daemon.conf, "w") as fh:
        fh.write(repr(config) + "\n")


def measure(rate: int, seconds: float, interval: float, drain: float = 2.0) -> list[str]:
    zipf = live.ensure_zipf_capture()
    fill = livecap.ensure(os.path.join(benchlib.WORK, f"distinct-{PEERS}.pcap"),
                          "--distinct", "--peers", str(PEERS))
    lines = ["# Metrics benchmark: /metrics scraped with 100,000 peers under load", ""]
    lines += benchlib.machine_lines()
    lines += [f"- a daemon on a veth (bench/live.py's namespaces), `metrics` on, `max_hosts` 0; "
              f"first {fmt_int(PEERS)} distinct peers at {fmt_int(FILL_PPS)} pps, then "
              f"`{os.path.relpath(zipf, benchlib.ROOT)}` at {fmt_int(rate)} pps for {seconds:g} s, "
              f"GET /metrics every {interval:g} s meanwhile (a scraper in the namespace)", ""]
    with live.Testbed() as bed:
        directory = tempfile.mkdtemp(prefix="ncbench-metrics-")
        daemon = live.Daemon(bed, directory)
        with_metrics(daemon)
        try:
            daemon.start()
            log(f"filling {fmt_int(PEERS)} peers")
            filled = bed.replay(fill, FILL_PPS, PEERS, PEERS / FILL_PPS + 5)
            time.sleep(drain)
            log(f"{fmt_int(rate)} pps for {seconds:g} s, scraped")
            scraper = scrape(bed, seconds + drain, interval)
            sent = bed.replay(zipf, rate, int(rate * seconds), seconds)
            out, err = scraper.communicate(timeout=seconds + 60)
            if scraper.returncode != 0:
                raise BenchError(f"scraper: {err.strip()[-400:]}")
            scraped = json.loads(out)
            daemon.stop()
            c = daemon.counters("stopped")
        finally:
            daemon.stop()
            shutil.rmtree(directory, ignore_errors=True)
    total = filled["sent"] + sent["sent"]
    lost = total - c["packets"]
    zero = lost == 0 and c["dropped"] == 0 and c["ifdropped"] == 0
    rows = [[fmt_int(rate), fmt_int(sent["pps"]), fmt_int(total), fmt_int(c["packets"]),
             fmt_int(c["dropped"]), fmt_int(lost), "yes" if zero else "NO",
             fmt_int(scraped["hosts"]), str(scraped["scrapes"]), str(scraped["series"]),
             f"{scraped['median_ms']:.1f}", f"{scraped['max_ms']:.1f}"]]
    lines += benchlib.table(["target pps", "achieved pps", "sent (fill + load)", "daemon packets",
                             "pcap dropped", "lost", "zero loss", "hosts (ncsniffer_hosts)",
                             "scrapes", "series", "median ms", "max ms"], rows)
    lines += ["", f"- load average at end: {benchlib.load_text()}"]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=int, default=100_000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--interval", type=float, default=0.2, help="seconds between scrapes")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run the finally blocks
    if os.geteuid() != 0:
        raise BenchError("the metrics benchmark creates network namespaces: run as root")
    benchlib.ensure_nc()
    benchlib.ensure_commands("tcpreplay", "ip", "tcpdump")
    benchlib.write_results("metrics", measure(args.rate, args.seconds, args.interval))
    return 0


if __name__ == "__main__":
    benchlib.run_script(main, "metrics_bench.py")
