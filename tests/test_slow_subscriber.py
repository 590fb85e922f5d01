"""A stalled ``nc.sniffer events`` subscriber during a 200,000 packets/s live run (10.4,
issue 13): capture loses nothing, the subscriber is cut off, the log says so.

The testbed is bench/live.py's (two network namespaces joined by a veth, tcpreplay in
the sender's, deleted afterwards); bench/live.py --connections --stalled-subscriber
runs the same at full length.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import live  # noqa: E402
import livecap  # noqa: E402

RATE, SECONDS = 200_000, 3          # 600,000 packets


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("tcpreplay") is None,
                    reason="needs root and tcpreplay")
def test_a_stalled_subscriber_is_cut_off_and_capture_loses_nothing(tmp_path):
    capture = livecap.ensure(str(tmp_path / "zipf.pcap"), "--zipf", "--packets", "100000",
                             "--peers", "20000")
    with live.Testbed() as bed:
        run = live.one_rate(bed, capture, RATE, SECONDS, drain=1.0, connections=True, stalled=True)
        names = (bed.sniff_ns, bed.send_ns)
    counters = run["counters"]
    assert run["sent"]["sent"] == RATE * SECONDS
    assert counters["packets"] == run["sent"]["sent"]          # seen == sent
    assert (counters["dropped"], counters["ifdropped"]) == (0, 0)
    assert counters["cut_off"] == 1                             # "events feed 0 ..., 1 cut off"
    assert "events feed: a subscriber fell" in run["cut_line"]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names)           # the testbed is gone
