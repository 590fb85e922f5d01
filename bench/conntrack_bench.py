#!/usr/bin/env python3
"""Micro-benchmark of the connection tracking core (ncsniffer/_conntrack.c, spec 10).

    .venv/bin/python bench/conntrack_bench.py [--packets 1000000] [--batch 65536]

Unlike the other benchmarks this one imports the package: it measures the core
alone, not the command.  It writes bench/results/conntrack-TIMESTAMP.md and
conntrack-latest.md:

1. packets/s of ``Tracker.process`` (time in the calls only, batches of
   ``--batch`` rows) on synthetic streams of ``--packets`` packets: many short
   TCP connections, long TCP flows, UDP flows, a SYN flood from distinct
   sources, and the four interleaved; the plain Python model on a slice too.
2. events/s of ``conncounts.count`` (K per peer) on the events of each batch, of the
   open tally kept batch by batch (the plain twin; the live path's before), of the open
   counts asked of the tracker for every peer of the batch (``Tracker.open_counts`` and
   ``conncounts.open_before``: the live path's now, as if every record were made anew),
   against the one asked of the tracker at a reset (``open_tally(Tracker.still_open())``).
3. bytes per connection: the growth of the RSS of a fresh process tracking
   1,000,000 connections (a SYN flood of 1,000,000 sources, max_connections
   1,000,000), then after a further 1,000,000 (bounded: evictions counted).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import fmt_int, log, machine_lines, table, write_results  # noqa: E402

from ncsniffer import conncounts, conntrack as ct  # noqa: E402

ME = 0x0A000001
PPS = 200_000                   # packet rate of the synthetic streams (their timestamps)
SHORT = [(True, ct.SYN), (False, ct.SYN | ct.ACK), (True, ct.ACK), (True, ct.ACK | 0x08),
         (False, ct.ACK), (True, ct.FIN | ct.ACK), (False, ct.FIN | ct.ACK)]


def blank(n: int, first_sec: int = 1_000_000) -> np.ndarray:
    """n TCP packets at PPS from me's address, timestamps filled in."""
    b = np.zeros(n, ct.PACKET_DTYPE)
    t = np.arange(n, dtype=np.int64) * 1_000_000 // PPS
    b["sec"], b["usec"] = first_sec + t // 1_000_000, t % 1_000_000
    b["me_lo"], b["proto"], b["wirelen"] = ME, ct.TCP, 100
    return b


def short_tcp(n: int, rng: np.random.Generator) -> np.ndarray:
    """Seven-packet connections (handshake, data, FINs), 500 under way at a time."""
    b = blank(n)
    lanes = 500
    row = np.arange(n)
    k = row // lanes                                 # the k-th packet of its lane
    step, conn = k % len(SHORT), (k // len(SHORT)) * lanes + row % lanes
    b["from_me"] = np.array([s for s, _ in SHORT], np.uint8)[step]
    b["flags"] = np.array([f for _, f in SHORT], np.uint8)[step]
    b["peer_lo"] = 0xC0A80000 + conn % 4096
    b["me_port"], b["peer_port"] = 1024 + conn // 4096 % 60000, 443
    return b


def long_flows(n: int, rng: np.random.Generator) -> np.ndarray:
    """1,000 established flows (picked up mid-stream), data in both directions."""
    b = blank(n)
    flow = rng.integers(0, 1000, n)
    b["peer_lo"], b["me_port"], b["peer_port"] = 0xC0A90000 + flow, 2000 + flow, 22
    b["from_me"], b["flags"] = rng.integers(0, 2, n), ct.ACK | 0x08
    return b


def udp(n: int, rng: np.random.Generator) -> np.ndarray:
    """100,000 UDP flows, packets at random among them."""
    b = blank(n)
    flow = rng.integers(0, 100_000, n)
    b["proto"], b["peer_lo"], b["me_port"], b["peer_port"] = ct.UDP, 0xAC100000 + flow, 53, \
        1024 + flow % 50000
    b["from_me"] = rng.integers(0, 2, n)
    return b


def syn_flood(n: int, first: int = 1 << 26, first_sec: int = 1_000_000) -> np.ndarray:
    """n SYNs from n distinct spoofed sources to me:80."""
    b = blank(n, first_sec)
    b["peer_lo"], b["me_port"], b["peer_port"], b["flags"] = first + np.arange(n), 80, 4000, \
        ct.SYN
    return b


def mix(n: int, rng: np.random.Generator) -> np.ndarray:
    """The four interleaved at random, a quarter each, each keeping its own order."""
    parts = [short_tcp(n // 4, rng), long_flows(n // 4, rng), udp(n // 4, rng),
             syn_flood(n - 3 * (n // 4))]
    b = np.concatenate(parts)
    when = np.concatenate([np.sort(rng.random(len(p))) for p in parts])
    stamps = blank(n)
    b = b[np.argsort(when, kind="stable")]
    b["sec"], b["usec"] = stamps["sec"], stamps["usec"]
    return b


def rate(stream: np.ndarray, batch: int, prefill: np.ndarray | None = None,
         **kw) -> tuple[float, int, int]:
    """packets/s of process() over the stream (after an untimed ``prefill``), the
    events it gave, the evictions."""
    tracker = ct.Tracker(**kw)
    if prefill is not None:
        for i in range(0, len(prefill), batch):
            tracker.process(prefill[i:i + batch])
    events, spent = 0, 0.0
    for i in range(0, len(stream), batch):
        piece = stream[i:i + batch]
        t0 = time.perf_counter()
        out = tracker.process(piece)
        spent += time.perf_counter() - t0
        events += len(out)
    return len(stream) / spent, events, tracker.evictions


def aggregation(stream: np.ndarray, batch: int) -> tuple[float, float, float, int, float, int]:
    """events/s of conncounts.count over the events of each batch of the stream, of the
    open tally's plain twin (conncounts.remember_open, the live path's before) and of
    the open counts asked of the tracker for every peer of the batch (the live path's
    now, at its worst), the events; then the seconds of the reset-time tally
    (open_tally of Tracker.still_open) and the connections it found open."""
    tracker, spent, twin, asked, events, tally = ct.Tracker(), 0.0, 0.0, 0.0, 0, {}
    for i in range(0, len(stream), batch):
        out = tracker.process(stream[i:i + batch])
        t0 = time.perf_counter()
        peers, deltas = conncounts.count(out)
        t1 = time.perf_counter()
        conncounts.remember_open(tally, out)
        t2 = time.perf_counter()
        every = np.arange(len(peers))
        conncounts.open_before(out, every, tracker.open_counts(peers))
        spent, twin = spent + t1 - t0, twin + t2 - t1
        asked += time.perf_counter() - t2
        events += len(out)
    t0 = time.perf_counter()
    conncounts.open_tally(tracker.still_open())
    return (events / spent, events / twin, events / asked, events, time.perf_counter() - t0,
            tracker.live)


def rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def memory_child(n: int, batch: int) -> None:
    """Run in a fresh process: RSS growth for n, then 2n flooded connections."""
    tracker = ct.Tracker(max_connections=n)
    tracker.process(syn_flood(1, 1, 1))             # the first allocations
    before, scratch = rss_kib(), tracker._core.scratch_bytes()
    for first in range(0, n, batch):
        tracker.process(syn_flood(min(batch, n - first), (1 << 26) + first, 1_000_000))
    after, scratch = rss_kib(), tracker._core.scratch_bytes() - scratch
    for first in range(0, n, batch):
        tracker.process(syn_flood(min(batch, n - first), (1 << 27) + first, 1_000_001))
    again = rss_kib()
    print(before, after, again, tracker.live, tracker.evictions, scratch)


def memory(n: int, batch: int) -> list[str]:
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--batch",
                          str(batch)], capture_output=True, text=True, check=True).stdout
    before, after, again, live, evictions, scratch = map(int, out.split())
    per = ((after - before) * 1024 - scratch) / n
    return [f"- {fmt_int(n)} connections (SYN flood, max_connections {fmt_int(n)}): RSS "
            f"+{fmt_int((after - before) / 1024)} MiB, of which {scratch / 2 ** 20:.1f} MiB "
            f"the per-call buffers (the events and K rows of one {fmt_int(batch)}-packet "
            f"batch, sized by the batch, not by the table): **{per:.0f} bytes per "
            f"connection** (entry {ct._conntrack.ENTRY_SIZE} bytes + hash bucket + pool "
            f"slack + open tally: {ct._conntrack.PEER_SIZE} bytes and an index slot per "
            f"peer, here one per connection); "
            f"{(after - before) * 1024 / n:.0f} bytes with the buffers",
            f"- a further {fmt_int(n)} flooded sources: RSS {fmt_int((again - after) / 1024):>} "
            f"MiB more (the core's buffer for the events of one batch: an eviction and a new "
            f"connection per packet), {fmt_int(live)} live, {fmt_int(evictions)} evicted"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child, args.batch)
    if not ct.HAVE_CORE:
        sys.exit("conntrack_bench: the extension ncsniffer._conntrack is not built "
                 "(run make setup)")
    rng = np.random.default_rng(13)
    n, rows, machine = args.packets, [], machine_lines()
    streams = {"short TCP connections (7 packets)": short_tcp,
               "long TCP flows (1,000)": long_flows,
               "UDP flows (100,000)": udp,
               "SYN flood (distinct sources)": lambda k, _: syn_flood(k),
               "the four interleaved": mix}
    for name, make in streams.items():
        log(f"core: {name}")
        pps, events, evicted = rate(make(n, rng), args.batch)
        rows.append([name, fmt_int(n), fmt_int(pps), fmt_int(events), fmt_int(evicted)])
    log("core: SYN flood into a full table")
    pps, events, evicted = rate(syn_flood(n, 1 << 27, 1_000_005), args.batch,
                                prefill=syn_flood(n), max_connections=n,
                                timeouts=ct.Timeouts(tcp_establish=60))
    rows.append([f"SYN flood into a full table ({fmt_int(n)} connections)", fmt_int(n),
                 fmt_int(pps), fmt_int(events), fmt_int(evicted)])
    small = mix(20_000, rng)
    log("reference model")
    pps, events, evicted = rate(small, args.batch, reference=True)
    rows.append(["the four interleaved, plain Python model", fmt_int(len(small)), fmt_int(pps),
                 fmt_int(events), fmt_int(evicted)])
    log("K aggregation")
    k_rows = []
    for name, stream in (("the four interleaved", mix(n, rng)), ("SYN flood", syn_flood(n))):
        eps, twin_eps, asked_eps, events, reset_s, still = aggregation(stream, args.batch)
        k_rows.append([name, fmt_int(events), fmt_int(eps), fmt_int(twin_eps),
                       fmt_int(asked_eps), f"{reset_s * 1e3:.0f} ms ({fmt_int(still)})"])
    log("memory")
    lines = ["# Connection tracking core: micro-benchmark", ""] + machine + [
        f"- batches of {fmt_int(args.batch)} packets; time spent in Tracker.process only "
        "(the core and the events array); each stream starts from an empty table, whose "
        "growth (fresh pages, rehashing) the new connections pay", "",
        "## Packets per second", ""]
    lines += table(["stream", "packets", "packets/s", "events", "evicted"], rows)
    lines += ["", "## K aggregation (conncounts.count, the events of each batch) and the "
              "open tally", ""]
    lines += table(["stream", "events", "count events/s",
                    "open tally per batch, plain twin, events/s",
                    "open counts asked of the tracker, every peer, events/s",
                    "open tally at a reset (open connections)"], k_rows)
    lines += ["", "## Memory", ""] + memory(1_000_000, args.batch)
    lines += ["", f"- load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"]
    write_results("conntrack", lines)


if __name__ == "__main__":
    main()
