"""The drivers' clocks: packet time for a replay, wall time read once per turn live."""

import subprocess
import sys

import pytest

from ncsniffer.clock import PacketClock, WallClock


def test_packet_clock_starts_at_the_first_packet_and_runs_jobs_per_new_second():
    clock, calls = PacketClock(), []
    clock.at_start(lambda t: calls.append(("start", t)))
    clock.every_second(lambda t, elapsed: calls.append(("purge", t, elapsed)))
    clock.every_second(lambda t, elapsed: calls.append(("dns", t, elapsed)))
    for second in (1000, 1000, 1003, 999, 1003, 1004):     # time goes back once
        clock.packets(second)
    assert calls == [("start", 1000), ("purge", 1003, 3), ("dns", 1003, 3),
                     ("purge", 1004, 1), ("dns", 1004, 1)]
    assert clock.now == 1004 and clock.packet_time


def test_wall_clock_reads_the_time_once_per_turn_and_ticks_on_monotonic_time():
    wall, mono, calls = [5000.7], [10.0], []
    clock = WallClock(wall=lambda: wall[0], monotonic=lambda: mono[0], interval=1.0)
    clock.every_second(lambda t, elapsed: calls.append((t, elapsed)))
    assert clock.now == 5000 and not clock.packet_time
    wall[0] = 5001.2
    clock.packets(4000)                  # packets never move the wall clock
    assert clock.now == 5000
    clock.tick_if_due()
    assert calls == []
    mono[0] = 11.0
    assert clock.update() == 5001
    clock.tick_if_due()
    clock.tick_if_due()
    assert calls == [(5001, 1)] and clock.next_tick == 12.0


@pytest.mark.integration
def test_the_pipeline_imports_no_settings_capture_or_file_writing():
    """batch.py's arithmetic stands on its own: no config, dump file, sniffer,
    libpcap or DNS module comes with it (issue 12)."""
    code = ("import sys, ncsniffer.batch; print(' '.join(sorted(m for m in sys.modules "
            "if m.startswith(('ncsniffer', 'pcapy', 'dns', 'daemon')))))")
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                text=True).stdout.split())
    assert not loaded & {"ncsniffer.config", "ncsniffer.dumpfile", "ncsniffer.sniffer",
                         "ncsniffer.capture", "ncsniffer.safefile", "pcapy", "dns", "daemon"}
