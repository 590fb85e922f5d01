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

from ncsniffer import capture
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
    fast = _open_batches(path, settings)
    linktype = fast[1] if fast else None
    cap = None if fast else capture.open_offline(path, settings.bpf)
    error: NcSnifferError | None = None
    sniffer = Sniffer(settings, linktype if fast else cap.linktype, now=0, device=path,
                      offline=True, on_second=lambda now, elapsed: tick(now, elapsed))

    def tick(now: int, elapsed: int) -> None:
        sniffer.acct.purge(now, elapsed)
        if lookups is not None:
            lookups.tick(now)

    def after_batch() -> None:
        if lookups is not None:
            lookups.poll(sniffer.now)
        progress.update(sniffer.seen)

    if lookups is not None:
        lookups.attach(sniffer)
    progress = Progress(None if quiet else log)
    try:
        if fast:
            _replay_batches(fast, sniffer, after_batch)
        else:
            _replay_libpcap(cap, sniffer, after_batch)
    except CaptureError as exc:
        error = exc
    finally:
        if fast:
            fast[0].fh.close()
        else:
            cap.close()
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


def _replay_libpcap(cap, sniffer: Sniffer, after_batch) -> None:
    """libpcap reads and filters; the rest is the live daemon's own path."""
    from ncsniffer import batch
    while True:
        got = cap.read_batch(BATCH)
        if got is None:
            break
        batch.process(got, None, cap.linktype, sniffer)
        gc.freeze()
        after_batch()


def _open_batches(path: str, settings: Settings):
    """(reader, linktype, program) for the batch path, or None to replay through libpcap.

    The batch path needs numpy, a file layout and link type it knows, and a
    filter program the interpreter runs; ``NCSNIFFER_REPLAY=libpcap`` forces
    the packet-by-packet path (the tests compare the two).
    """
    if os.environ.get("NCSNIFFER_REPLAY") == "libpcap":
        return None
    try:
        from ncsniffer import batch, bpfvm, pcapfile
    except ImportError:
        return None
    try:
        fh = open(path, "rb")
    except OSError:
        return None
    try:
        reader = pcapfile.Reader(fh, path)
        if not batch.supported(reader.linktype):
            raise pcapfile.Unsupported("link type")
        prog = capture.compile_filter(reader.linktype, settings.bpf)
        bpfvm.check(prog)
    except (pcapfile.Unsupported, pcapfile.Truncated, bpfvm.UnsupportedProgram, CaptureError,
            struct.error):
        fh.close()
        return None
    return reader, reader.linktype, prog


def _replay_batches(fast, sniffer: Sniffer, after_batch) -> None:
    from ncsniffer import batch, pcapfile
    reader, linktype, prog = fast
    try:
        for b in reader.batches():
            batch.process(b, prog, linktype, sniffer)
            gc.freeze()      # records never form cycles: keep the collector off them
            after_batch()
    except (pcapfile.Truncated, struct.error) as exc:
        raise CaptureError(f"{reader.name}: {exc}") from exc
