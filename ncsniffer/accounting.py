"""Per-IP traffic accounting: the exact arithmetic of Net::Connection::Sniffer.

Pure logic: the time ``now`` (integer epoch seconds) is always passed in, so
replaying a capture gives the numbers a live run would have given, and tests
need no clock.  Keys are packed addresses (4 or 16 bytes).
"""

from __future__ import annotations

from collections import OrderedDict

ONEHOUR = 3600
ONEDAY = 86400
IP_INTERVAL = 300          # seconds between rate updates of one IP
GLOBAL_INTERVAL = 60       # seconds between global rate updates ...
FIRST_GLOBAL_INTERVAL = 300  # ... except the first one
PURGE_BATCH = 10000        # records examined per second of purge work


class Record:
    """One remote IP; the one-letter names are the stats file's keys."""

    __slots__ = ("B", "C", "E", "N", "R", "S", "T", "W")

    def __init__(self, length: int, now: int, start: int):
        self.B = length   # bytes in the current interval
        self.C = 1        # packets in the current interval
        self.E = now      # time of the last rate update
        self.N = ()       # host names (a shared empty tuple until a lookup answers)
        self.R = 0        # packets per hour
        self.S = start    # start of this data set: the global start
        self.T = 0        # time after which the name must be looked up again
        self.W = 0        # bytes per hour

    def as_dict(self) -> dict:
        return {"B": self.B, "C": self.C, "E": self.E, "N": list(self.N), "R": self.R,
                "S": self.S, "T": self.T, "W": self.W}


class Accounting:
    """Global counters, per-IP records, the lookup queue and the daily purge."""

    def __init__(self, now: int, max_hosts: int | None = None, lookups: bool = False):
        self.max_hosts = max_hosts
        self.lookups = lookups
        self.evicted = 0
        self.purged = 0
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
        self.records: dict[bytes, Record] = OrderedDict() if self.max_hosts else {}
        self.lookup_queue: dict[bytes, None] = {}
        self._purge_keys: list[bytes] = []
        self._purge_pos = 0
        self._purge_began = now
        self._purge_min_e = now    # lower bound of every record's E (E only grows)
        self._pass_min_e = now

    # ----------------------------------------------------------------- per packet
    def count(self, key: bytes, length: int, now: int) -> None:
        """Account one packet of ``length`` wire bytes exchanged with ``key`` at ``now``."""
        self.count_run((key,), (length,), now)

    def count_run(self, keys, lengths, now: int) -> None:
        """Account packets that all arrived in the second ``now``, in this order.

        Exactly the same as one ``count`` per packet: within one second the global
        rule updates at most once (``next`` moves past ``now``), so the global
        counters take the run in at most three steps; each IP is then updated
        packet by packet.
        """
        self._global_run(lengths, now)
        records = self.records
        get = records.get
        lru = self.max_hosts
        queue = self.lookup_queue if self.lookups else None
        start = self.start
        for key, length in zip(keys, lengths):
            rec = get(key)
            if rec is None:
                if lru and len(records) >= lru:
                    self._evict()
                rec = records[key] = Record(length, now, start)
            else:
                if lru:
                    records.move_to_end(key)
                e = rec.E
                if e + IP_INTERVAL > now or (e == rec.S and rec.C < 5):
                    rec.B += length
                    rec.C += 1
                else:
                    m = 3600.0 / (now - e if rec.S == e else ONEHOUR + now - e)
                    rec.R = (rec.R + rec.C) * m
                    rec.W = (rec.W + rec.B) * m
                    rec.E = now
                    rec.B = length
                    rec.C = 1
            if queue is not None and rec.T < now and key not in queue:
                queue[key] = None

    def _global_run(self, lengths, now: int) -> None:
        """The global rule of SPEC 4.1 over packets of one second."""
        i, n = 0, len(lengths)
        if self.next <= now and self.rate < 1 and self.ra < 5:
            i = min(5 - self.ra, n)             # accumulate until five packets are in
            if i:
                self.ba += sum(lengths[:i])
                self.ra += i
        if i < n and self.next <= now:
            if self.rate < 1:
                dt = max(now - self.start, 1)
            else:
                dt = ONEHOUR + now + self.nextrate - self.next
            m = 3600.0 / dt
            self.rate = (self.rate + self.ra) * m
            self.bw = (self.bw + self.ba) * m
            self.ba = lengths[i]
            self.ra = 1
            self.next = now + GLOBAL_INTERVAL
            self.nextrate = GLOBAL_INTERVAL
            i += 1
        if i < n:
            self.ba += sum(lengths[i:]) if i else sum(lengths)
            self.ra += n - i

    def _evict(self) -> None:
        key, _ = self.records.popitem(last=False)
        self.lookup_queue.pop(key, None)
        self.evicted += 1

    # ----------------------------------------------------------------- timers
    def purge(self, now: int, seconds: int = 1) -> int:
        """Examine the records for ``seconds`` worth of purge work; return how many went.

        A record idle for over a day (``E + 86400 < now``) is deleted.  Passes run
        back to back in bounded batches, so an idle record is gone within minutes
        and no batch holds up capture for long.  While no record can be a day old
        (a lower bound of all E says so) there is nothing to do.
        """
        limit = now - ONEDAY
        if self._purge_pos >= len(self._purge_keys) and self._purge_min_e >= limit:
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
            lowest = self._pass_min_e
            for key in keys:
                rec = records.get(key)
                if rec is None:
                    continue
                if rec.E < limit:
                    del records[key]
                    self.lookup_queue.pop(key, None)
                    deleted += 1
                elif rec.E < lowest:
                    lowest = rec.E
            self._pass_min_e = lowest
        if self._purge_pos >= len(self._purge_keys) and self._purge_keys:
            self._purge_min_e = min(self._pass_min_e, self._purge_began)
            self._purge_keys = []
            self._purge_pos = 0
        self.purged += deleted
        return deleted

    # ----------------------------------------------------------------- names
    def set_names(self, key: bytes, names: list[str], expires: int) -> bool:
        """Store a lookup answer; False if the record is gone."""
        rec = self.records.get(key)
        if rec is None:
            return False
        rec.N = list(names)
        rec.T = expires
        return True

    # ----------------------------------------------------------------- reports
    def hits_per_minute(self) -> float:
        return self.rate / 60

    def bytes_per_second(self) -> float:
        return self.bw / 3600
