"""Interval export of the records' traffic (SPEC 11, ClickHouse), off the capture path.

Three parts, so that the capture loop never waits on the network:

- :class:`Cutter` runs in the capture loop's per-second tick, on the
  accounting's clock (packet time in a replay, wall time live): every
  ``interval`` seconds it turns the records' X P columns (traffic since the
  previous cut) and the records gone meanwhile into plain row tuples, and
  clears the columns.  Numpy over the records that moved; no I/O.
- :class:`Spool` is the bounded on-disk queue ``NAME.spool/`` in the stats
  directory: one JSON-lines file per batch, written atomically, oldest
  dropped (and counted) beyond its byte bound, read back in order.
- :class:`Exporter` is a thread fed through a bounded in-memory queue: it sends
  each batch through a ``Sink`` (``ncsniffer.clickhouse``), spools it on any
  failure, and sends the spool in order once the server answers again.

A batch keeps its id (sniffer, instance, interval start, cut number and sequence, run) from
the cut to the server, through the spool; the table is a ReplacingMergeTree
keyed by it, so a batch sent twice is stored once.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from ncsniffer import events, host, safefile
from ncsniffer.accounting import Accounting
from ncsniffer.errors import StoreError

log = logging.getLogger("ncsniffer")

TRAFFIC = "ncsniffer_traffic"
CONNECTIONS = "ncsniffer_connections"
TRAFFIC_COLUMNS = ("sniffer", "instance", "peer", "start", "end", "bytes", "packets",
                   "rate", "bw", "names", "epoch")
CONNECTION_COLUMNS = ("sniffer", "instance", "start", "end", "proto", "me", "me_port",
                      "peer", "peer_port", "dir", "state", "orig_packets", "orig_bytes",
                      "resp_packets", "resp_bytes")
BATCH_ROWS = 50_000        # rows per batch: one insert, one spool file
ENDED_LIMIT = 1 << 20      # ended connections held between two cuts (96 B each)
QUEUE_BATCHES = 64         # batches waiting for the thread before the tick drops one
FIRST_BACKOFF = 0.5        # seconds before the first retry after a failure ...
MAX_BACKOFF = 10.0         # ... doubling up to this
SPOOL_NAME = re.compile(r"(\d{16})\.(\d+)\.jsonl")
SPOOL_TMP = re.compile(r"\d{16}\.\d+\.jsonl\.(\d+)\.tmp")   # a writer's (safefile.tmp_name)


class ExportError(StoreError):
    """The store cannot take a batch now (it is spooled and sent again later)."""


class Sink(Protocol):
    """Where batches go (``ncsniffer.clickhouse.ClickHouse``)."""

    def send(self, table: str, batch: str, rows: list) -> None:
        """Insert ``rows`` of ``table`` under the id ``batch``; ExportError if not done."""

    def close(self) -> None:
        """Drop the connection."""


@dataclass
class Batch:
    """Rows of one table for one interval (or part of one), with its id."""

    table: str
    batch: str
    rows: list


def peer_text(key: bytes) -> str:
    """A packed address as the stats file writes it."""
    return socket.inet_ntop(socket.AF_INET if len(key) == 4 else socket.AF_INET6, key)


# --------------------------------------------------------------------------- the cut

class Cutter:
    """The interval cut, in the capture loop: rows of the traffic since the last cut."""

    def __init__(self, acct: Accounting, sniffer: str, instance: str, interval: int,
                 submit: Callable[[Batch], object]):
        self.acct = acct
        self.sniffer = sniffer
        self.instance = instance
        self.interval = interval
        self.submit = submit
        self.run = secrets.token_hex(4)      # tells this process's batches from a restart's
        self.start: int | None = None
        self.cuts = 0                        # numbers the cuts: two may start in one second
        self.lost_departed = 0
        self.ended: Ended | None = None      # with connection tracking: its ended connections

    def begin(self, now: int) -> None:
        """The first interval starts at ``now`` (a replay: its first packet)."""
        self.start = now
        self.acct.split_at = now + self.interval

    def tick(self, now: int, elapsed: int = 1) -> None:
        """The per-second job: cut when an interval has passed."""
        if self.start is None:
            self.begin(now)
        elif now >= self.start + self.interval:
            self.cut(now)

    def cut(self, now: int) -> int:
        """Submit the interval [start, now); return how many peers moved in it."""
        if self.start is None:
            self.begin(now)
        cut = self.take(self.start, max(now, self.start))
        self.submit(cut)
        if self.ended is not None and self.ended.items:
            self.submit(EndedCut(self.sniffer, self.instance, self.run, cut.number,
                                 cut.start, cut.end, self.ended.take()))
        self.begin(now)
        return cut.row_count()

    def take(self, start: int, end: int) -> "Cut":
        """The traffic since the last cut, taken from the records (their X P
        cleared) as arrays: numpy only; the rows are made by the export thread."""
        acct = self.acct
        if acct.departed_lost > self.lost_departed:
            log.warning("clickhouse: %d records went with traffic not exported (over %d "
                        "between two intervals)", acct.departed_lost - self.lost_departed,
                        len(acct.departed))
            self.lost_departed = acct.departed_lost
        gone, acct.departed = acct.departed, []
        table = acct.records
        c = table.cols
        occupied = table.occupied()
        moved = occupied[c["P"][occupied] > 0]
        cut = Cut(self.sniffer, self.instance, self.run, self.cuts, start, end, gone,
                  table.keys_at(moved), c["X"][moved], c["P"][moved], c["R"][moved],
                  c["W"][moved], c["N"][moved], c["E"][moved])
        self.cuts += 1
        c["X"][moved] = 0
        c["P"][moved] = 0
        return cut


@dataclass
class Cut:
    """One interval's traffic as the capture loop took it: the records that moved
    (columns) and those gone meanwhile (``Accounting.departed``)."""

    sniffer: str
    instance: str
    run: str
    number: int                  # the run's cut count: a SIGHUP cut may share its start second
    start: int
    end: int
    gone: list
    keys: list
    x: np.ndarray
    p: np.ndarray
    r: np.ndarray
    w: np.ndarray
    n: np.ndarray
    e: np.ndarray                # E: with R, W and N what the fleet report shows (SPEC 11)

    def row_count(self) -> int:
        return len(self.keys) + len(self.gone)

    def rows(self) -> list[tuple]:
        """One row per peer, a record gone and the peer's new one summed."""
        start, end = self.start, self.end
        ntoa, ntop, six = socket.inet_ntoa, socket.inet_ntop, socket.AF_INET6
        peers = [ntoa(k) if len(k) == 4 else ntop(six, k) for k in self.keys]
        same = itertools.repeat
        # zip builds the tuples in C: this is the export thread's cost per row
        live = list(zip(same(self.sniffer), same(self.instance), peers, same(start), same(end),
                        self.x.tolist(), self.p.tolist(), self.r.tolist(), self.w.tolist(),
                        [n or [] for n in self.n.tolist()], self.e.tolist()))
        if not self.gone:
            return live
        old: dict[str, tuple] = {}
        for key, x, p, r, w, names, e in self.gone:
            peer = peer_text(key)
            had = old.get(peer)
            if had is not None:
                x, p = x + had[5], p + had[6]
            old[peer] = (self.sniffer, self.instance, peer, start, end, x, p, r, w,
                         list(names or ()), int(e))
        for i, row in enumerate(live):
            had = old.pop(row[2], None)
            if had is not None:
                live[i] = row[:5] + (row[5] + had[5], row[6] + had[6]) + row[7:]
        return list(old.values()) + live

    def batches(self) -> list[Batch]:
        """The rows in batches of at most BATCH_ROWS, each with its id."""
        return in_batches(TRAFFIC, f"{self.sniffer}/{self.instance}/{self.start}/{self.number}",
                          self.run, self.rows())


class Ended:
    """Ended connections waiting for the next cut (SPEC 11): the event arrays the
    tracker hands the events (``events.Events.push``), copied in the capture loop and
    bounded (beyond ``limit``, dropped and counted); their rows are made by the thread."""

    def __init__(self, limit: int = ENDED_LIMIT):
        self.limit = limit
        self.items: list[np.ndarray] = []
        self.pending = 0
        self.lost = events.Losses("clickhouse: ended connections")

    def write(self, ended: np.ndarray) -> bool:
        """Hold ``ended`` (end events) for the next cut; never blocks."""
        if not len(ended):
            return False
        if self.pending + len(ended) > self.limit:
            self.lost.add(len(ended), f"over {self.limit} between two cuts, dropped")
            return False
        self.items.append(ended.copy())
        self.pending += len(ended)
        return True

    def take(self) -> list[np.ndarray]:
        """What is held, emptied."""
        items, self.items, self.pending = self.items, [], 0
        return items


@dataclass
class EndedCut:
    """The connections that ended in one interval, as the capture loop took them."""

    sniffer: str
    instance: str
    run: str
    number: int                  # the traffic cut's number: one id per interval and table
    start: int
    end: int
    items: list

    def row_count(self) -> int:
        return sum(len(a) for a in self.items)

    def batches(self) -> list[Batch]:
        """The rows (those of the events log's lines) in batches, each with its id."""
        rows = connection_rows(np.concatenate(self.items), self.sniffer, self.instance)
        head = f"{self.sniffer}/{self.instance}/{self.start}/c{self.number}"
        return in_batches(CONNECTIONS, head, self.run, rows)


def in_batches(table: str, head: str, run: str, rows: list) -> list[Batch]:
    """``rows`` of ``table`` in batches of at most BATCH_ROWS, with the ids
    ``HEAD.SEQ/RUN``: the same rows give the same ids, sent once or again."""
    return [Batch(table, f"{head}.{seq}/{run}", rows[at:at + BATCH_ROWS])
            for seq, at in enumerate(range(0, len(rows), BATCH_ROWS))]


def connection_rows(ended: np.ndarray, sniffer: str, instance: str) -> list[tuple]:
    """Rows of ``ncsniffer_connections`` from end events (``conntrack.EVENT_DTYPE``):
    the fields of the events log's lines (SPEC 10.4), after sniffer and instance."""
    return [(sniffer, instance, *row) for row in zip(*events.columns(ended))]


# --------------------------------------------------------------------------- the spool

@dataclass
class Spool:
    """Batches not delivered yet: ``DIR/SEQ.ROWS.jsonl`` files, oldest first,
    their total size at most ``max_bytes`` (older ones are dropped and counted).
    With ``path`` None (stats to stderr) the queue is kept in memory instead."""

    path: str | None
    max_bytes: int
    lost_batches: int = 0
    lost_rows: int = 0
    entries: list = field(default_factory=list)      # (seq, rows, size, name or Batch)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _next: int = 0
    _scanned: bool = False

    def _scan(self) -> None:
        """Take in what an earlier run left (sent first: it is older)."""
        self._scanned = True
        if self.path is None or not os.path.isdir(self.path):
            return
        for name in sorted(os.listdir(self.path)):
            m = SPOOL_NAME.fullmatch(name)
            if m is None:
                self._remove_stale(name)
                continue
            try:
                size = os.lstat(os.path.join(self.path, name)).st_size
            except OSError:
                continue
            self.entries.append((int(m.group(1)), int(m.group(2)), size, name))
        if self.entries:
            self._next = self.entries[-1][0] + 1

    def _remove_stale(self, name: str) -> None:
        """A temporary file of a writer that died while writing it: never a batch."""
        m = SPOOL_TMP.fullmatch(name)
        if m and not host.process_exists(int(m.group(1))):
            self._remove(name)

    def __len__(self) -> int:
        with self.lock:
            if not self._scanned:
                self._scan()
            return len(self.entries)

    @property
    def size(self) -> int:
        return sum(e[2] for e in self.entries)

    @property
    def rows(self) -> int:
        return sum(e[1] for e in self.entries)

    def add(self, batch: Batch) -> None:
        """Queue ``batch`` behind the others, dropping the oldest beyond the bound."""
        text = json.dumps({"table": batch.table, "batch": batch.batch}) + "\n" + \
            "".join(json.dumps(row) + "\n" for row in batch.rows)
        size = len(text.encode())
        with self.lock:
            if not self._scanned:
                self._scan()
            seq, self._next = self._next, self._next + 1
            item: object = batch
            if self.path is not None:
                os.makedirs(self.path, mode=0o700, exist_ok=True)
                item = f"{seq:016d}.{len(batch.rows)}.jsonl"
                safefile.write_atomic(os.path.join(self.path, item), [text])
            self.entries.append((seq, len(batch.rows), size, item))
            self._bound()

    def _bound(self) -> None:
        total = self.size
        while total > self.max_bytes and self.entries:
            seq, rows, size, item = self.entries.pop(0)
            self._remove(item)
            total -= size
            self.lost_batches += 1
            self.lost_rows += rows
            log.error("clickhouse: spool over %d bytes: oldest batch dropped (%d rows); "
                      "%d rows lost so far", self.max_bytes, rows, self.lost_rows)

    def first(self) -> tuple[object, Batch] | None:
        """The oldest batch (its handle for ``done``), or None; an unreadable file is dropped."""
        while True:
            with self.lock:
                if not self._scanned:
                    self._scan()
                if not self.entries:
                    return None
                entry = self.entries[0]
            item = entry[3]
            if isinstance(item, Batch):
                return entry, item
            try:
                return entry, self._read(os.path.join(self.path, item))
            except (OSError, ValueError, KeyError) as exc:
                log.error("clickhouse: spool file %s unreadable (%s): dropped, %d rows lost",
                          os.path.join(self.path, item), exc, entry[1])
                with self.lock:
                    self.lost_batches += 1
                    self.lost_rows += entry[1]
                self.done(entry)

    @staticmethod
    def _read(path: str) -> Batch:
        fd = safefile.open_regular(path)
        with open(fd, encoding="utf-8") as fh:
            head = json.loads(fh.readline())
            rows = [json.loads(line) for line in fh]
        return Batch(str(head["table"]), str(head["batch"]), rows)

    def done(self, entry) -> None:
        """``entry`` was delivered (or is dropped): forget it."""
        with self.lock:
            if entry in self.entries:
                self.entries.remove(entry)
                self._remove(entry[3])

    def _remove(self, item) -> None:
        if isinstance(item, str):
            try:
                os.unlink(os.path.join(self.path, item))
            except OSError:
                pass


# --------------------------------------------------------------------------- the thread

class Exporter:
    """The export thread: batches from a bounded queue to the sink, through the
    spool whenever the sink fails or older batches wait."""

    def __init__(self, sink: Sink, spool: Spool, target: str,
                 monotonic: Callable[[], float] = time.monotonic):
        self.sink = sink
        self.spool = spool
        self.target = target                 # HOST:PORT/DB, for the log
        self.monotonic = monotonic
        self.queue: queue.Queue = queue.Queue(QUEUE_BATCHES)
        self.sent_batches = 0
        self.sent_rows = 0
        self.failures = 0
        self.dropped_batches = 0             # the queue was full (the thread stuck)
        self.dropped_rows = 0
        self.down = False
        self.backoff = FIRST_BACKOFF
        self.retry_at = 0.0
        self.thread = threading.Thread(target=self._run, name="clickhouse-export", daemon=True)

    def start(self) -> "Exporter":
        self.thread.start()
        return self

    # ------------------------------------------------------------ capture side
    def submit(self, batch: "Batch | Cut", wait: float | None = 0) -> bool:
        """Hand ``batch`` (or a cut, made into batches by the thread) to the thread:
        live, never waiting (a full queue drops it, counted); a replay waits up to
        ``wait`` seconds (None: as long as it takes)."""
        try:
            if wait == 0:
                self.queue.put_nowait(batch)
            else:
                self.queue.put(batch, timeout=wait)
            return True
        except queue.Full:
            rows = _row_count(batch)
            self.dropped_batches += 1
            self.dropped_rows += rows
            log.error("clickhouse: export queue full: %d rows dropped", rows)
            return False

    def close(self, timeout: float) -> bool:
        """Deliver or spool everything queued, waiting at most ``timeout`` seconds;
        whatever the thread did not reach is spooled here.  True if nothing remains
        unsent in memory."""
        deadline = self.monotonic() + timeout
        try:
            self.queue.put(None, timeout=max(timeout, 0.01))
        except queue.Full:
            pass
        if self.thread.is_alive():
            self.thread.join(max(deadline - self.monotonic(), 0.01))
        while True:
            try:
                batch = self.queue.get_nowait()
            except queue.Empty:
                break
            for one in _batches(batch):
                self._spool(one)
        return not self.thread.is_alive()

    @property
    def lost_rows(self) -> int:
        """Rows that will never reach the server (spool bound, full queue)."""
        return self.spool.lost_rows + self.dropped_rows

    def counters(self) -> dict:
        """For the log and the metrics."""
        return {"sent_batches": self.sent_batches, "sent_rows": self.sent_rows,
                "failures": self.failures, "spooled_batches": len(self.spool),
                "spooled_rows": self.spool.rows, "spool_bytes": self.spool.size, "lost_batches": self.spool.lost_batches
                + self.dropped_batches, "lost_rows": self.lost_rows}

    # ------------------------------------------------------------ thread side
    def _run(self) -> None:
        stopping = False
        while True:
            wait = None
            if len(self.spool):
                wait = max(self.retry_at - self.monotonic(), 0.05)
            try:
                batch = self.queue.get(timeout=wait) if not stopping else self.queue.get_nowait()
            except queue.Empty:
                batch = False
            if batch is None:
                stopping = True
            elif batch:
                for one in _batches(batch):
                    self._take(one)
            if len(self.spool) and (stopping or self.monotonic() >= self.retry_at):
                self._send_spool()
            if stopping and (not len(self.spool) or self.down) and self.queue.empty():
                break
        self.sink.close()

    def _take(self, batch: Batch) -> None:
        """A new batch: sent at once if nothing older waits, else spooled behind."""
        if len(self.spool) or (self.down and self.monotonic() < self.retry_at):
            self._spool(batch)
        elif not self._send(batch):
            self._spool(batch)

    def _spool(self, batch: Batch) -> None:
        try:
            self.spool.add(batch)
        except OSError as exc:
            self.spool.lost_batches += 1
            self.spool.lost_rows += len(batch.rows)
            log.error("clickhouse: cannot spool to %s (%s): %d rows lost", self.spool.path,
                      exc, len(batch.rows))

    def _send_spool(self) -> None:
        sent = 0
        while True:
            got = self.spool.first()
            if got is None:
                break
            entry, batch = got
            if not self._send(batch):
                return
            self.spool.done(entry)
            sent += 1
        if sent:
            log.info("clickhouse: %d spooled batches delivered to %s", sent, self.target)

    def _send(self, batch: Batch) -> bool:
        try:
            self.sink.send(batch.table, batch.batch, batch.rows)
        except ExportError as exc:
            self.failures += 1
            if not self.down:
                log.error("clickhouse: %s: %s; batches are spooled to %s and sent when it "
                          "answers", self.target, exc, self.spool.path or "memory")
            self.down = True
            self.retry_at = self.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, MAX_BACKOFF)
            return False
        except Exception:          # a batch the sink cannot take at all: not sent again
            log.exception("clickhouse: batch %s refused: %d rows lost", batch.batch,
                          len(batch.rows))
            self.spool.lost_batches += 1
            self.spool.lost_rows += len(batch.rows)
            return True
        if self.down:
            log.info("clickhouse: %s answers again", self.target)
        self.down = False
        self.backoff = FIRST_BACKOFF
        self.sent_batches += 1
        self.sent_rows += len(batch.rows)
        return True


def _batches(item) -> list[Batch]:
    """A queue item as batches (a cut becomes its batches in the thread)."""
    if item is None:
        return []
    return item.batches() if isinstance(item, (Cut, EndedCut)) else [item]


def _row_count(item) -> int:
    return item.row_count() if isinstance(item, (Cut, EndedCut)) else len(item.rows)


def spool_dir(stats_dir: str | None, name: str) -> str | None:
    """``STATSDIR/NAME.spool`` (None with stats to stderr: the spool is kept in memory)."""
    return None if stats_dir is None else os.path.join(stats_dir, name + ".spool")


def sniffer_name(configured: str | None) -> str:
    """The ``sniffer`` column: the config's, or this host's name."""
    return configured or socket.gethostname()



# --------------------------------------------------------------------------- the hooks

class Export:
    """One sniffer's export: the cut on its clock's per-second jobs, the thread."""

    def __init__(self, cutter: Cutter, exporter: Exporter):
        self.cutter = cutter
        self.exporter = exporter

    @property
    def ended(self) -> Ended | None:
        """Where the ended connections go (``events.from_settings``), or None."""
        return self.cutter.ended

    def finish(self, now: int, timeout: float) -> str:
        """The last interval up to ``now``, then everything delivered or spooled
        within ``timeout`` seconds; a line for the log."""
        self.cutter.cut(now)
        self.exporter.close(timeout)
        c = self.exporter.counters()
        return (f"clickhouse {self.exporter.target}: {c['sent_rows']} rows in "
                f"{c['sent_batches']} batches sent, {c['spooled_batches']} batches spooled, "
                f"{c['lost_rows']} rows lost")


def start(settings, acct: Accounting, clock, replay: bool) -> Export:
    """Start the export of ``settings.clickhouse`` for ``acct`` on ``clock``: a
    replay cuts on packet time from its first packet and waits for a full queue
    (bounded by the timeout); the daemon cuts on wall time and never waits."""
    from ncsniffer.clickhouse import ClickHouse     # the driver only when exporting

    ch = settings.clickhouse
    sink = ClickHouse(ch.host, ch.port, ch.database, ch.timeout, ch.user, ch.password)
    spool = Spool(spool_dir(os.path.dirname(settings.stats_file) if settings.stats_file
                            else None, settings.name), ch.spool_max)
    exporter = Exporter(sink, spool, ch.url).start()
    wait = 2.0 * ch.timeout if replay else 0
    cutter = Cutter(acct, sniffer_name(ch.sniffer), settings.name, ch.interval,
                    lambda batch: exporter.submit(batch, wait))
    if settings.connections:
        cutter.ended = Ended()          # the driver's Events hand it the ended connections
    if replay:
        clock.at_start(cutter.begin)
    else:
        cutter.begin(clock.now)
    clock.every_second(cutter.tick)
    return Export(cutter, exporter)
