"""What live capture and replay share: the settings turned into the pipeline's
rules, the accounting on the driver's clock, the counters, and the dump.

The per-packet rules themselves (decode -> payload match -> target address ->
accounting) run over whole batches in ``ncsniffer.batch``, which knows
nothing of this module, the config or the dump file.
"""

from __future__ import annotations

import sys

from ncsniffer import batch, capture, dumpfile, linktypes
from ncsniffer.accounting import Accounting
from ncsniffer.clock import Clock, PacketClock
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
    """The state behind one capture: rules, accounting, clock, counters, header.

    ``clock`` is the driver's: a ``PacketClock`` for a replay (which then starts
    at the first packet), a ``WallClock`` for the daemon.  The purge is its
    first per-second job.  With ``connections`` set, each batch's FLOW records
    go to ``flows`` (the connection tracker, when one is plugged in)."""

    def __init__(self, settings: Settings, linktype: int, clock: Clock, device: str,
                 flows: batch.FlowConsumer | None = None):
        check_link_type(linktype, device)
        self.settings = settings
        self.device = device
        self.clock = clock
        self.offline = isinstance(clock, PacketClock)
        self.acct = Accounting(clock.now, settings.max_hosts,
                               totals=settings.clickhouse is not None)   # the export's X P
        self.rules = batch.Rules(linktype, settings.me_packed, settings.snaplen,
                                 settings.payload, settings.match, settings.nomatch,
                                 settings.connections)
        self.flows = flows
        self.counters = batch.Counters()
        if isinstance(clock, PacketClock):
            clock.at_start(self.acct.reset)           # replay: start at the first packet
        clock.every_second(self.acct.purge)

    def process(self, got, prog=None) -> None:
        """Account a batch of packets (``prog`` None: the kernel filtered them)."""
        batch.process(got, prog, self.rules, self.counters, self.acct, self.clock, self.flows)

    def header(self, current: int) -> Header:
        s = self.settings
        acct = self.acct
        return Header(
            start=acct.start, current=current, hits=acct.hits_per_minute(),
            bytes=acct.bytes_per_second(), users=len(acct.records), device=self.device,
            promiscuous=s.promiscuous and not self.offline, bpf=s.bpf, payload=s.payload,
            snaplen=s.snaplen, match=s.match, nomatch=s.nomatch,
            evicted=acct.evicted if s.raw.get("max_hosts") or acct.evicted else None,
            connections=acct.records.conn_totals(),
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
        return self.counters.text(len(self.acct.records))
