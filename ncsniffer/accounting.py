"""Per-IP traffic accounting: the exact arithmetic of Net::Connection::Sniffer.

Pure logic: the time ``now`` (integer epoch seconds) is always passed in, so
replaying a capture gives the numbers a live run would have given, and tests
need no clock.  Keys are packed addresses (4 or 16 bytes).

The rules of SPEC 4 are sequential per packet, but their state changes rarely:
the global counters update at most once a minute and a record at most once in
five minutes.  So a run of packets is taken in whole: find, with numpy, the
next packet at which each rule updates, apply that update, repeat; everything
between two updates is a sum.  The result is the same, bit for bit, as
applying the rules packet by packet (``tests/test_accounting.py`` checks it
against a plain model).  Records live in parallel arrays (``ncsniffer.table``).

Names are not kept here: the accounting only tells a ``Names`` sink (the
resolver's queue) which IP needs a name (its T has passed) and which IP is
gone; the resolver writes N and T through the table.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Protocol, Sequence

import numpy as np

from ncsniffer import fastread
from ncsniffer.table import Addresses, Table

ONEHOUR = 3600
ONEDAY = 86400
IP_INTERVAL = 300          # seconds between rate updates of one IP
GLOBAL_INTERVAL = 60       # seconds between global rate updates ...
FIRST_GLOBAL_INTERVAL = 300  # ... except the first one
FIRST_PACKETS = 5          # both rules wait for this many packets while starting
PURGE_BATCH = 10000        # records examined per second of purge work
MAX_DEPARTED = 100_000     # records gone between two export ticks whose last traffic is kept
NEVER = 1 << 62            # ``split_at`` when no export cuts the packet time


class Names(Protocol):
    """Where the accounting says which IPs need a name (the resolver's queue)."""

    def want(self, key: bytes) -> None:
        """``key``'s name is due; asking again while it waits changes nothing."""

    def drop(self, key: bytes) -> None:
        """``key``'s record is gone (evicted or purged): no name is needed."""

    def __len__(self) -> int:
        """How many IPs wait for a name."""


def count_one(st: list, now: int, length: int) -> None:
    """SPEC 4.2 for one packet of a record whose [B, C, E, S, R, W] is ``st``."""
    b, c, e, s, r, w = st
    if e + IP_INTERVAL > now or (e == s and c < FIRST_PACKETS):
        st[0], st[1] = b + length, c + 1
    else:
        m = 3600.0 / (now - s if s == e else ONEHOUR + now - e)
        st[4], st[5] = (r + c) * m, (w + b) * m
        st[0], st[1], st[2] = length, 1, now


class States:
    """Records taken packet by packet: their fields as Python numbers while a run
    lasts (numpy's one-element access costs several times a list's), stored back
    into the columns at its end."""

    FIELDS = ("B", "C", "E", "S", "R", "W")

    def __init__(self, cols: dict):
        self.cols = cols
        self.held: dict[int, list] = {}

    def count(self, slot: int, now: int, length: int) -> None:
        """SPEC 4.2 for one packet of the record in ``slot``."""
        count_one(self.held.get(slot) or self.load(slot), now, length)

    def load(self, slot: int) -> list:
        st = self.held[slot] = [self.cols[f].item(slot) for f in self.FIELDS]
        return st

    def create(self, slot: int, now: int, start: int) -> list:
        """A new record's fields (B = C = 0, E = now, S = start), as ``Table.slots``
        makes them; its first packet is then counted by the ordinary rule."""
        st = self.held[slot] = [0, 0, now, start, 0.0, 0.0]
        return st

    def forget(self, slot: int) -> None:
        """The record in ``slot`` is deleted: nothing of it to store."""
        self.held.pop(slot, None)

    def store(self) -> None:
        if not self.held:
            return
        slots = np.fromiter(self.held, np.int64, len(self.held))
        for i, f in enumerate(self.FIELDS):
            self.cols[f][slots] = [st[i] for st in self.held.values()]
        self.held.clear()


class Accounting:
    """Global counters, per-IP records and the daily purge; with ``names``, it
    tells them which IPs need a name."""

    def __init__(self, now: int, max_hosts: int | None = None, names: Names | None = None,
                 connections: bool = False, totals: bool = False):
        self.max_hosts = max_hosts
        self.connections = connections      # records carry the K counters of 10.3
        self.names = names
        self.evicted = 0
        self.purged = 0
        # Called once, before the first record is evicted or purged (connection tracking
        # then starts to keep what a record made anew needs, 10.3).
        self.before_deletions: Callable[[], object] | None = None
        # With ``totals`` (an export): columns X P count each record's bytes and
        # packets since the exporter last took them, and records that go (purge,
        # eviction, SIGHUP) leave their untaken traffic in ``departed``.
        self.totals = totals
        self.departed: list[tuple] = []
        self.departed_lost = 0        # records gone with traffic beyond MAX_DEPARTED
        self.split_at = NEVER         # replay: count second by second from here (an export tick)
        self.records = Table(totals=totals)
        self.reset(now)

    # ----------------------------------------------------------------- state
    def reset(self, now: int) -> None:
        """Start over: as at start-up and on SIGHUP."""
        self.start = now
        self.rate = 0      # packets per hour (global)
        self.bw = 0        # bytes per hour (global)
        self.ra = 0        # packets since the last global update
        self.ba = 0        # bytes since the last global update
        self.nextrate = FIRST_GLOBAL_INTERVAL
        self.next = now + FIRST_GLOBAL_INTERVAL
        if self.totals:
            self._depart(self.records.occupied())
        self.records = Table(connections=self.connections, totals=self.totals)
        # The LRU order of max_hosts, kept one of two ways: far from the limit as
        # each slot's last-seen number (column Q, numpy per run); at the limit,
        # where evictions go packet by packet, as an OrderedDict key -> slot.
        self._recent: OrderedDict[bytes, int] = OrderedDict()
        self._by_seen = True
        self._seen = 0             # packets so far: the next last-seen number
        self._purge_keys: list[bytes] = []
        self._purge_pos = 0
        self._purge_began = now
        self._purge_min_e = now    # lower bound of every record's E
        self._pass_min_e = now

    # ----------------------------------------------------------------- counting
    def count(self, key: bytes, length: int, now: int) -> None:
        """Account one packet of ``length`` wire bytes exchanged with ``key`` at ``now``."""
        self.count_run((key,), (length,), now)

    def count_run(self, keys: Sequence[bytes], lengths: Sequence[int], now: int) -> None:
        """Account packets that all arrived in the second ``now``, in this order."""
        unique = list(dict.fromkeys(keys))
        where = {k: i for i, k in enumerate(unique)}
        n = len(keys)
        self.count_packets(unique, np.array([where[k] for k in keys], np.int64),
                           np.full(n, now, np.int64), np.array(lengths, np.int64))

    def count_packets(self, addrs: Addresses | Sequence[bytes], which: np.ndarray,
                      secs: np.ndarray, lengths: np.ndarray,
                      ask: bool = True) -> np.ndarray | None:
        """Account packets in order: packet i exchanged ``lengths[i]`` bytes with
        address ``which[i]`` of ``addrs`` in the second ``secs[i]`` (``addrs`` may
        also be a list of distinct packed keys).  Returns each packet's slot, for
        ``ask_names`` when ``ask`` is False (None with evictions: they ask
        packet by packet)."""
        if not isinstance(addrs, Addresses):
            addrs, which = Addresses.of(addrs, which)
        if not len(which):
            return np.zeros(0, np.int64)
        secs = secs.astype(np.int64, copy=False)
        lengths = lengths.astype(np.int64, copy=False)
        low = int(secs.min())               # keep the purge's lower bound of E true
        self._purge_min_e = min(self._purge_min_e, low)
        self._pass_min_e = min(self._pass_min_e, low)
        self._global(secs, lengths)
        if self.max_hosts and len(self.records) + len(addrs) > self.max_hosts and \
                len(self.records) + int(np.count_nonzero(
                self.records.find_addresses(addrs) < 0)) > self.max_hosts:
            self._deleting()
            self._count_lru(addrs, which, secs, lengths)     # evictions: packet by packet
            return None
        slots = self._count_columns(addrs, which, secs, lengths)
        if self.totals:
            np.add.at(self.records.cols["X"], slots, lengths)
            np.add.at(self.records.cols["P"], slots, 1)
        if self.max_hosts:
            if self._by_seen or len(self.records) < self.max_hosts // 2:
                self._mark_seen(slots)
            else:
                self._remember_order(addrs, which, slots)
        if ask:
            self.ask_names(slots, secs)
        return slots

    @property
    def recent(self) -> OrderedDict[bytes, int] | None:
        """With ``max_hosts``: key -> slot, least recently seen first."""
        if not self.max_hosts:
            return None
        if self._by_seen:
            table = self.records
            slots = table.occupied()
            slots = slots[np.argsort(table.cols["Q"][slots], kind="stable")]
            self._recent = OrderedDict(zip(table.keys_at(slots), slots.tolist()))
            self._by_seen = False
        return self._recent

    def _mark_seen(self, slots: np.ndarray) -> None:
        """Number the run's records in the order of their last packets."""
        if not self._by_seen:                # back from the limit: order to numbers
            order = np.fromiter(self._recent.values(), np.int64, len(self._recent))
            self.records.cols["Q"][order] = np.arange(self._seen, self._seen + len(order))
            self._seen += len(order)
            self._recent.clear()
            self._by_seen = True
        n = len(slots)
        # every Q so far is below _seen: the maximum is each slot's last packet (as
        # np.unique of the reversed slots finds it, a sort: 25x slower; issue 16)
        if fastread.enabled():
            fastread.number_last(slots, self.records.cols["Q"], self._seen)
        else:                                   # the plain twin
            np.maximum.at(self.records.cols["Q"], slots, np.arange(self._seen, self._seen + n))
        self._seen += n

    def _remember_order(self, addrs: Addresses, which: np.ndarray, slots: np.ndarray) -> None:
        """Move the run's addresses to the recent end of the LRU order, in the
        order of their last packets (as packet by packet would have)."""
        order = _stable_order(which, len(addrs))
        w = which[order]
        last = np.flatnonzero(np.append(w[1:] != w[:-1], True))
        last = last[np.argsort(order[last])]
        keys, recent = addrs.keys(), self.recent
        for a, slot in zip(w[last].tolist(), slots[order[last]].tolist()):
            key = keys[a]
            recent[key] = slot
            recent.move_to_end(key)

    # ----------------------------------------------------------------- global rule
    def _global(self, secs: np.ndarray, lengths: np.ndarray) -> None:
        """SPEC 4.1 over a run of packets: jump from one update to the next."""
        n = len(secs)
        sums = _prefix(lengths)
        ordered = _nondecreasing(secs)
        p = 0
        while p < n:
            k = p + max(0, FIRST_PACKETS - self.ra) if self.rate < 1 else p
            k = _first_at_or_after(secs, k, self.next, ordered)
            if k >= n:
                break
            now = int(secs[k])
            ra = self.ra + (k - p)
            ba = self.ba + int(sums[k] - sums[p])
            if self.rate < 1:
                dt = max(now - self.start, 1)
            else:
                dt = ONEHOUR + now + self.nextrate - self.next
            m = 3600.0 / dt
            self.rate = (self.rate + ra) * m
            self.bw = (self.bw + ba) * m
            self.ba = int(lengths[k])
            self.ra = 1
            self.next = now + GLOBAL_INTERVAL
            self.nextrate = GLOBAL_INTERVAL
            p = k + 1
        self.ra += n - p
        self.ba += int(sums[n] - sums[p])

    # ----------------------------------------------------------------- per-IP rule
    def _count_columns(self, addrs: Addresses, which, secs, lengths) -> np.ndarray:
        """SPEC 4.2 for all packets; returns each packet's slot.  In C packet by
        packet where built (``fastread``), else by numpy IP by IP, its plain twin."""
        if fastread.enabled():
            return self._count_columns_c(addrs, which, secs, lengths)
        return self._count_columns_numpy(addrs, which, secs, lengths)

    def _count_columns_c(self, addrs: Addresses, which, secs, lengths) -> np.ndarray:
        """``_count_columns`` by ``fastread.count_records``: the records made in
        the same order (by address), then each packet counted in order."""
        first = fastread.first_packets(which, len(addrs))
        present = np.flatnonzero(first >= 0)
        subset = addrs if len(present) == len(addrs) else addrs.take(present)
        slot_of = np.zeros(len(addrs), np.int64)
        slot_of[present] = self.records.slots(subset, secs[first[present]], self.start)
        slots = slot_of[which]
        fastread.count_records(slots, secs, lengths, self.records.cols, IP_INTERVAL,
                               FIRST_PACKETS, ONEHOUR)
        return slots

    def _count_columns_numpy(self, addrs: Addresses, which, secs, lengths) -> np.ndarray:
        """``_count_columns`` IP by IP over the packets sorted by address."""
        order = _stable_order(which, len(addrs))
        w = which[order]
        first = np.flatnonzero(np.concatenate(([True], w[1:] != w[:-1])))
        present = addrs if len(first) == len(addrs) else addrs.take(w[first])
        gslots = self.records.slots(present, secs[order[first]], self.start)
        slot_of = np.zeros(len(addrs), np.int64)
        slot_of[w[first]] = gslots
        t, ln = secs[order], lengths[order]
        ends = np.append(first[1:], len(w))
        group = np.repeat(np.arange(len(first)), ends - first)
        slow = np.zeros(len(first), bool)      # time goes back inside: packet by packet
        slow[group[np.flatnonzero((t[1:] < t[:-1]) & (group[1:] == group[:-1]))]] = True
        if slow.any():
            rows = np.flatnonzero(slow[group])
            states = States(self.records.cols)
            for slot, now, length in zip(gslots[group[rows]].tolist(), t[rows].tolist(),
                                         ln[rows].tolist()):
                states.count(slot, now, length)
            states.store()
            t = np.where(slow[group], t.min(), t)     # keeps the search array sorted
        fast = np.flatnonzero(~slow)
        if fast.size:
            self._groups(gslots[fast], first[fast], ends[fast], group, t, ln)
        return slot_of[which]

    def _groups(self, slots, starts, ends, group, t, ln) -> None:
        """The per-IP rule over groups of packets sorted by IP, time non-decreasing
        inside each group: one numpy step per round of updates."""
        c = self.records.cols
        B, C, E = c["B"][slots], c["C"][slots], c["E"][slots]
        S, R, W = c["S"][slots], c["R"][slots], c["W"][slots]
        p = starts.copy()
        sums = _prefix(ln)
        lo = int(t.min())
        span = int(t.max()) - lo + 2
        ordered = group * span + (t - lo)      # one sorted array: group, then time
        base = group[starts] * span
        live = np.arange(len(slots))
        while live.size:
            g = live
            due = np.clip(E[g] + IP_INTERVAL - lo, 0, span - 1)
            k = np.maximum(np.searchsorted(ordered, base[g] + due), p[g])
            young = E[g] == S[g]            # first interval: five packets first
            k = np.where(young, np.maximum(k, p[g] + np.maximum(FIRST_PACKETS - C[g], 0)), k)
            hit = k < ends[g]
            g, k = g[hit], k[hit]
            if not g.size:
                break
            now = t[k]
            count = C[g] + (k - p[g])
            size = B[g] + (sums[k] - sums[p[g]])
            m = 3600.0 / np.where(young[hit], now - S[g], ONEHOUR + now - E[g])
            R[g] = (R[g] + count) * m
            W[g] = (W[g] + size) * m
            E[g], B[g], C[g], p[g] = now, ln[k], 1, k + 1
            live = g
        C += ends - p
        B += sums[ends] - sums[p]
        for name, col in (("B", B), ("C", C), ("E", E), ("R", R), ("W", W)):
            c[name][slots] = col

    def _count_lru(self, addrs: Addresses, which, secs, lengths) -> None:
        """With ``max_hosts``: packet by packet, evicting the least recently seen IP
        (an evicted slot may be reused at once, so nothing can be deferred).
        ``recent`` maps each key to its slot, least recently seen first."""
        table, recent, limit = self.records, self.recent, self.max_hosts
        cols = table.cols          # the dict: add_one may replace its grown columns
        names = self.names
        keys = addrs.keys()
        states = States(table.cols)
        held, load = states.held, states.load
        totals: dict[int, list] | None = {} if self.totals else None   # slot -> [bytes, packets]
        for u, now, length in zip(which.tolist(), secs.tolist(), lengths.tolist()):
            key = keys[u]
            slot = recent.get(key)
            if slot is None:
                while table.count >= limit and recent:
                    old, gone = recent.popitem(last=False)
                    if names is not None:
                        names.drop(old)
                    if totals is not None:
                        self._depart_one(gone, held.get(gone), totals.pop(gone, None))
                    states.forget(gone)
                    table.release_one(gone)
                    self.evicted += 1
                slot = recent[key] = table.add_one(key)
                st = states.create(slot, now, self.start)
            else:
                recent.move_to_end(key)
                st = held.get(slot) or load(slot)
            count_one(st, now, length)
            if totals is not None:
                t = totals.get(slot)
                if t is None:
                    totals[slot] = [length, 1]
                else:
                    t[0] += length
                    t[1] += 1
            if names is not None and cols["T"].item(slot) < now:
                names.want(key)
        states.store()
        if totals:
            at = np.fromiter(totals, np.int64, len(totals))
            cols["X"][at] += [t[0] for t in totals.values()]
            cols["P"][at] += [t[1] for t in totals.values()]
        table.flush()

    def _deleting(self) -> None:
        """Records are about to go: the ``before_deletions`` hook, once."""
        hook, self.before_deletions = self.before_deletions, None
        if hook is not None:
            hook()

    def count_connections(self, peers: np.ndarray, deltas: np.ndarray) -> None:
        """Add the K deltas of ``conncounts.count`` (its peers and rows) to the
        records of those peers; peers without a record are skipped."""
        self.records.add_connections(self.records.peer_slots(peers), deltas)

    # ----------------------------------------------------------------- departures
    def _depart(self, slots: np.ndarray) -> None:
        """Records about to be deleted: keep the traffic the exporter has not taken."""
        c = self.records.cols
        slots = slots[c["P"][slots] > 0]
        room = max(MAX_DEPARTED - len(self.departed), 0)
        if len(slots) > room:
            self.departed_lost += len(slots) - room
            slots = slots[:room]
        if len(slots):
            self.departed.extend(zip(
                self.records.keys_at(slots), c["X"][slots].tolist(), c["P"][slots].tolist(),
                c["R"][slots].tolist(), c["W"][slots].tolist(),
                [n or () for n in c["N"][slots].tolist()], c["E"][slots].tolist()))

    def _depart_one(self, slot: int, state: list | None, pending: list | None) -> None:
        """``_depart`` for one evicted record, whose latest fields may be held
        (``state``: [B, C, E, S, R, W]) and latest totals ``pending``."""
        c = self.records.cols
        x, p = c["X"].item(slot), c["P"].item(slot)
        if pending is not None:
            x, p = x + pending[0], p + pending[1]
        if not p:
            return
        if len(self.departed) >= MAX_DEPARTED:
            self.departed_lost += 1
            return
        r, w, e = ((state[4], state[5], state[2]) if state else
                   (c["R"].item(slot), c["W"].item(slot), c["E"].item(slot)))
        self.departed.append((self.records.key(slot), x, p, r, w, c["N"][slot] or (), e))

    def ask_names(self, slots: np.ndarray, secs: np.ndarray) -> None:
        """Tell the names, in packet order, each IP whose name is due (T < now),
        for packets of records ``slots`` in seconds ``secs``."""
        if self.names is None:
            return
        due = np.flatnonzero(self.records.cols["T"][slots] < secs)
        if not due.size:
            return
        _, first = np.unique(slots[due], return_index=True)
        key, want = self.records.key, self.names.want
        for slot in slots[due[np.sort(first)]].tolist():
            want(key(slot))

    # ----------------------------------------------------------------- timers
    def purge_due(self, now: int, low: int | None = None) -> bool:
        """Whether ``purge`` at any second up to ``now`` could delete or examine
        anything (``low``: the earliest second of packets yet to be counted)."""
        bound = self._purge_min_e if low is None else min(self._purge_min_e, low)
        return self._purge_pos < len(self._purge_keys) or bound < now - ONEDAY

    def purge(self, now: int, seconds: int = 1) -> int:
        """Examine the records for ``seconds`` worth of purge work; return how many went.

        A record idle for over a day (``E + 86400 < now``) is deleted.  Passes run
        back to back in bounded batches, so an idle record is gone within minutes
        and no batch holds up capture for long.  While no record can be a day old
        (a lower bound of all E says so) there is nothing to do.
        """
        limit = now - ONEDAY
        if not self.purge_due(now):
            return 0
        records = self.records
        budget = min(PURGE_BATCH * max(seconds, 1), max(len(records), 1))
        deleted = 0
        while budget > 0:
            if self._purge_pos >= len(self._purge_keys):
                if self._purge_keys:       # a pass ended: its minimum bounds every E
                    self._purge_min_e = min(self._pass_min_e, self._purge_began)
                if self._purge_min_e >= limit or not records:
                    break
                self._purge_keys = list(records)
                self._purge_pos = 0
                self._purge_began = now
                self._pass_min_e = now
            keys = self._purge_keys[self._purge_pos:self._purge_pos + budget]
            self._purge_pos += len(keys)
            budget -= len(keys)
            deleted += self._purge_keys_once(keys, limit)
        if self._purge_pos >= len(self._purge_keys) and self._purge_keys:
            self._purge_min_e = min(self._pass_min_e, self._purge_began)
            self._purge_keys = []
            self._purge_pos = 0
        self.purged += deleted
        return deleted

    def _purge_keys_once(self, keys: list[bytes], limit: int) -> int:
        slots = self.records.find(keys)
        slots = slots[slots >= 0]
        if not slots.size:
            return 0
        e = self.records.cols["E"][slots]
        old = e < limit
        if old.any():
            self._deleting()
            recent = None if self._by_seen else self._recent
            names = self.names or None       # an empty queue: nothing to drop
            if self.totals:
                self._depart(slots[old])
            if names is not None or recent:
                for slot in slots[old].tolist():
                    key = self.records.key(slot)
                    if names is not None:
                        names.drop(key)
                    if recent is not None:
                        recent.pop(key, None)
            self.records.release(slots[old])
        if not old.all():
            self._pass_min_e = min(self._pass_min_e, int(e[~old].min()))
        return int(np.count_nonzero(old))

    # ----------------------------------------------------------------- reports
    def hits_per_minute(self) -> float:
        return self.rate / 60

    def bytes_per_second(self) -> float:
        return self.bw / 3600


def _prefix(values: np.ndarray) -> np.ndarray:
    """Prefix sums with a leading 0: ``sum(values[a:b]) == s[b] - s[a]``."""
    out = np.zeros(len(values) + 1, np.int64)
    np.cumsum(values, out=out[1:])
    return out


def _stable_order(values: np.ndarray, bound: int) -> np.ndarray:
    """Indices that sort ``values`` (all below ``bound``), equal values in their
    order; numpy sorts 16-bit integers stably by radix, several times faster."""
    if bound <= 1 << 16:
        values = values.astype(np.uint16)
    return np.argsort(values, kind="stable")


def _nondecreasing(values: np.ndarray) -> bool:
    return len(values) < 2 or bool((values[1:] >= values[:-1]).all())


def _first_at_or_after(secs: np.ndarray, k: int, limit: int, ordered: bool) -> int:
    """First index ``>= k`` whose second is ``>= limit`` (len(secs) if none)."""
    if k >= len(secs):
        return len(secs)
    if ordered:
        return max(k, int(np.searchsorted(secs, limit)))
    hit = np.flatnonzero(secs[k:] >= limit)
    return k + int(hit[0]) if hit.size else len(secs)
