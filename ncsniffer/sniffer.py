"""What live capture and replay share: the settings turned into the pipeline's
rules, the accounting on the driver's clock, the counters, and the dump.

The per-packet rules themselves (decode -> payload match -> target address ->
accounting) run over whole batches in ``ncsniffer.batch``, which knows
nothing of this module, the config or the dump file.
"""

from __future__ import annotations

import sys

import numpy as np

from ncsniffer import batch, conncounts, conntrack, dumpfile
from ncsniffer.accounting import Accounting
from ncsniffer.clock import Clock, PacketClock
from ncsniffer.config import Settings
from ncsniffer.dumpfile import Header
from ncsniffer.pcaplib import check_link_type   # sniffer.check_link_type too, as before


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
                               connections=settings.connections,      # the K columns
                               totals=settings.clickhouse is not None)   # the export's X P
        self.rules = batch.Rules(linktype, settings.me_packed, settings.snaplen,
                                 settings.payload, settings.match, settings.nomatch,
                                 settings.connections)
        self.counters = batch.Counters()
        # Connection tracking (10): the tracker, fed each batch's FLOW records; its
        # events go to the K counters and to ``events`` (the driver's Events, or None).
        self.tracker: conntrack.Tracker | None = None
        self.events = None
        # What a record made while its peer has connections open counts (10.3): the
        # tracker's open counts, live (SIGHUP) and in a replay from its first eviction
        # or purge; events fed without their tracker use a tally kept here (the twin).
        self.carry_open = not self.offline
        self._open: dict[tuple, np.ndarray] = {}      # the twin's: per peer, open ones begun
        if settings.connections and flows is None:
            self.tracker = conntrack.Tracker(conntrack.Timeouts.from_config(settings.timeouts),
                                             settings.max_connections)
            flows = self._track
            if not self.carry_open:
                self.acct.before_deletions = self._carry_from_now
        self.flows = flows
        # A two-process replay tracks in its reading process (``track_ahead``): here,
        # its drained connections at the end.
        self._drained: np.ndarray | None = None
        if isinstance(clock, PacketClock):
            clock.at_start(self.reset)                # replay: start at the first packet
        clock.every_second(self.acct.purge)
        if self.tracker is not None and not self.offline:
            clock.every_second(self._tick)            # live: expiry on idle seconds

    # ----------------------------------------------------------- connections
    def _track(self, flows, clock=None) -> None:
        self.take_tracked(self.tracker.process_counted(flows, self.events is not None))

    def _tick(self, now: int, elapsed: int) -> None:
        self.take_tracked(self.tracker.advance_counted(now, self.events is not None))

    def tracks_ahead(self) -> bool:
        """Whether a replay's reading process can run this tracker (``track_ahead``)."""
        return self.tracker is not None and self.offline and self.flows == self._track

    def track_ahead(self, p: batch.Prepared) -> batch.Prepared:
        """The reading process's part of a two-process replay (its forked copy of the
        tracker): the batch's FLOW records become its K per peer (``Tracked``), which
        the counting process takes (``take_tracked``) where ``batch.apply`` would have
        fed the records (only a batch with packets passed); the events too if an events
        file (or export) takes them.  Forked after ``events`` is set: the same sink."""
        if p.flows is not None and p.seen:
            p.tracked = self.tracker.process_counted(p.flows, self.events is not None)
        p.flows = None
        return p

    def drain_ahead(self) -> np.ndarray:
        """The reading process's end: the connections still open, drained; none when
        no events file (or export) takes them (nothing else reads them: K counts
        no drain), which saves the end of the replay their events and the pipe."""
        if self.events is None:
            return np.zeros(0, conntrack.EVENT_DTYPE)
        return self.tracker.drain()

    def take_tracked(self, tracked: conntrack.Tracked) -> None:
        """A batch's K per peer, from this sniffer's tracker or from a replay's reading
        process (after ``batch.apply`` of the batch): into the peers' records, a record
        that counts no connection yet with its peer's open ones as begun (once records
        can go: ``carry_open``); the events to the sink."""
        if len(tracked):
            records = self.acct.records
            slots = records.peer_slots(tracked.peers)
            deltas = tracked.deltas
            if self.carry_open:
                fresh = np.flatnonzero(records.conn_unbegun(slots))
                if fresh.size:
                    deltas = deltas.copy()
                    deltas[fresh] += tracked.before[fresh]
            records.add_connections(slots, deltas)
        if self.events is not None and tracked.events is not None and len(tracked.events):
            self.events.push(tracked.events)

    def set_drained(self, drained: np.ndarray) -> None:
        self._drained = drained

    def drain_connections(self) -> np.ndarray | None:
        """The end of a replay: the open connections drained (None without tracking)."""
        if self._drained is not None:
            return self._drained
        return self.tracker.drain() if self.tracker is not None else None

    def feed(self, events: np.ndarray, tracker: conntrack.Tracker | None = None) -> None:
        """``take_tracked``'s plain twin, from events: events of ``tracker`` (just made:
        its open counts are those after them) into K counters of their peers' records,
        then the events sink.  Without ``tracker`` the open connections come from a
        tally kept here batch by batch (exact when kept from the start, as live)."""
        if not len(events):
            return
        peers, deltas = conncounts.count(events)
        slots = self.acct.records.peer_slots(peers)
        if self.carry_open:
            self._count_open_as_begun(events, peers, slots, deltas, tracker)
            if tracker is None:
                conncounts.remember_open(self._open, events)
        self.acct.records.add_connections(slots, deltas)
        if self.events is not None:
            self.events.push(events)

    def _carry_from_now(self) -> None:
        """A replay's records are about to go (evicted or purged): from now on a record
        made anew counts its peer's open connections (``Tracked.before``).  Until now no
        record went, so every record counted its peer's connections from their beginning."""
        self.carry_open = True

    def _count_open_as_begun(self, events: np.ndarray, peers: np.ndarray, slots: np.ndarray,
                             deltas: np.ndarray, tracker: conntrack.Tracker | None) -> None:
        """A record made after its peer's open connections began (after a SIGHUP, or anew
        after a purge or an eviction) counts them as begun with its first events, so that
        their ends count too and the sums of 10.3 hold.  Such a record counts no
        connection yet: any other has had its first events."""
        fresh = np.flatnonzero(self.acct.records.conn_unbegun(slots))
        if not fresh.size:
            return
        if tracker is not None:
            after = tracker.open_counts(peers[fresh])
            deltas[fresh] += conncounts.open_before(events, fresh, after)
            return
        for i, key in zip(fresh.tolist(), peers[fresh].tolist()):
            begun = self._open.get(tuple(key))
            if begun is not None:
                deltas[i] += begun

    def reset(self, now: int) -> None:
        """Start a new data set (start-up, SIGHUP).  With connection tracking, the
        connections still open are counted as begun in the new one (10.3): the new
        record of each such peer gets them with its first events, so that an end is
        never counted without its beginning (``_count_open_as_begun``)."""
        self.acct.reset(now)

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
