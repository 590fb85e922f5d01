"""SPEC 4: the accounting arithmetic, branch by branch, with the clock passed in."""

import random

import pytest

import numpy as np

from hypothesis import given, settings, strategies as st

from ncsniffer import fastread
from ncsniffer.accounting import Accounting, PURGE_BATCH
from ncsniffer.resolver import LookupQueue
from tests import reference

A = bytes([10, 0, 0, 2])
B = bytes([10, 0, 0, 3])


def test_new_record_takes_global_start_not_now():
    acct = Accounting(1000)
    acct.count(A, 100, 1000)
    acct.count(B, 60, 1200)
    a, b = acct.records[A], acct.records[B]
    assert (a.B, a.C, a.E, a.R, a.S, a.T, a.W, list(a.N)) == (100, 1, 1000, 0, 1000, 0, 0, [])
    assert (b.B, b.C, b.E, b.S) == (60, 1, 1200, 1000)


def test_first_interval_needs_five_packets_when_e_equals_s():
    acct = Accounting(1000)
    for now in (1000, 1001, 1002, 1003):
        acct.count(A, 100, now)
    acct.count(A, 100, 1400)            # E + 300 <= now, but E == S and C == 4 < 5
    rec = acct.records[A]
    assert (rec.B, rec.C, rec.E, rec.R, rec.W) == (500, 5, 1000, 0, 0)
    acct.count(A, 40, 1500)             # C == 5: rate update with dt = now - S
    assert rec.R == 5 * (3600.0 / 500) and rec.W == 500 * (3600.0 / 500)
    assert (rec.B, rec.C, rec.E) == (40, 1, 1500)


def test_300_second_rule_and_decay_after_e_moved():
    acct = Accounting(1000)
    for now in range(1000, 1005):
        acct.count(A, 10, now)
    acct.count(A, 10, 1400)    # update over the 5 earlier packets: dt = 400; this one starts anew
    r1, w1 = 5 * 9.0, 50 * 9.0
    rec = acct.records[A]
    assert (rec.R, rec.W, rec.E) == (r1, w1, 1400)
    acct.count(A, 20, 1699)                     # E + 300 > now: accumulate
    assert (rec.B, rec.C) == (30, 2)
    acct.count(A, 5, 1700)                      # E + 300 == now: update, E != S
    m = 3600.0 / (3600 + 1700 - 1400)
    assert rec.R == (r1 + 2) * m and rec.W == (w1 + 30) * m
    assert (rec.B, rec.C, rec.E) == (5, 1, 1700)


def test_record_created_after_start_updates_after_300s_even_with_few_packets():
    acct = Accounting(1000)
    acct.count(A, 100, 2000)                    # E = 2000, S = 1000: E != S
    acct.count(A, 100, 2300)
    rec = acct.records[A]
    m = 3600.0 / (3600 + 2300 - 2000)
    assert rec.R == 1 * m and rec.W == 100 * m and rec.C == 1


def test_global_first_interval_is_300s_then_60s():
    acct = Accounting(1000)
    assert (acct.next, acct.nextrate) == (1300, 300)
    for now in (1000, 1001, 1002, 1003, 1004, 1005):
        acct.count(A, 100, now)
    assert (acct.ra, acct.ba, acct.rate) == (6, 600, 0)
    acct.count(A, 50, 1299)                     # next > now
    assert acct.ra == 7
    acct.count(A, 50, 1300)                     # first update: rate < 1 -> dt = now - start
    assert acct.rate == 7 * (3600.0 / 300) and acct.bw == 650 * (3600.0 / 300)
    assert (acct.ra, acct.ba, acct.next, acct.nextrate) == (1, 50, 1360, 60)
    rate, bw = acct.rate, acct.bw
    acct.count(A, 10, 1400)                     # rate >= 1: dt = 3600 + now + nextrate - next
    m = 3600.0 / (3600 + 1400 + 60 - 1360)
    assert acct.rate == (rate + 1) * m and acct.bw == (bw + 50) * m
    assert acct.hits_per_minute() == acct.rate / 60
    assert acct.bytes_per_second() == acct.bw / 3600


def test_global_waits_for_five_packets_while_rate_below_one():
    acct = Accounting(1000)
    acct.count(A, 100, 1000)
    acct.count(A, 100, 5000)          # next <= now, but rate < 1 and ra < 5
    assert (acct.ra, acct.rate) == (2, 0)
    for now in (5001, 5002, 5003):
        acct.count(A, 100, now)
    acct.count(A, 100, 5004)          # ra == 5: update, dt = now - start
    assert acct.rate == 5 * (3600.0 / 4004)


def test_global_dt_is_at_least_one_second():
    acct = Accounting(1000)
    acct.next = 1000                  # force an update in the start second
    for _ in range(6):
        acct.count(A, 1, 1000)
    assert acct.rate == 5 * 3600.0


def test_purge_boundary_is_strict():
    acct = Accounting(1000)
    acct.count(A, 1, 1000)
    acct.count(B, 1, 1001)
    assert acct.purge(1000 + 86400) == 0         # E + 86400 == now: kept
    assert acct.purge(1000 + 86401) == 1         # E + 86400 < now: gone
    assert A not in acct.records and B in acct.records
    assert acct.purged == 1


@pytest.mark.slow
def test_purge_works_in_bounded_batches():
    acct = Accounting(0)
    n = PURGE_BATCH * 2 + 10
    for i in range(n):
        acct.count(i.to_bytes(4, "big"), 1, 0)
    assert acct.purge(86401, seconds=1) == PURGE_BATCH
    assert acct.purge(86401, seconds=1) == PURGE_BATCH
    assert acct.purge(86401, seconds=1) == 10
    assert not acct.records


@pytest.mark.slow
def test_purge_covers_elapsed_seconds_in_one_call():
    acct = Accounting(0)
    for i in range(PURGE_BATCH + 5):
        acct.count(i.to_bytes(4, "big"), 1, 0)
    assert acct.purge(90000, seconds=3) == PURGE_BATCH + 5


def test_reset_clears_records_and_globals():
    acct = Accounting(1000)
    acct.count(A, 100, 1000)
    acct.reset(2000)
    assert not acct.records     # the names queue: the resolver's reset (test_resolver)
    assert (acct.start, acct.rate, acct.bw, acct.ra, acct.ba, acct.next) == (2000, 0, 0, 0, 0, 2300)
    acct.count(B, 1, 2005)
    assert acct.records[B].S == 2000


def test_lookup_queued_once_while_pending():
    acct = Accounting(1000, names=LookupQueue())
    for now in range(1000, 1010):
        acct.count(A, 1, now)
    assert list(acct.names) == [A]
    acct.names.take(1)
    acct.records[A].T = 1000 + 86400        # what the resolver does when it sends
    acct.count(A, 1, 1011)
    assert not acct.names
    assert acct.records.set_names(A, ["a.example"], 5000) and acct.records[A].N == ["a.example"]
    assert not acct.records.set_names(B, ["b"], 1)


def test_no_lookups_when_disabled():
    acct = Accounting(1000)
    acct.count(A, 1, 1000)
    assert acct.names is None and acct.records[A].T == 0


def test_max_hosts_evicts_least_recently_updated():
    acct = Accounting(1000, max_hosts=2)
    acct.count(A, 1, 1000)
    acct.count(B, 1, 1001)
    acct.count(A, 1, 1002)                   # A is now the most recent
    c = bytes([10, 0, 0, 4])
    acct.count(c, 1, 1003)
    assert set(acct.records) == {A, c} and acct.evicted == 1


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 400), st.integers(1, 1500)),
                min_size=1, max_size=300))
def test_matches_reference_model(steps):
    """Random traffic: every field equals the plain model of SPEC 4."""
    keys = [bytes([192, 0, 2, i]) for i in range(4)]
    now = 1_000_000
    acct = Accounting(now)
    ref = reference.new_state(now)
    for which, gap, length in steps:
        now += gap
        acct.count(keys[which], length, now)
        reference.account(ref, keys[which], length, now)
    for key, rec in ref["ips"].items():
        got = acct.records[key].as_dict()
        got["N"] = []
        assert got == rec
    assert (acct.rate, acct.bw, acct.ra, acct.ba, acct.next) == \
        (ref["rate"], ref["bw"], ref["ra"], ref["ba"], ref["next"])


@pytest.mark.slow
def test_long_run_crosses_every_branch():
    rnd = random.Random(3)
    now = 1_500_000_000
    acct = Accounting(now)
    ref = reference.new_state(now)
    for _ in range(20000):
        now += rnd.choice((0, 0, 1, 5, 61, 299, 300, 301, 900))
        key = bytes([198, 51, 100, rnd.randrange(30)])
        length = rnd.randrange(40, 1500)
        acct.count(key, length, now)
        reference.account(ref, key, length, now)
    assert {k: r.as_dict() for k, r in acct.records.items()} == ref["ips"]
    assert acct.rate == ref["rate"] and acct.bw == ref["bw"]


KEYS = [bytes([192, 0, 2, i]) for i in range(4)] + [bytes(15) + bytes([i]) for i in (1, 2)]


def feed_in_runs(acct, packets, cuts):
    """Hand ``packets`` (key, second, length) to ``count_packets`` in runs cut at ``cuts``."""
    bounds = sorted({0, len(packets), *(c % (len(packets) + 1) for c in cuts)})
    for a, b in zip(bounds, bounds[1:]):
        run = packets[a:b]
        keys = list(dict.fromkeys(k for k, _, _ in run))
        which = np.array([keys.index(k) for k, _, _ in run])
        acct.count_packets(keys, which, np.array([t for _, t, _ in run]),
                           np.array([n for _, _, n in run]))


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(KEYS) - 1),
                          st.sampled_from((0, 0, 0, 1, 3, 59, 60, 61, 299, 300, 301, 1000, -1,
                                           -300)),
                          st.integers(0, 1500)), min_size=1, max_size=400),
       st.lists(st.integers(0, 400), max_size=6))
def test_runs_of_many_seconds_match_reference_model(steps, cuts):
    """Whole runs (many seconds, time sometimes going back) give the plain model's
    numbers exactly, and the lookup queue in first-packet order."""
    now = 1_000_000
    acct = Accounting(now, names=LookupQueue())
    ref = reference.new_state(now)
    packets = []
    for which, gap, length in steps:
        now += gap
        packets.append((KEYS[which], now, length))
        reference.account(ref, KEYS[which], length, now)
    feed_in_runs(acct, packets, cuts)
    assert {k: r.as_dict() for k, r in acct.records.items()} == ref["ips"]
    assert (acct.rate, acct.bw, acct.ra, acct.ba, acct.next, acct.nextrate) == \
        (ref["rate"], ref["bw"], ref["ra"], ref["ba"], ref["next"], ref["nextrate"])
    assert list(acct.names) == list(dict.fromkeys(k for k, _, _ in packets))


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(KEYS) - 1), st.integers(0, 400)),
                min_size=1, max_size=200),
       st.lists(st.integers(0, 200), max_size=4))
def test_max_hosts_in_runs_equals_packet_by_packet(steps, cuts):
    now, packets = 1_000_000, []
    for which, gap in steps:
        now += gap
        packets.append((KEYS[which], now, 100))
    one, runs = Accounting(packets[0][1], max_hosts=3), Accounting(packets[0][1], max_hosts=3)
    for key, t, n in packets:
        one.count(key, n, t)
    feed_in_runs(runs, packets, cuts)
    assert {k: r.as_dict() for k, r in one.records.items()} == \
        {k: r.as_dict() for k, r in runs.records.items()}
    assert one.evicted == runs.evicted and list(one.recent) == list(runs.recent)


def test_max_hosts_after_a_purge_and_across_runs():
    """Purged records leave the LRU order too; records added one by one are found
    through the index after the run."""
    acct = Accounting(0, max_hosts=3)
    for i in range(3):
        acct.count(bytes([10, 0, 0, i]), 1, 0)
    assert acct.purge(86401, seconds=1) == 3 and not acct.recent
    acct.count_run([bytes([10, 0, 1, i]) for i in range(5)] + [bytes(16)], [1] * 6, 86402)
    assert len(acct.records) == 3 and acct.evicted == 3
    assert set(acct.records) == {bytes([10, 0, 1, 3]), bytes([10, 0, 1, 4]), bytes(16)}
    assert acct.records[bytes([10, 0, 1, 4])].B == 1 and not acct.records.unindexed


@pytest.mark.slow
def test_max_hosts_churn_keeps_the_index_small():
    acct = Accounting(0, max_hosts=100)
    for run in range(30):
        acct.count_run([(run * 1000 + i).to_bytes(4, "big") for i in range(1000)], [1] * 1000, run)
    assert len(acct.records) == 100 and acct.evicted == 29900
    assert len(acct.records.v4) < 5000          # not one entry per address ever seen
    assert all(k in acct.records for k in [(29000 + i).to_bytes(4, "big") for i in range(900, 1000)])


def test_max_hosts_with_lookups_survives_the_table_growing():
    """Issue 11.13: evictions with name lookups on read a column the table had
    since replaced by a bigger one (IndexError at the first growth)."""
    acct = Accounting(1000, max_hosts=1500, names=LookupQueue())
    keys = [(0x0b000000 + i).to_bytes(4, "big") for i in range(2000)]
    acct.count_run(keys, [60] * 2000, 1000)
    assert len(acct.records) == 1500 and acct.evicted == 500
    assert list(acct.names) == keys[500:]


def lru_model(packets, limit):
    """The plain reference of SPEC 4, plus max_hosts (evict the least recently seen)
    and the lookup queue (each IP once while pending; an evicted IP leaves it)."""
    ref, recent, queue, evicted = reference.new_state(packets[0][1]), [], [], 0
    for key, now, length in packets:
        if key in recent:
            recent.remove(key)
        elif len(ref["ips"]) >= limit:
            gone = recent.pop(0)
            del ref["ips"][gone]
            evicted += 1
            if gone in queue:
                queue.remove(gone)
        recent.append(key)
        reference.account(ref, key, length, now)
        if ref["ips"][key]["T"] < now and key not in queue:
            queue.append(key)
    return ref, queue, evicted


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 400)), min_size=1, max_size=300),
       st.one_of(st.integers(1, 50), st.integers(1025, 1100)), st.lists(st.integers(0, 300), max_size=4))
def test_max_hosts_with_lookups_equals_the_plain_model(steps, limit, cuts):
    """Many peers (the table grows past its first size) and evictions, lookups on."""
    now, packets = 1_000_000, []
    for which, gap in steps:
        now += gap % 7 if which % 3 else gap
        packets.append(((0x0a000000 + which).to_bytes(4, "big"), now, 100))
    packets += [((0x0c000000 + i).to_bytes(4, "big"), now, 60) for i in range(1150)]
    acct = Accounting(packets[0][1], max_hosts=limit, names=LookupQueue())
    feed_in_runs(acct, packets, cuts)
    ref, queue, evicted = lru_model(packets, limit)
    assert {k: r.as_dict() for k, r in acct.records.items()} == ref["ips"]
    assert list(acct.names) == queue
    assert acct.evicted == evicted


FLOOD = 1_000_000


def write_flood(path: str, count: int, me: str = "192.0.2.10", per_second: int = 100_000) -> None:
    """A pcap of ``count`` UDP packets to ``me``, each from a different source."""
    import ipaddress
    import struct

    from ncsniffer import decode, pcapgen
    frame = bytearray(pcapgen.frame(decode.DLT_EN10MB, pcapgen.ip_packet("10.0.0.1", me)))
    record = struct.Struct("<IIII")
    base = int(ipaddress.ip_address("10.0.0.0"))
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        chunk = []
        for i in range(count):
            frame[26:30] = (base + i).to_bytes(4, "big")
            chunk.append(record.pack(1_600_000_000 + i // per_second, 0, len(frame), len(frame)))
            chunk.append(bytes(frame))
            if len(chunk) >= 20000:
                fh.write(b"".join(chunk))
                chunk.clear()
        fh.write(b"".join(chunk))


@pytest.mark.integration
@pytest.mark.slow
def test_default_config_bounds_a_flood_of_a_million_peers(tmp_path):
    """Issue 11.13: with the default config (names on, no max_hosts) nothing bounded
    the table; a flood of 1,000,000 sources must stay within the default bound."""
    from ncsniffer import dumpfile
    from ncsniffer.config import DEFAULT_MAX_HOSTS
    from tests.conftest import run_cli_peak, write_config
    from tests.daemonutil import free_port
    cap = str(tmp_path / "flood.pcap")
    write_flood(cap, FLOOD)
    conf = write_config(str(tmp_path), bpf="host 192.0.2.10", resolve=True,
                        nameserver=f"127.0.0.1:{free_port()}")     # nothing answers there
    result, peak_kib = run_cli_peak("-c", conf, "-q", "-r", cap, "start", timeout=120)
    peak_mb = peak_kib / 1024
    assert result.returncode == 0, result.stderr
    stats = dumpfile.read_stats(str(tmp_path / "nc.sniffer.stats"))
    assert int(stats.header_value("users")) == len(stats.records) == DEFAULT_MAX_HOSTS
    assert int(stats.header_value("evicted")) == FLOOD - DEFAULT_MAX_HOSTS
    print(f"peak RSS {peak_mb:.0f} MB")
    assert peak_mb < 400, f"peak RSS {peak_mb:.0f} MB"


def test_lru_order_survives_leaving_and_reaching_the_limit():
    """The LRU order is kept as numbers far from max_hosts and as an ordered dict
    at it; switching between the two keeps who is least recently seen."""
    k = [bytes([10, 1, 0, i]) for i in range(11)]
    acct = Accounting(0, max_hosts=4)
    acct.count_run(k[:5], [1] * 5, 0)                  # k0 evicted
    acct.count(k[5], 1, 86000)                         # k1 evicted
    assert acct.purge(86450, seconds=1) == 3            # k2 k3 k4 gone, k5 stays
    acct.count_run([k[6], k[7]], [1, 1], 86450)
    acct.count_run([k[8], k[6]], [1, 1], 86451)
    acct.count(k[9], 1, 86452)                          # evicts k5, then k7
    acct.count(k[10], 1, 86452)
    assert list(acct.recent) == [k[8], k[6], k[9], k[10]] and acct.evicted == 4


@pytest.mark.slow
def test_readme_first_ten_minutes_table():
    """README "First ten minutes": a steady 1000 bytes/s peer, seen 10 s after the start."""
    acct = Accounting(0)
    shown = {}
    checkpoints = {60: 0, 300: 77, 600: 148, 1800: 381, 3600: 617, 7200: 854, 10800: 944}
    for t in range(0, 10801):
        acct.count(A, 1000, 10 + t)
        if t in checkpoints:
            shown[t] = round(acct.records[A].W / 3600)
    assert shown == checkpoints


def run_both_paths(packets, cuts, monkeypatch) -> list:
    """Every column of the records after ``feed_in_runs``, by the C rule and by
    the numpy twin (``NCSNIFFER_FASTREAD=0``)."""
    out = []
    for mode in ("1", "0"):
        monkeypatch.setenv(fastread.ENV, mode)
        acct = Accounting(1_000_000, names=LookupQueue())
        feed_in_runs(acct, packets, cuts)
        cols = acct.records.cols
        out.append(({k: r.as_dict() for k, r in acct.records.items()},
                    {name: cols[name][:len(acct.records)].tolist() for name in cols if name != "N"},
                    list(acct.names)))
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(KEYS) - 1),
                          st.sampled_from((0, 0, 0, 0, 1, 60, 299, 300, 301, 4000, -1,
                                           -300)),
                          st.integers(0, 1500)), min_size=1, max_size=300),
       st.lists(st.integers(0, 300), max_size=6))
def test_the_c_rule_equals_the_numpy_twin(steps, cuts):
    """accounting._count_columns in C (packet by packet) and by numpy (IP by IP):
    the same records in the same slots, field for field (records made in the
    start second too: their first interval waits for five packets)."""
    if not fastread.enabled():
        pytest.skip("_fastread not built")
    now, packets = 1_000_000, []
    for which, gap, length in steps:
        packets.append((KEYS[which], now, length))
        now += gap
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast, plain = run_both_paths(packets, cuts, monkeypatch)
    assert fast == plain
