"""The export's pure parts: the interval cut, the spool, the thread with a fake sink."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ncsniffer import export
from ncsniffer.accounting import Accounting
from ncsniffer.export import Batch, Cutter, Exporter, ExportError, Spool

A, B, C = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), bytes(15) + b"\x01"
T0 = 1_600_000_000


def cutter(acct, interval=60):
    got = []
    cut = Cutter(acct, "host1", "nc.sniffer", interval, got.append)
    cut.begin(T0)
    return cut, got


def rows_of(cuts):
    return {r[2]: r for cut in cuts for b in cut.batches() for r in b.rows}


def test_rows_are_the_traffic_since_the_last_cut():
    acct = Accounting(T0, totals=True)
    cut, got = cutter(acct)
    acct.count_run([A, A, B], [100, 50, 7], T0 + 1)
    cut.tick(T0 + 30)
    assert got == []                      # not an interval yet
    cut.tick(T0 + 60)
    rows = rows_of(got)
    assert rows["10.0.0.1"][3:7] == (T0, T0 + 60, 150, 2)
    assert rows["10.0.0.2"][5:7] == (7, 1)
    assert rows["10.0.0.1"][:2] == ("host1", "nc.sniffer")
    assert rows["10.0.0.1"][10] == acct.records[A].E      # the epoch: the fleet report's E
    assert len(rows["10.0.0.1"]) == len(export.TRAFFIC_COLUMNS)
    acct.count_run([A], [10], T0 + 61)
    got.clear()
    cut.tick(T0 + 120)
    assert list(rows_of(got)) == ["10.0.0.1"]        # B had nothing: no row
    assert rows_of(got)["10.0.0.1"][3:7] == (T0 + 60, T0 + 120, 10, 1)


def test_totals_are_exact_across_rate_updates():
    """B and C restart at each rate update; the row's bytes and packets do not."""
    acct = Accounting(T0, totals=True)
    cut, got = cutter(acct, interval=3600)
    for s in range(0, 3000, 10):
        acct.count_run([A, A], [100, 1], T0 + s)
    assert acct.records[A].B < 300 * 101              # B restarted
    cut.tick(T0 + 3600)
    assert rows_of(got)["10.0.0.1"][5:7] == (300 * 101, 600)


def test_purged_and_evicted_records_keep_their_last_interval():
    acct = Accounting(T0, max_hosts=2, totals=True)
    cut, got = cutter(acct)
    acct.count_run([A], [10], T0)
    acct.count_run([B], [20], T0 + 1)
    acct.count_run([C], [30], T0 + 2)                 # evicts A
    acct.count_run([A], [40], T0 + 3)                 # evicts B, A anew
    assert acct.evicted == 2
    cut.tick(T0 + 60)
    rows = rows_of(got)
    assert {p: r[5:7] for p, r in rows.items()} == {
        "10.0.0.1": (50, 2), "10.0.0.2": (20, 1), "::1": (30, 1)}   # A's two lives summed
    got.clear()
    acct2 = Accounting(T0, totals=True)
    cut2, got2 = cutter(acct2, interval=200_000)
    acct2.count_run([A], [10], T0)
    acct2.purge(T0 + 90_000)
    assert len(acct2.records) == 0
    cut2.tick(T0 + 200_000)
    assert rows_of(got2)["10.0.0.1"][5:7] == (10, 1)


def test_sighup_reset_keeps_the_old_records_last_interval():
    acct = Accounting(T0, totals=True)
    cut, got = cutter(acct)
    acct.count_run([A], [10], T0)
    acct.reset(T0 + 5)
    acct.count_run([A], [5], T0 + 6)
    cut.tick(T0 + 60)
    assert rows_of(got)["10.0.0.1"][5:7] == (15, 2)


def test_departures_beyond_the_bound_are_counted(monkeypatch):
    monkeypatch.setattr("ncsniffer.accounting.MAX_DEPARTED", 1)
    acct = Accounting(T0, max_hosts=1, totals=True)
    cut, got = cutter(acct)
    for i in range(4):
        acct.count_run([bytes([10, 0, 1, i])], [1], T0 + i)
    assert acct.departed_lost == 2
    cut.tick(T0 + 60)
    assert len(rows_of(got)) == 2            # the one kept, the live one


def test_without_totals_the_table_has_no_new_columns():
    acct = Accounting(T0)
    acct.count_run([A], [1], T0)
    assert "X" not in acct.records.cols and acct.departed == []


def test_interval_batches_are_split_and_named(monkeypatch):
    monkeypatch.setattr(export, "BATCH_ROWS", 2)
    acct = Accounting(T0, totals=True)
    cut, got = cutter(acct)
    acct.count_run([bytes([10, 0, 2, i]) for i in range(5)], [1] * 5, T0)
    cut.tick(T0 + 60)
    got = got[0].batches()
    assert [len(b.rows) for b in got] == [2, 2, 1]
    assert [b.batch.split("/")[:4] for b in got] == [
        ["host1", "nc.sniffer", str(T0), f"0.{i}"] for i in range(3)]


def test_two_cuts_in_one_second_have_distinct_batch_ids():
    """A SIGHUP cut in the interval's first second, then the next cut: the two
    intervals start in the same second, and neither batch may replace the other."""
    acct = Accounting(T0, totals=True)
    cut, got = cutter(acct)
    acct.count_run([A], [10], T0)
    cut.cut(T0)
    acct.count_run([A], [20], T0)
    cut.cut(T0 + 60)
    ids = [b.batch for c in got for b in c.batches()]
    assert len(ids) == 2 and len(set(ids)) == 2


def end_event(peer_lo=0xC6336407, state=1, **fields):
    """One end event as the tracker makes them (conntrack.EVENT_DTYPE)."""
    from ncsniffer import conntrack
    e = np.zeros(1, conntrack.EVENT_DTYPE)
    e["start"], e["end"], e["proto"] = 1.5, 2.25, 6
    e["me_lo"], e["peer_lo"], e["me_port"], e["peer_port"] = 0xC0000201, peer_lo, 22, 40000
    e["dir"], e["state"], e["kind"] = 0, state, conntrack.END
    e["orig_packets"], e["orig_bytes"], e["resp_packets"], e["resp_bytes"] = 5, 400, 4, 900
    for name, value in fields.items():
        e[name] = value
    return e


def test_connection_rows_are_the_events_log_lines():
    from ncsniffer import events
    e = end_event()
    (row,) = export.connection_rows(e, "host1", "nc.sniffer")
    line = json.loads(events.log_lines(e))
    assert row == ("host1", "nc.sniffer", *line.values())
    assert row[2:8] == (1.5, 2.25, "tcp", "192.0.2.1", 22, "198.51.100.7")
    assert len(row) == len(export.CONNECTION_COLUMNS)
    assert tuple(line) == export.CONNECTION_COLUMNS[2:]


def test_ended_connections_go_out_with_the_interval_cut():
    from ncsniffer import events
    acct = Accounting(T0, totals=True)
    cut, got = cutter(acct)
    cut.ended = export.Ended()
    sink = events.Events(export=cut.ended)
    sink.push(end_event())
    sink.push(end_event(kind=0))             # a ``new`` event: not a row
    cut.tick(T0 + 60)
    traffic, ended = got
    assert isinstance(ended, export.EndedCut) and ended.row_count() == 1
    (b,) = ended.batches()
    assert b.table == export.CONNECTIONS
    assert b.batch == f"host1/nc.sniffer/{T0}/c{traffic.number}.0/{cut.run}"
    assert b.rows[0][10] == "closed"
    sink.drain(end_event(state=0))           # still open at the end: drained
    cut.cut(T0 + 70)
    (b,) = got[-1].batches()
    assert b.rows[0][10] == "drained"


def test_ended_connections_beyond_the_bound_are_counted():
    from ncsniffer import events
    held = export.Ended(limit=2)
    assert held.write(np.concatenate([end_event(), end_event()]))
    assert not held.write(end_event())
    assert held.lost.count == 1 and held.pending == 2
    assert len(held.take()) == 1 and held.pending == 0
    assert events.Events(export=held).counters_text() == \
        "ended connections for clickhouse dropped 1"          # the stop line's part


# --------------------------------------------------------------------------- spool

def batch(i, rows=3):
    return Batch(export.TRAFFIC, f"b{i}", [["h", "n", f"10.0.0.{i}", T0, T0 + 60, i, 1, 0.0,
                                            0.0, ["x"]]] * rows)


def test_spool_keeps_order_across_runs(tmp_path):
    path = str(tmp_path / "nc.sniffer.spool")
    spool = Spool(path, 1 << 20)
    for i in range(3):
        spool.add(batch(i))
    again = Spool(path, 1 << 20)           # a restart reads what is there
    entry, first = again.first()
    assert first == batch(0)
    again.done(entry)
    again.add(batch(9))
    assert [again.first()[1].batch for _ in range(1)] == ["b1"]
    names = sorted(os.listdir(path))
    assert names == ["0000000000000001.3.jsonl", "0000000000000002.3.jsonl",
                     "0000000000000003.3.jsonl"]
    with open(os.path.join(path, names[0])) as fh:
        assert json.loads(fh.readline()) == {"table": "ncsniffer_traffic", "batch": "b1"}


def test_spool_bound_drops_the_oldest_and_counts(tmp_path):
    path = str(tmp_path / "s.spool")
    one = len(json.dumps({"table": "ncsniffer_traffic", "batch": "b0"})) + 1 + \
        3 * (len(json.dumps(batch(0).rows[0])) + 1)
    spool = Spool(path, 2 * one)
    for i in range(5):
        spool.add(batch(i))
    assert (spool.lost_batches, spool.lost_rows) == (3, 9)
    assert len(spool) == 2 and spool.first()[1].batch == "b3"
    assert len(os.listdir(path)) == 2


def test_spool_in_memory_without_a_stats_directory():
    spool = Spool(None, 1 << 20)
    spool.add(batch(1))
    assert spool.first()[1] == batch(1)


# --------------------------------------------------------------------------- thread

class FakeSink:
    def __init__(self):
        self.up = threading.Event()
        self.up.set()
        self.got: list[str] = []

    def send(self, table, batch, rows):
        if not self.up.is_set():
            raise ExportError("Connection refused")
        self.got.append(batch)

    def close(self):
        pass


@pytest.mark.slow
def test_thread_spools_while_down_and_sends_in_order(tmp_path):
    sink = FakeSink()
    sink.up.clear()
    ex = Exporter(sink, Spool(str(tmp_path / "s.spool"), 1 << 20), "fake").start()
    for i in range(3):
        assert ex.submit(batch(i))
    from tests.daemonutil import wait_for
    wait_for(lambda: len(ex.spool) == 3)
    assert sink.got == [] and ex.down
    sink.up.set()
    ex.submit(batch(3))
    wait_for(lambda: len(sink.got) == 4, timeout=15)
    assert sink.got == ["b0", "b1", "b2", "b3"]
    assert ex.close(5) and len(ex.spool) == 0
    assert ex.counters()["sent_rows"] == 12


def test_close_spools_what_could_not_be_sent(tmp_path):
    sink = FakeSink()
    sink.up.clear()
    path = str(tmp_path / "s.spool")
    ex = Exporter(sink, Spool(path, 1 << 20), "fake").start()
    ex.submit(batch(0))
    assert ex.close(5)
    assert len(os.listdir(path)) == 1


def test_full_queue_drops_and_counts(monkeypatch, tmp_path):
    monkeypatch.setattr(export, "QUEUE_BATCHES", 1)
    ex = Exporter(FakeSink(), Spool(str(tmp_path / "s"), 1 << 20), "fake")   # not started
    assert ex.submit(batch(0)) and not ex.submit(batch(1))
    assert ex.lost_rows == 3


def replay_cutter(interval: int):
    """A packet clock with an accounting and a cutter on it, as a replay sets them up;
    the cuts go to the list returned last."""
    from ncsniffer.clock import PacketClock
    clock = PacketClock()
    acct = Accounting(0, totals=True)
    got: list = []
    cut = Cutter(acct, "h", "n", interval, got.append)
    clock.at_start(acct.reset)
    clock.at_start(cut.begin)
    clock.every_second(cut.tick)
    return clock, acct, cut, got


@pytest.mark.parametrize("interval", [1, 7])
def test_cut_on_packet_time_in_a_batch_is_exact(interval):
    """A replay counts second by second across an export tick (``split_at``)."""
    from ncsniffer import batch as batchmod
    from ncsniffer.table import Addresses
    clock, acct, cut, got = replay_cutter(interval)
    secs = np.repeat(np.arange(T0, T0 + 20), 3)
    n = len(secs)
    addrs = Addresses(np.array([0x0A000001], np.uint32), [])
    batchmod.account(acct, clock, addrs, np.zeros(n, np.int64), secs,
                     np.arange(n), np.full(n, 10, np.int64))
    cut.cut(clock.now + 1)
    rows = [r for c in got for r in c.rows()]
    assert sum(r[6] for r in rows) == n
    for r in rows:
        assert r[6] == 3 * (r[4] - r[3]), r          # 3 packets in each second of the interval


def interval_model(secs: list[int], interval: int) -> dict[int, int]:
    """Packets per interval start, one packet at a time: the clock is the latest second
    seen (it never goes back); a tick at or past start + interval starts a new one."""
    start = clock = secs[0]
    out: dict[int, int] = {}
    for sec in secs:
        clock = max(clock, sec)
        if clock >= start + interval:
            start = clock
        out[start] = out.get(start, 0) + 1
    return out


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(-3, 4), min_size=1, max_size=120), st.integers(1, 6),
       st.integers(1, 4))
def test_stretches_between_ticks_count_as_one_packet_at_a_time(steps, interval, batches):
    """The replay counts each stretch between two export ticks in one step; the rows
    are those of a per-packet model, also when time steps back in a batch."""
    from ncsniffer import batch as batchmod
    from ncsniffer.table import Addresses
    secs = list(np.cumsum([T0] + steps))
    clock, acct, cut, got = replay_cutter(interval)
    addrs = Addresses(np.array([0x0A000001, 0x0A000002], np.uint32), [])
    for part in np.array_split(np.array(secs, np.int64), batches):
        if len(part):
            n = len(part)
            batchmod.account(acct, clock, addrs, np.arange(n) % 2, part, np.arange(n),
                             np.full(n, 10, np.int64))
    cut.cut(clock.now + 1)
    per_start: dict[int, int] = {}
    for c in got:
        for r in c.rows():
            per_start[r[3]] = per_start.get(r[3], 0) + r[6]
    assert per_start == interval_model(secs, interval)


def test_a_batch_the_sink_cannot_take_is_dropped_not_retried(tmp_path):
    class Broken(FakeSink):
        def send(self, table, batch, rows):
            if batch == "b1":
                raise TypeError("bad row")
            super().send(table, batch, rows)
    sink = Broken()
    ex = Exporter(sink, Spool(str(tmp_path / "s"), 1 << 20), "fake").start()
    for i in range(3):
        ex.submit(batch(i))
    assert ex.close(5)
    assert sink.got == ["b0", "b2"] and ex.lost_rows == 3


def test_spool_removes_a_dead_writers_temporary_file(tmp_path):
    path = tmp_path / "s.spool"
    path.mkdir()
    dead = path / "0000000000000004.3.jsonl.999999999.tmp"
    mine = path / f"0000000000000005.3.jsonl.{os.getpid()}.tmp"
    dead.write_text("half")
    mine.write_text("being written")
    assert len(Spool(str(path), 1 << 20)) == 0
    assert not dead.exists() and mine.exists()
