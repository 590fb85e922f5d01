#!/usr/bin/env python3
"""Where a replay's time goes with ``connections: True`` (issue 13): CPU seconds per step.

    .venv/bin/python bench/conntrack_profile.py [--capture bench/work/bench.pcap]

Like bench/conntrack_bench.py this imports the package: the bench capture is replayed
in one process (``NCSNIFFER_REPLAY=serial``) twice, with default settings and with
``connections: True``, the pipeline's steps wrapped to sum their CPU time
(time.process_time).  In the two-process replay ``batch.prepare`` and the tracker
run in the reading process and the rest in the counting one.  Writes
bench/results/conntrack-profile-*.md.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchlib import FILTER, machine_lines, run_script, table, write_results  # noqa: E402

from ncsniffer import (batch, config, conncounts, conntrack, replay, sniffer,  # noqa: E402
                       table as records)

CAPTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "work", "bench.pcap")
# (object, attribute, label, side): side = the process of the two-process replay
STEPS = [(batch, "prepare", "batch.prepare: filter, decode, targets (all)", "reading"),
         (batch, "flows", "batch.flows: the FLOW fields (in prepare)", "reading"),
         (batch, "account", "batch.account: the accounting (all)", "counting"),
         (conntrack.Tracker, "process", "Tracker.process: the C core (events only)", "reading"),
         (conntrack.Tracker, "process_counted",
          "Tracker.process_counted: the C core, K per peer", "reading"),
         (conntrack, "as_packets", "conntrack.as_packets: FLOW to PACKET_DTYPE (in process)",
          "reading"),
         (conncounts, "count", "conncounts.count: K deltas per peer (the plain twin)",
          "counting"),
         (sniffer.Sniffer, "take_tracked", "Sniffer.take_tracked: K into the records (all)",
          "counting"),
         (records.Table, "peer_slots", "Table.peer_slots: the peers' records", "counting"),
         (records.Table, "add_connections", "Table.add_connections: K into the records",
          "counting"),
         (sniffer.Sniffer, "dump", "Sniffer.dump: the final stats file", "counting")]


def timed(spent: collections.Counter, label: str, f):
    def wrapper(*args, **kw):
        began = time.process_time()
        try:
            return f(*args, **kw)
        finally:
            spent[label] += time.process_time() - began
    return wrapper


def profile(capture: str, connections: bool) -> tuple[collections.Counter, float]:
    """CPU seconds per step and in all of one serial replay."""
    spent: collections.Counter = collections.Counter()
    saved = [(obj, name, getattr(obj, name)) for obj, name, _, _ in STEPS]
    for (obj, name, label, _), (_, _, f) in zip(STEPS, saved):
        setattr(obj, name, timed(spent, label, f))
    try:
        with tempfile.TemporaryDirectory(prefix="ncbench-prof-") as tmp:
            conf = os.path.join(tmp, "nc.sniffer.conf")
            with open(conf, "w") as fh:
                fh.write(repr({"piddir": tmp, "sniffer": tmp, "bpf": FILTER, "resolve": False,
                               "connections": connections}) + "\n")
            settings = config.validate(config.load_file(conf), "nc.sniffer", offline=True)
            began = time.process_time()
            replay.replay(settings, capture, io.StringIO(), quiet=True)
            return spent, time.process_time() - began
    finally:
        for obj, name, f in saved:
            setattr(obj, name, f)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capture", default=CAPTURE)
    args = ap.parse_args()
    os.environ["NCSNIFFER_REPLAY"] = "serial"
    plain, plain_total = profile(args.capture, False)
    conn, conn_total = profile(args.capture, True)
    rows = [[label, side, f"{plain[label]:.3f}", f"{conn[label]:.3f}",
             f"{conn[label] - plain[label]:+.3f}"] for _, _, label, side in STEPS]
    rows.append(["the whole replay", "both", f"{plain_total:.3f}", f"{conn_total:.3f}",
                 f"{conn_total - plain_total:+.3f}"])
    lines = ["# Replay with connections: True, CPU seconds per step (bench/conntrack_profile.py)",
             ""] + machine_lines() + [
        f"- capture: `{os.path.relpath(args.capture)}`, one process (NCSNIFFER_REPLAY=serial); "
        "steps nest (prepare holds flows, process(_counted) holds as_packets, "
        "take_tracked holds peer_slots and add_connections)", ""] + table(
        ["step", "process (two-process replay)", "default (s)", "connections (s)", "extra (s)"],
        rows)
    write_results("conntrack-profile", lines)
    return 0


if __name__ == "__main__":
    run_script(main, "conntrack_profile")
