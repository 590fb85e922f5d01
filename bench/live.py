#!/usr/bin/env python3
"""Live capture benchmark: the daemon sniffs one end of a veth pair, tcpreplay feeds the other.

    python3 bench/live.py [--rates 50000 ... 1000000 0] [--seconds 5]
    python3 bench/live.py --connections [--stalled-subscriber] [--rates 200000]
    python3 bench/live.py --code COMMIT [--connections] [--rates 400000]
    bench/run --live

Two network namespaces created here (and deleted afterwards, also on failure) are
joined by a veth pair: 10.213.77.1/30 (sniffer side, MAC 00:11:22:33:44:55) and
10.213.77.2/30 (sender side).  Neither namespace has a route beyond its /30, so
nothing leaves them.  For every rate a fresh daemon (bpf ``host 10.213.77.1``) is
started in the sniffer namespace, tcpreplay sends rate x seconds packets (bounded by
--limit and --duration), and the daemon's ``stopped:`` log line gives the packets it
saw and pcap's received/dropped counters.  Rate 0 is tcpreplay's ``--topspeed``
(bounded by TOPSPEED_LIMIT packets a second): the highest rate the sender reaches
here.  Each row names the bottleneck: the sender when tcpreplay fell short of the
target rate, the daemon when the veth received packets it did not count.

``--connections``: the daemon tracks connections (``connections: True``); results in
live-connections-*.md.  ``--stalled-subscriber`` (with it): an ``nc.sniffer events``
subscriber is stopped (SIGSTOP) after its first line, so it never reads again; the
daemon must cut it off (logged, counted) and lose no packet (live-slow-subscriber-*.md).
``--code COMMIT``: the daemon of that commit instead (unpacked as ``bench/old_new.py``
does, run as ``python -P -m ncsniffer`` with PYTHONPATH its tree): whether a rate this
machine loses today was lost by the older code too (results ``KIND-at-COMMIT-*.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib  # noqa: E402
import livecap  # noqa: E402
import old_new  # noqa: E402
from benchlib import NC, BenchError, fmt_int, log  # noqa: E402

ME = "10.213.77.1"
PEER = "10.213.77.2"
SNIFF_MAC = "00:11:22:33:44:55"
SEND_MAC = "66:77:88:99:aa:bb"
RATES = (50_000, 100_000, 200_000, 400_000, 600_000, 800_000, 1_000_000, 0)   # 0: top speed
TOPSPEED_LIMIT = 3_000_000     # packets a second of the top-speed row's --limit (bound)
SENDER_SHORT = 0.98            # achieved below this share of the target: the sender's limit
ZIPF_CAPTURE = os.path.join(benchlib.WORK, "live-zipf-400k.pcap")
COUNTERS = re.compile(r"(\w+): (\d+) packets, (\d+) counted.*?pcap received (\d+), "
                      r"dropped (\d+), interface dropped (\d+)")
FEED = re.compile(r"events feed (\d+) subscribers, (\d+) cut off")
PROGRAM = [NC]                 # the daemon's command; ``--code``: another tree's


def sh(*cmd: str, timeout: float = 30, check: bool = True) -> str:
    """Run a short command; its stdout."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise BenchError(f"{' '.join(cmd)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


class Testbed:
    """Two namespaces and a veth pair; a context manager that always tears them down."""

    def __init__(self) -> None:
        tag = os.getpid() % 100_000
        self.sniff_ns, self.send_ns = f"ncbench-snf-{tag}", f"ncbench-snd-{tag}"
        self.sniff_if, self.send_if = f"ncbs{tag}", f"ncbt{tag}"

    def __enter__(self) -> "Testbed":
        try:
            for ns in (self.sniff_ns, self.send_ns):
                sh("ip", "netns", "add", ns)
                # no IPv6 on the veths: no router solicitations, no DAD in the counts
                sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                   "net.ipv6.conf.default.disable_ipv6=1")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
            # created inside the sniffer namespace, the peer directly in the sender's:
            # the interfaces never exist in the caller's namespace
            sh("ip", "-n", self.sniff_ns, "link", "add", self.sniff_if, "address", SNIFF_MAC,
               "type", "veth", "peer", "name", self.send_if, "netns", self.send_ns,
               "address", SEND_MAC)
            sh("ip", "-n", self.sniff_ns, "addr", "add", ME + "/30", "dev", self.sniff_if)
            sh("ip", "-n", self.send_ns, "addr", "add", PEER + "/30", "dev", self.send_if)
            sh("ip", "-n", self.sniff_ns, "link", "set", self.sniff_if, "up")
            sh("ip", "-n", self.send_ns, "link", "set", self.send_if, "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for ns in (self.sniff_ns, self.send_ns):     # deleting a namespace deletes its veth
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def rx(self) -> tuple[int, int]:
        """(packets, dropped) received by the sniffing veth."""
        info = json.loads(sh("ip", "-n", self.sniff_ns, "-s", "-j", "link", "show", self.sniff_if))
        rx = info[0]["stats64"]["rx"]
        return rx["packets"], rx["dropped"]

    def replay(self, capture: str, pps: int, limit: int, seconds: float) -> dict:
        """tcpreplay ``limit`` packets at ``pps`` from the sender side (bounded in time too)."""
        loops = 0  # 0 = loop until --limit, bounded by --duration and our timeout
        speed = f"--pps={pps}" if pps else "--topspeed"
        cmd = ["ip", "netns", "exec", self.send_ns, "tcpreplay", "-i", self.send_if,
               speed, f"--limit={limit}", f"--loop={loops}", "--preload-pcap",
               f"--duration={int(seconds) + 1}", capture]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        if done.returncode != 0:
            raise BenchError(f"tcpreplay: {done.stderr.strip() or done.stdout.strip()}")
        return parse_tcpreplay(done.stdout)

    def replay_async(self, capture: str, pps: int, limit: int, seconds: float) -> subprocess.Popen:
        cmd = ["ip", "netns", "exec", self.send_ns, "tcpreplay", "-i", self.send_if,
               f"--pps={pps}", f"--limit={limit}", "--loop=0", "--preload-pcap",
               f"--duration={int(seconds) + 1}", capture]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def parse_tcpreplay(out: str) -> dict:
    """Successful packets, seconds and the achieved rate from tcpreplay's summary."""
    sent = re.search(r"Successful packets:\s+(\d+)", out)
    actual = re.search(r"Actual: (\d+) packets \((\d+) bytes\) sent in ([\d.]+) seconds", out)
    rated = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", out)
    failed = re.search(r"Failed packets:\s+(\d+)", out)
    if not (sent and actual and rated):
        raise BenchError(f"unexpected tcpreplay output: {out.strip()[-400:]}")
    return {"sent": int(sent.group(1)), "seconds": float(actual.group(3)),
            "pps": float(rated.group(1)), "failed": int(failed.group(1)) if failed else 0}


class Daemon:
    """One nc.sniffer daemon in the sniffer namespace, with its own piddir and log."""

    def __init__(self, bed: Testbed, directory: str, bpf: str = f"host {ME}",
                 connections: bool = False) -> None:
        self.bed, self.dir = bed, directory
        self.conf = os.path.join(directory, "nc.sniffer.conf")
        self.log_path = os.path.join(directory, "nc.sniffer.log")
        self.stats = os.path.join(directory, "nc.sniffer.stats")
        self.pid: int | None = None
        with open(self.conf, "w") as fh:
            fh.write(repr({"piddir": directory, "sniffer": directory, "bpf": bpf,
                           "resolve": False, "connections": connections}) + "\n")

    def command(self, what: str, timeout: float = 30) -> str:
        return sh("ip", "netns", "exec", self.bed.sniff_ns, *PROGRAM, "-c", self.conf, what,
                  timeout=timeout)

    def start(self) -> None:
        if os.path.exists("/dev/log"):
            raise BenchError("/dev/log exists: the daemon would log to syslog, where this "
                             "harness cannot read its counters")
        self.command("start")
        self.wait_log("started on", 15)
        with open(os.path.join(self.dir, "nc.sniffer.pid")) as fh:
            self.pid = int(fh.read().split()[0])

    def stop(self) -> None:
        if self.pid is None:
            return
        try:
            self.command("stop", timeout=40)
        except (BenchError, subprocess.TimeoutExpired):
            try:                          # our own daemon, by its pid
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass
        self.pid = None

    def log_text(self) -> str:
        try:
            with open(self.log_path) as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def wait_log(self, text: str, timeout: float, after: int = 0) -> str:
        """Wait for a log line containing ``text`` past offset ``after``; that line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_text()[after:].splitlines():
                if text in line:
                    return line
            time.sleep(0.05)
        raise BenchError(f"daemon log: no {text!r} within {timeout} s:\n{self.log_text()[-1000:]}")

    def counters(self, what: str) -> dict:
        """The last ``what:`` counter line: packets, counted, pcap received/dropped/ifdropped."""
        found = [m for m in COUNTERS.finditer(self.log_text()) if m.group(1) == what]
        if not found:
            raise BenchError(f"no '{what}:' counters in the daemon log")
        m = found[-1]
        line = self.log_text()[m.start():].splitlines()[0]
        feed = FEED.search(line)
        return {"packets": int(m.group(2)), "counted": int(m.group(3)),
                "received": int(m.group(4)), "dropped": int(m.group(5)),
                "ifdropped": int(m.group(6)), "cut_off": int(feed.group(2)) if feed else None}

    def status(self) -> dict:
        """VmRSS, VmHWM, RssAnon in kB from /proc."""
        values = {}
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    values[key] = int(rest.split()[0])
        return values


class StalledSubscriber:
    """``nc.sniffer events`` in the sniffer namespace, stopped (SIGSTOP) once its first
    line came: a subscriber that never reads again.  Killed by its pid at the end."""

    def __init__(self, daemon: Daemon) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", daemon.bed.sniff_ns, *PROGRAM, "-c",
                                      daemon.conf, "events"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)

    def stall(self, timeout: float) -> None:
        """Wait (at most ``timeout``) for the first line, then stop the process."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready or not self.proc.stdout.readline():
            raise BenchError(f"nc.sniffer events: no line within {timeout} s")
        self.proc.send_signal(signal.SIGSTOP)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()              # SIGKILL ends a stopped process too
        self.proc.wait(10)
        self.proc.stdout.close()


def ensure_zipf_capture() -> str:
    return livecap.ensure(ZIPF_CAPTURE, "--zipf", "--packets", "400000", "--peers", "50000")


def one_rate(bed: Testbed, capture: str, rate: int, seconds: float, drain: float,
             connections: bool = False, stalled: bool = False) -> dict:
    """A fresh daemon, ``rate`` x ``seconds`` packets, ``drain`` seconds, stop: what tcpreplay
    sent, the daemon's ``stopped:`` counters, the veth's rx counters before and after, and
    the daemon's first cut-off log line (with ``stalled``)."""
    directory = tempfile.mkdtemp(prefix="ncbench-live-")
    daemon = Daemon(bed, directory, connections=connections)
    subscriber = None
    try:
        daemon.start()
        rx0, rxdrop0 = bed.rx()
        if stalled:
            subscriber = StalledSubscriber(daemon)
            time.sleep(0.5)                    # connected before the first packet
            sender = bed.replay_async(capture, rate, int(rate * seconds), seconds)
            subscriber.stall(10)
            out, err = sender.communicate(timeout=seconds + 60)
            if sender.returncode != 0:
                raise BenchError(f"tcpreplay: {err.strip() or out.strip()}")
            sent = parse_tcpreplay(out)
        else:
            sent = bed.replay(capture, rate, int((rate or TOPSPEED_LIMIT) * seconds), seconds)
        time.sleep(drain)
        rx1, rxdrop1 = bed.rx()
        daemon.stop()
        cut = [line for line in daemon.log_text().splitlines() if "cut off (" in line]
        return {"sent": sent, "counters": daemon.counters("stopped"), "rx0": rx0, "rx": rx1,
                "rxdrop0": rxdrop0, "rxdrop": rxdrop1, "cut_line": cut[0] if cut else None}
    finally:
        daemon.stop()
        if subscriber is not None:
            subscriber.close()
        shutil.rmtree(directory, ignore_errors=True)


def measure(rates: list[int], seconds: float, drain: float = 2.0, connections: bool = False,
            stalled: bool = False, capture: str | None = None) -> list[str]:
    capture = capture or ensure_zipf_capture()
    what = (", connections: True" if connections else "") + \
        (", an `nc.sniffer events` subscriber stopped after its first line" if stalled else "")
    lines = [f"# Live capture benchmark: daemon on a veth, tcpreplay at fixed rates{what}", ""]
    lines += benchlib.machine_lines()
    lines += [f"- capture: `{os.path.relpath(capture, benchlib.ROOT)}` (`bench/livecap.py --zipf`, "
              "400,000 IPv4 packets, 50,000 Zipf peers, sizes as gen_capture.py), looped by "
              "tcpreplay `--preload-pcap --limit=rate×seconds`",
              f"- per rate: a fresh daemon (bpf `host {ME}`), {seconds:g} s of packets, {drain:g} s to "
              "drain, `nc.sniffer stop`; counters from its `stopped:` log line",
              ""]
    rows, best, notes = [], None, []
    with Testbed() as bed:
        log(f"namespaces {bed.sniff_ns} / {bed.send_ns} up")
        for rate in rates:
            log(f"{fmt_int(rate) if rate else 'top speed'} pps for {seconds:g} s")
            run = one_rate(bed, capture, rate, seconds, drain, connections, stalled)
            sent, c, rx1, rx0, rxdrop1, rxdrop0 = (run[k] for k in (
                "sent", "counters", "rx", "rx0", "rxdrop", "rxdrop0"))
            if run["cut_line"]:
                notes.append(f"- the daemon's log at {fmt_int(rate)} pps: `{run['cut_line']}`")
            lost = sent["sent"] - c["packets"]
            zero = lost == 0 and c["dropped"] == 0 and c["ifdropped"] == 0
            cut = "-" if c["cut_off"] is None else str(c["cut_off"])
            achieved = sent["pps"] if rate == 0 else rate
            if zero and (best is None or achieved > best):
                best = int(achieved)
            short = rate and sent["pps"] < SENDER_SHORT * rate
            neck = ("daemon" if not zero else "") + \
                ((" and sender" if not zero else "sender") if short or (zero and not rate) else "")
            neck = neck or "none"
            if not zero:
                label = fmt_int(rate) if rate else "top speed"
                notes.append(f"- at {label} pps the daemon handled {fmt_int(c['packets'])} "
                             f"packets while the sender ran {sent['seconds']:.1f} s (+{drain:g} s "
                             f"drain): about {fmt_int(c['packets'] / sent['seconds'])} packets/s; "
                             "the rest was dropped in pcap's ring (pcap dropped), not by the kernel "
                             "(veth rx dropped)")
            rows.append([fmt_int(rate) if rate else "top speed", fmt_int(sent["pps"]),
                         fmt_int(sent["sent"]),
                         fmt_int(rx1 - rx0), fmt_int(c["received"]), fmt_int(c["packets"]),
                         fmt_int(c["dropped"]), fmt_int(c["ifdropped"]), fmt_int(rxdrop1 - rxdrop0),
                         fmt_int(lost), cut, "yes" if zero else "NO", neck])
    lines += benchlib.table(["target pps", "achieved pps", "sent", "veth rx", "pcap received",
                             "daemon packets", "pcap dropped", "if dropped", "veth rx dropped",
                             "lost (sent − daemon)", "subscribers cut off", "zero loss",
                             "bottleneck"], rows)
    lines += ["", f"**Highest rate with zero loss: {fmt_int(best) + ' packets/s' if best else 'none'}**"
              " (achieved pps is tcpreplay's own measure; sent = its successful packets)",
              "", "Bottleneck: *sender* where tcpreplay's achieved rate fell short of the "
              f"target ({SENDER_SHORT:.0%}) or ran at top speed with nothing lost (the daemon "
              "kept up with all it was sent), *daemon* where it counted fewer packets than "
              "were sent (both where both hold), *none* otherwise.", ""] + notes + ["", f"- load average at end: {benchlib.load_text()}"]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", type=int, nargs="+", default=list(RATES))
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--drain", type=float, default=2.0, help="seconds between sender end and stop")
    p.add_argument("--connections", action="store_true", help="the daemon tracks connections")
    p.add_argument("--stalled-subscriber", action="store_true",
                   help="with --connections: a feed subscriber that stops reading")
    p.add_argument("--code", metavar="COMMIT", help="run that commit's daemon instead")
    args = p.parse_args(argv)
    if args.stalled_subscriber and not args.connections:
        p.error("--stalled-subscriber needs --connections (the feed)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run the finally blocks
    if os.geteuid() != 0:
        raise BenchError("the live benchmark creates network namespaces: run as root")
    benchlib.ensure_nc()
    benchlib.ensure_commands("tcpreplay", "ip", "tcpdump")
    kind = ("live-slow-subscriber" if args.stalled_subscriber else
            "live-connections" if args.connections else "live")
    short = None
    with contextlib.ExitStack() as stack:
        if args.code is not None:
            _, tree, short = stack.enter_context(old_new.old_code(args.code,
                                                                  "ncsniffer-live-code."))
            # -P: the current directory's package must not come before PYTHONPATH's
            PROGRAM[:] = ["env", f"PYTHONPATH={tree}", benchlib.PYTHON, "-P", "-m", "ncsniffer"]
        lines = measure(args.rates, args.seconds, args.drain, args.connections,
                        args.stalled_subscriber)
    if short is not None:
        lines = [f"- measured code: commit {short} (unpacked; `python -P -m ncsniffer`)"
                 if line.startswith("- measured code:") else line for line in lines]
        kind += f"-at-{short}"
    benchlib.write_results(kind, lines)
    return 0


if __name__ == "__main__":
    benchlib.run_script(main, "live.py")
