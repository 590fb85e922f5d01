"""What live capture and replay share: the accounting, the settings that the
per-packet rules need, the packet clock, the counters, and the dump header.

The per-packet rules themselves (decode -> payload match -> target address ->
accounting) run over whole batches in ``ncsniffer.batch``.
"""

from __future__ import annotations

import sys
from typing import Callable

from ncsniffer import capture, decode, dumpfile, linktypes
from ncsniffer.accounting import Accounting
from ncsniffer.config import Settings
from ncsniffer.dumpfile import Header
from ncsniffer.errors import CaptureError


def check_link_type(linktype: int, source: str) -> None:
    """Refuse a link type the table does not hold, naming it (before any filter
    is compiled for it: the filter is not what is wrong)."""
    if linktypes.lookup(linktype) is None:
        raise CaptureError(f"{source}: link type {capture.link_type_name(linktype)} "
                           "is not supported")


class Sniffer:
    """The state behind one capture: accounting, clock, counters, header."""

    def __init__(self, settings: Settings, linktype: int, now: int, device: str,
                 offline: bool = False, on_second: Callable[[int, int], None] | None = None):
        check_link_type(linktype, device)
        self.settings = settings
        self.device = device
        self.offline = offline
        self.acct = Accounting(now, settings.max_hosts, lookups=settings.resolve)
        self.me = settings.me_packed
        self.match = settings.match
        self.nomatch = settings.nomatch
        self.payload = settings.payload
        self.snaplen = settings.snaplen
        self.on_second = on_second
        self.seen = 0          # frames the bpf let through
        self.counted = 0
        self.unmatched = 0     # dropped by match / nomatch
        self.undecoded = {decode.TRUNCATED: 0, decode.NOT_IP: 0, decode.INVALID: 0}
        self._second = None    # the current second, as one shared int object
        self.now = now

    def advance(self, now: int) -> int:
        """Move the clock to ``now`` (ticks when replaying); return the shared int."""
        if now == self._second:
            return self._second
        previous = self._second
        self._second = now
        if self.offline:
            if previous is None:
                self.acct.reset(now)          # replay: start at the first packet
            elif now > self.now and self.on_second is not None:
                self.on_second(now, now - self.now)
        if now > self.now or previous is None:
            self.now = now
        return now

    def header(self, current: int) -> Header:
        s = self.settings
        acct = self.acct
        return Header(
            start=acct.start, current=current, hits=acct.hits_per_minute(),
            bytes=acct.bytes_per_second(), users=len(acct.records), device=self.device,
            promiscuous=s.promiscuous and not self.offline, bpf=s.bpf, payload=s.payload,
            snaplen=s.snaplen, match=s.match, nomatch=s.nomatch,
            evicted=acct.evicted if s.raw.get("max_hosts") or acct.evicted else None,
        )

    def dump(self, current: int) -> None:
        """Write the stats file, or to stderr when the config says 'STDERR' (``-d``)."""
        s = self.settings
        rows = dumpfile.rows_from_records(self.acct.records)
        if s.stats_file is None:
            dumpfile.write_stream(sys.stderr, self.header(current), rows, s.dump_format)
        else:
            dumpfile.write_file(s.stats_file, self.header(current), rows, s.dump_format)

    def counters_text(self) -> str:
        u = self.undecoded
        return (f"{self.seen} packets, {self.counted} counted, {self.unmatched} unmatched, "
                f"{u[decode.TRUNCATED]} truncated, {u[decode.NOT_IP]} non-IP, "
                f"{u[decode.INVALID]} invalid, {len(self.acct.records)} hosts")
