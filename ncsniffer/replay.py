"""Offline mode (``nc.sniffer -r FILE start``): replay a capture file.

The clock is the packets' own timestamps, so the numbers are exactly those a
live run would have produced; the purge and other once-a-second work is driven
by packet time too.  At the end of the file, one dump.
"""

from __future__ import annotations

import gc
import os
import struct
import time
from typing import IO

from ncsniffer import batch, bpfvm, capture, pcapfile
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
    batches, linktype, prog, close = _open_file(path, settings) or _open_libpcap(path, settings)
    error: NcSnifferError | None = None
    try:
        sniffer = Sniffer(settings, linktype, now=0, device=path, offline=True,
                          on_second=lambda now, elapsed: tick(now, elapsed))
    except NcSnifferError:
        close()
        raise

    def tick(now: int, elapsed: int) -> None:
        sniffer.acct.purge(now, elapsed)
        if lookups is not None:
            lookups.tick(now)

    if lookups is not None:
        lookups.attach(sniffer)
    progress = Progress(None if quiet else log)
    try:
        for got in batches:
            batch.process(got, prog, linktype, sniffer)
            gc.freeze()      # records never form cycles: keep the collector off them
            if lookups is not None:
                lookups.poll(sniffer.now)
            progress.update(sniffer.seen)
    except CaptureError as exc:
        error = exc
    finally:
        close()
    progress.update(sniffer.seen, final=True)
    if lookups is not None:
        lookups.finish(sniffer.now)

    sniffer.dump(sniffer.now)
    log.write(f"nc.sniffer: {path}: {sniffer.counters_text()}\n")
    if lookups is not None and hasattr(lookups, "counters_text"):
        log.write(f"nc.sniffer: dns {lookups.counters_text()}\n")
    if error is not None:
        log.write(f"nc.sniffer: {error}; stats of the packets read so far were written\n"
                  if sniffer.seen else f"nc.sniffer: {error}\n")
        return 2
    return 0


def _open_libpcap(path: str, settings: Settings):
    """(batches, link type, None, close): libpcap reads and filters (the program is
    applied already); the rest is the live daemon's own path."""
    cap = capture.open_offline(path, settings.bpf)
    return iter(lambda: cap.read_batch(BATCH), None), cap.linktype, None, cap.close


def _open_file(path: str, settings: Settings):
    """(batches, link type, filter program, close) for the batch path, or None to
    replay through libpcap.

    The batch path needs a file layout it knows and a filter program the
    interpreter runs; ``NCSNIFFER_REPLAY=libpcap`` forces the libpcap path
    (the tests compare the two).
    """
    if os.environ.get("NCSNIFFER_REPLAY") == "libpcap":
        return None
    try:
        fh = open(path, "rb")
    except OSError:
        return None
    try:
        reader = pcapfile.Reader(fh, path)
        prog = capture.compile_filter(reader.linktype, settings.bpf)
        bpfvm.check(prog)
    except (pcapfile.Unsupported, pcapfile.Truncated, bpfvm.UnsupportedProgram, CaptureError,
            struct.error):
        fh.close()
        return None
    return _read_batches(reader), reader.linktype, prog, fh.close


def _read_batches(reader: pcapfile.Reader):
    """The reader's batches; a broken file becomes the CaptureError every path reports."""
    try:
        yield from reader.batches()
    except (pcapfile.Truncated, pcapfile.Unsupported, struct.error) as exc:
        raise CaptureError(f"{reader.name}: {exc}") from exc
