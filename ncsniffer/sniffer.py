"""The per-packet pipeline shared by live capture and replay.

decode -> payload match -> target address -> accounting.  The hot path does
no logging, no clock reads and no allocation beyond the address slices.
"""

from __future__ import annotations

from typing import Callable

from ncsniffer import decode
from ncsniffer.accounting import Accounting
from ncsniffer.config import Settings
from ncsniffer.dumpfile import Header
from ncsniffer.errors import CaptureError


class Sniffer:
    """Turns captured frames into accounting updates, and knows what the header says."""

    def __init__(self, settings: Settings, linktype: int, now: int, device: str,
                 offline: bool = False, on_second: Callable[[int, int], None] | None = None):
        decoder = decode.decoder_for(linktype)
        if decoder is None:
            raise CaptureError(f"{device}: link type {decode.link_name(linktype)} is not supported")
        self.settings = settings
        self.device = device
        self.offline = offline
        self.decoder = decoder
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

    def packet(self, now: int, wirelen: int, data: bytes) -> None:
        """Account one frame captured at ``now`` whose wire length is ``wirelen``."""
        if now != self._second:
            self.advance(now)
        now = self._second
        self.seen += 1
        src, dst = self.decoder(data)
        if src is None:
            self.undecoded[dst] += 1
            return
        if self.payload is not None:
            window = data[self.payload:self.snaplen].lower()
            if (self.match is not None and self.match not in window) or \
               (self.nomatch is not None and self.nomatch in window):
                self.unmatched += 1
                return
        self.counted += 1
        self.acct.count(dst if src == self.me else src, wirelen, now)

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
            evicted=acct.evicted if s.max_hosts else None,
        )

    def counters_text(self) -> str:
        u = self.undecoded
        return (f"{self.seen} packets, {self.counted} counted, {self.unmatched} unmatched, "
                f"{u[decode.TRUNCATED]} truncated, {u[decode.NOT_IP]} non-IP, "
                f"{u[decode.INVALID]} invalid, {len(self.acct.records)} hosts")
