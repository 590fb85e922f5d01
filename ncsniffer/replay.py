"""Offline mode (``nc.sniffer -r FILE start``): replay a capture file.

The clock is the packets' own timestamps, so the numbers are exactly those a
live run would have produced; the purge and other once-a-second work is driven
by packet time too.  At the end of the file, one dump.
"""

from __future__ import annotations

import sys
import time
from typing import IO

from ncsniffer import capture, dumpfile
from ncsniffer.config import Settings
from ncsniffer.errors import CaptureError, NcSnifferError
from ncsniffer.sniffer import Sniffer

BATCH = 20000
PROGRESS_AFTER = 2.0   # seconds of wall time before progress lines appear


class Progress:
    """Progress lines on stderr for files that take a while: packets and rate."""

    def __init__(self, stream: IO[str] | None, clock=time.monotonic):
        self.stream = stream
        self.clock = clock
        self.began = clock()
        self.last = self.began

    def update(self, packets: int, final: bool = False) -> None:
        if self.stream is None:
            return
        now = self.clock()
        if now - self.began < PROGRESS_AFTER or (not final and now - self.last < 1.0):
            return
        self.last = now
        rate = packets / max(now - self.began, 1e-9)
        self.stream.write(f"nc.sniffer: {packets:,} packets, {rate:,.0f} packets/s"
                          f"{' (done)' if final else ''}\n")
        self.stream.flush()


def replay(settings: Settings, path: str, log: IO[str], quiet: bool = False,
           lookups=None) -> int:
    """Replay ``path``; write the stats; return the exit code (0, or 2 on a bad file)."""
    cap = capture.open_offline(path, settings.bpf)
    error: NcSnifferError | None = None
    sniffer = Sniffer(settings, cap.linktype, now=0, device=path, offline=True,
                      on_second=lambda now, elapsed: tick(now, elapsed))

    def tick(now: int, elapsed: int) -> None:
        sniffer.acct.purge(now, elapsed)
        if lookups is not None:
            lookups.tick(now)

    if lookups is not None:
        lookups.attach(sniffer)
    progress = Progress(None if quiet else log)
    packet = sniffer.packet
    try:
        while True:
            n = cap.dispatch(BATCH, packet)
            if lookups is not None:
                lookups.poll(sniffer.now)
            progress.update(sniffer.seen)
            if n <= 0:
                break
    except CaptureError as exc:
        error = exc
    finally:
        cap.close()
    progress.update(sniffer.seen, final=True)
    if lookups is not None:
        lookups.finish(sniffer.now)

    write_dump(settings, sniffer, sniffer.now)
    log.write(f"nc.sniffer: {path}: {sniffer.counters_text()}\n")
    if error is not None:
        log.write(f"nc.sniffer: {error}; stats of the packets read so far were written\n"
                  if sniffer.seen else f"nc.sniffer: {error}\n")
        return 2
    return 0


def write_dump(settings: Settings, sniffer: Sniffer, current: int) -> None:
    """Write the stats file (or to stderr when the config says 'STDERR' / ``-d``)."""
    header = sniffer.header(current)
    rows = dumpfile.rows_from_records(sniffer.acct.records)
    if settings.stats_file is None:
        dumpfile.write_stream(sys.stderr, header, rows, settings.dump_format)
    else:
        dumpfile.write_file(settings.stats_file, header, rows, settings.dump_format)
