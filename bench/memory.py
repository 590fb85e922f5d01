#!/usr/bin/env python3
"""Memory per tracked IP, the time to dump 1,000,000 records, and capture during that dump.

    python3 bench/memory.py [--sizes 100000 1000000] [--feed-pps 100000]
    bench/run --memory

1. Replay: ``nc.sniffer -r`` of captures with exactly N distinct peers (one packet
   each, bench/livecap.py --distinct); peak RSS (wait4) and peak anonymous RSS
   (/proc, sampled every 10 ms) minus those of a 1,000-peer replay, divided by N.
   The anonymous figure leaves out the pages of the capture file, which the replay maps.
2. Live (namespaces and veth of bench/live.py): a daemon is fed N distinct peers by
   tcpreplay; its RssAnon/VmRSS after minus before, divided by the hosts it tracks.
   With 1,000,000 peers, the dump is then requested (SIGUSR1) while tcpreplay sends
   50,000 packets/s of known peers: the dump time (signal to stats file replaced) and
   the packets the daemon saw versus sent, with pcap's drop counter.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib  # noqa: E402
import livecap  # noqa: E402
from benchlib import NC, BenchError, fmt_int, log  # noqa: E402
from live import Daemon, Testbed, ensure_zipf_capture, parse_tcpreplay  # noqa: E402

TINY = 1_000
SIZES = (100_000, 1_000_000)
DUMP_PPS = 50_000
MAX_SENDER = 120      # seconds: bound of the sender during the dump


def distinct_capture(n: int) -> str:
    path = os.path.join(benchlib.WORK, f"distinct-{n}.pcap")
    return livecap.ensure(path, "--distinct", "--peers", str(n))


def replay_peak(capture: str, scratch: str) -> dict:
    """Replay ``capture``; peak RSS from wait4 and peak RssAnon sampled from /proc."""
    conf = os.path.join(scratch, "replay.conf")
    with open(conf, "w") as fh:
        fh.write(repr({"piddir": scratch, "sniffer": scratch, "bpf": "host 10.213.77.1",
                       "resolve": False}) + "\n")
    started = time.perf_counter()
    proc = subprocess.Popen([NC, "-q", "-c", conf, "-r", capture, "start"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    anon = 0
    status_path = f"/proc/{proc.pid}/status"
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            with open(status_path) as fh:
                for line in fh:
                    if line.startswith("RssAnon:"):
                        anon = max(anon, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.01)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise BenchError(f"nc.sniffer -r {capture}: {err.strip()[-400:]}")
    hosts = re.search(r"(\d+) hosts", err)
    return {"maxrss": usage.ru_maxrss, "anon": anon, "wall": wall,
            "hosts": int(hosts.group(1)) if hosts else None}


def replay_part(sizes: list[int]) -> list[str]:
    scratch = tempfile.mkdtemp(prefix="ncbench-mem-")
    try:
        base = replay_peak(distinct_capture(TINY), scratch)
        rows = []
        for n in sizes:
            log(f"replay with {fmt_int(n)} distinct peers")
            r = replay_peak(distinct_capture(n), scratch)
            rows.append([fmt_int(n), fmt_int(r["hosts"] or 0), f"{r['wall']:.2f}",
                         fmt_int(r["maxrss"] / 1024), fmt_int(r["anon"] / 1024),
                         fmt_int((r["maxrss"] - base["maxrss"]) * 1024 / n),
                         fmt_int((r["anon"] - base["anon"]) * 1024 / n)])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    lines = ["## Replay (`nc.sniffer -r`, one packet per distinct peer)", "",
             f"Baseline: a {fmt_int(TINY)}-peer replay, peak RSS {fmt_int(base['maxrss'] / 1024)} MB, "
             f"peak anonymous RSS {fmt_int(base['anon'] / 1024)} MB.", ""]
    lines += benchlib.table(["peers", "hosts tracked", "wall s", "peak RSS MB", "peak anon MB",
                             "bytes/IP (peak RSS)", "bytes/IP (anon)"], rows)
    lines += ["", "Peak RSS includes the mapped capture file (about 58 bytes a packet here) and "
              "whatever the final dump allocates; the anonymous figure is sampled, so it can miss "
              "a short final peak by up to 10 ms."]
    return lines


def settle(daemon: Daemon, bed: Testbed, expected_rx: int, timeout: float = 10) -> None:
    """Wait until the veth has received what was sent and the daemon has caught up a moment."""
    deadline = time.monotonic() + timeout
    while bed.rx()[0] < expected_rx and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)


def read_users(stats: str) -> int | None:
    with open(stats) as fh:
        for line in fh:
            if line.startswith("# users:"):
                return int(line.split()[-1])
            if not line.startswith("#") and line.strip():
                break
    return None


def wait_replaced(path: str, before: tuple | None, timeout: float) -> float:
    """Poll until ``path`` is a new file (inode or mtime changed); the monotonic time then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = os.stat(path)
            if before is None or (st.st_ino, st.st_mtime_ns) != before:
                return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    raise BenchError(f"{path} not rewritten within {timeout} s")


def stat_key(path: str) -> tuple | None:
    try:
        st = os.stat(path)
        return st.st_ino, st.st_mtime_ns
    except FileNotFoundError:
        return None


def live_part(sizes: list[int], feed_pps: int) -> list[str]:
    rows, dump_lines = [], []
    zipf = ensure_zipf_capture()
    with Testbed() as bed:
        log(f"namespaces {bed.sniff_ns} / {bed.send_ns} up")
        for n in sizes:
            capture = distinct_capture(n)
            directory = tempfile.mkdtemp(prefix="ncbench-memlive-")
            daemon = Daemon(bed, directory)
            try:
                daemon.start()
                time.sleep(0.5)
                before = daemon.status()
                rx0 = bed.rx()[0]
                log(f"live: feeding {fmt_int(n)} distinct peers at {fmt_int(feed_pps)} pps")
                fed = bed.replay(capture, feed_pps, n, n / feed_pps * 1.5 + 5)
                settle(daemon, bed, rx0 + fed["sent"])
                after = daemon.status()
                hosts = None
                if n == max(sizes):
                    dump_lines = dump_during_capture(daemon, bed, zipf, fed["sent"], rx0)
                    hosts = read_users(daemon.stats)
                daemon.stop()
                c = daemon.counters("stopped")
                if hosts is None:
                    hosts = read_users(daemon.stats)
            finally:
                daemon.stop()
                shutil.rmtree(directory, ignore_errors=True)
            hosts = hosts or n
            rows.append([fmt_int(n), fmt_int(fed["sent"]), fmt_int(hosts),
                         fmt_int(before["RssAnon"] / 1024), fmt_int(after["RssAnon"] / 1024),
                         fmt_int((after["RssAnon"] - before["RssAnon"]) * 1024 / hosts),
                         fmt_int((after["VmRSS"] - before["VmRSS"]) * 1024 / hosts),
                         fmt_int(c["dropped"])])
    lines = ["## Live daemon (fed by tcpreplay in the namespaces)", ""]
    lines += benchlib.table(["peers", "fed packets", "hosts in stats file", "RssAnon before MB",
                             "RssAnon after MB", "bytes/IP (RssAnon)", "bytes/IP (VmRSS)",
                             "pcap dropped (whole run)"], rows)
    return lines + [""] + dump_lines


def dump_during_capture(daemon: Daemon, bed: Testbed, zipf: str, fed: int,
                        rx_start: int) -> list[str]:
    """SIGUSR1 while tcpreplay sends DUMP_PPS; the dump time and any loss.

    The sender is bounded to MAX_SENDER seconds and stopped (SIGINT: it prints its
    totals) 2 s after the stats file was replaced, so capture covers the whole dump.
    """
    log(f"live: dump of the records while capturing {fmt_int(DUMP_PPS)} pps")
    before = stat_key(daemon.stats)
    log_at = len(daemon.log_text())
    sender = bed.replay_async(zipf, DUMP_PPS, DUMP_PPS * MAX_SENDER, MAX_SENDER)
    try:
        time.sleep(1.5)
        t0 = time.monotonic()
        os.kill(daemon.pid, signal.SIGUSR1)          # what `nc.sniffer dump` sends
        t1 = wait_replaced(daemon.stats, before, MAX_SENDER - 5)
        time.sleep(2.0)
        sender.send_signal(signal.SIGINT)
        out, err = sender.communicate(timeout=30)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait()
    sent = parse_tcpreplay(out)
    time.sleep(1.0)
    arrived = bed.rx()[0] - rx_start      # ground truth: tcpreplay's total is off by one on SIGINT
    daemon.wait_log("dump:", 5, after=log_at)
    time.sleep(1.0)
    daemon.stop()
    c = daemon.counters("stopped")
    records = read_users(daemon.stats)
    lost = arrived - c["packets"]
    ok = lost == 0 and c["dropped"] == 0 and c["ifdropped"] == 0
    return ["## Dump of the records during capture", "",
            f"- records in the daemon: {fmt_int(records or 0)} (stats file header `users`)",
            f"- dump time (SIGUSR1 to stats file replaced; the daemon dumps in a forked child): "
            f"**{t1 - t0:.2f} s**",
            f"- during the dump tcpreplay sent {fmt_int(sent['sent'])} packets at "
            f"{fmt_int(sent['pps'])} pps over {sent['seconds']:.1f} s (the dump started 1.5 s in, "
            "the sender stopped 2 s after it ended)",
            f"- daemon packets over the whole run: {fmt_int(c['packets'])} of {fmt_int(arrived)} "
            f"received by the sniffing veth (feed {fmt_int(fed)} + sender during the dump); "
            f"pcap received {fmt_int(c['received'])}, dropped "
            f"{fmt_int(c['dropped'])}, interface dropped {fmt_int(c['ifdropped'])}",
            f"- **{'zero loss during the dump' if ok else f'LOSS: {fmt_int(lost)} packets'}**", ""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--feed-pps", type=int, default=100_000)
    p.add_argument("--no-live", action="store_true", help="only the replay part")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run the finally blocks
    benchlib.ensure_nc()
    benchlib.ensure_commands("tcpreplay", "ip", "tcpdump")
    lines = ["# Memory per tracked IP and the 1,000,000-record dump", ""]
    lines += benchlib.machine_lines() + [""]
    lines += replay_part(args.sizes)
    if not args.no_live:
        if os.geteuid() != 0:
            raise BenchError("the live part creates network namespaces: run as root")
        lines += [""] + live_part(args.sizes, args.feed_pps)
    lines += ["", f"- load average at end: {benchlib.load_text()}"]
    benchlib.write_results("memory", lines)
    return 0


if __name__ == "__main__":
    benchlib.run_script(main, "memory.py")
