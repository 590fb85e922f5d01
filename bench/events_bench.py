#!/usr/bin/env python3
"""The events log and feed under a flood (spec 10.4): does the loop ever block?

    .venv/bin/python bench/events_bench.py [--rate 200000] [--seconds 5] [--batch 2000]

A producer in the role of the daemon's loop pushes ``--rate`` events/s (half
``new``, half ``end``; batches of ``--batch`` rows on a fixed schedule) into one
``events.Events`` with the log file and the feed, serving the feed from its own
selector as the daemon does (the feed formatted by ``events.feed_bytes``, the compiled
formatter; the plain twin's cost per event is measured beside it).  Two subscribers: a fast one (a process reading
and discarding) and a stalled one (connected, never reads).  Measured: the
loop's time per batch (push + serving the feed), how far it fell behind its
schedule, the stalled subscriber's cut-off, the log's written/dropped counts
and the lines the fast subscriber received.  Writes bench/results/events-*.md.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchlib import fmt_int, machine_lines, run_script, table, write_results  # noqa: E402

from ncsniffer import conntrack as ct, events  # noqa: E402

READER = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n"
          "n=0\nwhile True:\n d=s.recv(1<<20)\n if not d: break\n n+=d.count(b'\\n')\n"
          "print(n)\n")
MAX_SECONDS = 60


def batches(n: int, size: int) -> list[np.ndarray]:
    """``n`` batches of events on distinct connections, half new, half end."""
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        rows = np.zeros(size, ct.EVENT_DTYPE)
        rows["me_lo"] = 0x0A000001
        rows["peer_lo"] = rng.integers(0x0B000000, 0x0C000000, size)
        rows["me_port"], rows["peer_port"] = rng.integers(1024, 65535, size), 443
        for f, secs in (("start", 1), ("end", 100)):      # sec + usec / 1e6, as the core
            rows[f] = rng.integers(1.7e9, 1.7e9 + secs, size) + rng.integers(0, 10 ** 6, size) / 1e6
        rows["kind"] = np.arange(size) % 2
        rows["state"] = np.where(rows["kind"] == ct.END, ct.CLOSED, ct.ACTIVE)
        rows["proto"], rows["orig_packets"], rows["orig_bytes"] = ct.TCP, 5, 900
        out.append(rows)
    return out


def per_event_us(format_batch, work: list[np.ndarray]) -> float:
    """CPU microseconds per event of ``format_batch`` over ``work`` (one pass)."""
    began = time.process_time()
    for rows in work:
        format_batch(rows)
    return (time.process_time() - began) * 1e6 / sum(len(rows) for rows in work)


def serve(sel: selectors.BaseSelector, timeout: float = 0) -> None:
    for key, mask in sel.select(timeout):
        key.data(mask)


def wait_serving(sel: selectors.BaseSelector, due: float) -> None:
    """Serve the feed until ``due``, as the daemon's loop does between batches (its
    selector wakes it when a subscriber's socket takes more)."""
    while (pause := due - time.monotonic()) > 0:
        serve(sel, pause)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=200_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=2000)
    args = ap.parse_args()
    seconds = min(args.seconds, MAX_SECONDS)
    turns = int(args.rate * seconds / args.batch)
    interval = args.batch / args.rate
    work = batches(min(turns, 50), args.batch)
    plain_us = per_event_us(events.feed_lines, work)
    fast_us = per_event_us(events.feed_bytes, work)
    with tempfile.TemporaryDirectory() as tmp:
        sink = events.Events(os.path.join(tmp, "conn.json"), os.path.join(tmp, "b.events"))
        sel = selectors.DefaultSelector()
        sink.attach(sel)
        fast = subprocess.Popen([sys.executable, "-c", READER, sink.feed.path],
                                stdout=subprocess.PIPE, text=True)
        stalled = socket.socket(socket.AF_UNIX)
        stalled.connect(sink.feed.path)
        try:
            deadline = time.monotonic() + 5
            while len(sink.feed.clients) < 2 and time.monotonic() < deadline:
                serve(sel)
                time.sleep(0.01)
            spent, cut_at = [], None
            began = time.monotonic()
            for i in range(turns):
                wait_serving(sel, began + i * interval)
                t0 = time.perf_counter()
                sink.push(work[i % len(work)])
                serve(sel)
                spent.append(time.perf_counter() - t0)
                if cut_at is None and sink.feed.cut_off:
                    cut_at = i
            behind = time.monotonic() - (began + turns * interval)
            subscribers_left = len(sink.feed.clients)
            cut_off = sink.feed.cut_off
            sink.drain()
            received = int(fast.communicate(timeout=60)[0] or 0)
        finally:
            stalled.close()
            if fast.poll() is None:
                fast.kill()
                fast.wait()
        written, dropped = sink.log.written, sink.log.dropped.count
    ms = np.array(spent) * 1e3
    total = turns * args.batch
    lines = ["# Events log and feed under a flood (bench/events_bench.py)", ""] + \
        machine_lines() + [
        f"- {fmt_int(args.rate)} events/s for {seconds:g} s: {turns} batches of "
        f"{args.batch} ({fmt_int(total)} events, half new, half end), one every "
        f"{interval * 1e3:.1f} ms", ""] + table(
        ["measure", "value"],
        [["feed formatting per event, plain twin / fast (us CPU)",
          f"{plain_us:.2f} / {fast_us:.2f}"],
         ["loop time per batch, median (ms)", f"{np.median(ms):.2f}"],
         ["loop time per batch, p99 (ms)", f"{np.percentile(ms, 99):.2f}"],
         ["loop time per batch, max (ms)", f"{ms.max():.2f}"],
         ["loop behind schedule at the end (s)", f"{max(behind, 0):.2f}"],
         ["subscribers cut off (count, first at batch)", f"{cut_off}, {cut_at}"],
         ["subscribers left", str(subscribers_left)],
         ["fast subscriber lines received / sent", f"{fmt_int(received)} / {fmt_int(total)}"],
         ["log lines written / dropped", f"{fmt_int(written)} / {fmt_int(dropped)}"]])
    write_results("events", lines)
    return 0


if __name__ == "__main__":
    run_script(main, "events_bench")
