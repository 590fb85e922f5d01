"""Connection tracking (spec 10.1, 10.2): each rule by hand on the core and on the
reference, then the core held equal to the reference on random packet streams."""

from __future__ import annotations

import functools
import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ncsniffer import conncounts, conntrack as ct
from ncsniffer.errors import ConfigError

S, A, F, R, P = ct.SYN, ct.ACK, ct.FIN, ct.RST, 0x08
ME, PEER = True, False
ME_ADDR, PEER_ADDR = 0x0A000001, 0xC0A80002       # 10.0.0.1, 192.168.0.2


def pkt(sec, sender, flags=A, proto=ct.TCP, peer=PEER_ADDR, me_port=40000, peer_port=80,
        usec=0, wirelen=60, v6=0, peer_hi=0):
    """One PACKET_DTYPE row (field order)."""
    return (sec, 0, ME_ADDR, peer_hi, peer, usec, wirelen, me_port, peer_port, proto,
            int(sender), v6, flags)


@pytest.fixture(params=["core", "reference"])
def make(request):
    """Build the tracker under test: the compiled core or the model."""
    if request.param == "core" and not ct.HAVE_CORE:
        pytest.skip("the extension is not built")
    return functools.partial(ct.Tracker, reference=request.param == "reference")


def model(timeouts=ct.Timeouts(), max_connections=ct.DEFAULT_MAX_CONNECTIONS):
    return ct.Tracker(timeouts, max_connections, reference=True)


def run(tracker, rows, drain=False):
    """(kind, state, dir, orig_packets, resp_packets) of each event."""
    events = tracker.process(ct.packets(rows))
    if drain:
        events = np.concatenate((events, tracker.drain()))
    return [(e["kind"], e["state"], e["dir"], e["orig_packets"], e["resp_packets"])
            for e in ct.as_dicts(events)]


NEW_OUT = ("new", "active", "out", 1, 0)
NEW_IN = ("new", "active", "in", 1, 0)


# --------------------------------------------------------------- the rules of 10.2
def test_complete_connection_closes_at_the_second_fin(make):
    rows = [pkt(1, ME, S), pkt(1, PEER, S | A), pkt(1, ME), pkt(2, ME, P | A), pkt(3, PEER, F | A),
            pkt(3, ME, F | A)]
    t = make()
    assert run(t, rows) == [NEW_OUT, ("end", "closed", "out", 4, 2)]
    assert (t.live, t.lingering) == (0, 1)


def test_refused_rst_from_the_responder_before_its_syn_ack(make):
    rows = [pkt(1, PEER, S), pkt(1, ME, R | A)]
    assert run(make(), rows) == [NEW_IN, ("end", "refused", "in", 1, 1)]


def test_rst_from_the_initiator_or_after_the_handshake_is_a_reset(make):
    assert run(make(), [pkt(1, ME, S), pkt(1, ME, R)])[-1][:2] == ("end", "reset")
    rows = [pkt(1, ME, S), pkt(1, PEER, S | A), pkt(2, PEER, R)]
    assert run(make(), rows)[-1] == ("end", "reset", "out", 1, 2)


def test_unanswered_syn_expires_after_tcp_establish(make):
    t = make()
    assert run(t, [pkt(10, ME, S), pkt(15, ME, S, peer_port=81)]) == [NEW_OUT, NEW_OUT]
    # last packet at 10: expired once now > 15, before the lookup of the packet at 16
    got = run(t, [pkt(16, PEER, S, peer_port=82)])
    assert got == [("end", "unanswered", "out", 1, 0), NEW_IN]


def test_syn_retransmission_opens_nothing_and_is_activity(make):
    t = make(max_connections=2)
    rows = [pkt(1, ME, S), pkt(1, ME, S, peer_port=81), pkt(2, ME, S), pkt(3, ME, S),
            pkt(3, ME, S, peer_port=82)]
    got = run(t, rows)
    # the retransmissions kept port 80 the most recent: port 81 is evicted
    assert got == [NEW_OUT, NEW_OUT, ("end", "evicted", "out", 1, 0), NEW_OUT]
    assert run(t, [pkt(8, PEER, R | A)]) == [("end", "refused", "out", 3, 1)]
    assert run(t, [pkt(9, ME, peer_port=82)]) == [("end", "unanswered", "out", 1, 0), NEW_OUT]
    assert t.evictions == 1


def test_pickup_midstream_is_established_with_dir_of_its_first_sender(make):
    t = make()
    assert run(t, [pkt(1, PEER, P | A), pkt(2, ME)]) == [NEW_IN]
    assert run(t, [pkt(302, ME, S, peer_port=9)]) == [NEW_OUT]        # 2 + 300: not yet
    assert run(t, [pkt(303, ME, S, peer_port=9)]) == [("end", "timedout", "in", 1, 1)]


@pytest.mark.parametrize("flags", [R, R | A, S | A])
def test_stray_rst_or_syn_ack_is_a_pickup(make, flags):
    got = run(make(), [pkt(1, PEER, flags)])
    assert got[0] == NEW_IN
    assert got[1:] == ([("end", "reset", "in", 1, 0)] if flags & R else [])


def test_linger_absorbs_late_packets_and_a_syn_reopens(make):
    t = make()
    close = [pkt(1, ME, S), pkt(1, PEER, S | A), pkt(2, ME, F | A), pkt(2, PEER, F | A)]
    assert run(t, close) == [NEW_OUT, ("end", "closed", "out", 2, 2)]
    assert run(t, [pkt(3, ME), pkt(4, PEER, R), pkt(12, ME, F | A)]) == []
    assert run(t, [pkt(12, PEER, S)]) == [NEW_IN]                    # port reuse at once


def test_after_the_linger_a_late_packet_is_a_pickup(make):
    t = make()
    run(t, [pkt(1, ME, S), pkt(1, ME, R)])
    assert run(t, [pkt(11, PEER)]) == []                           # 11 > 1 + 10? no
    assert run(t, [pkt(12, PEER)]) == [NEW_IN]


def test_udp_flow_times_out_after_20_idle_seconds(make):
    t = make()
    rows = [pkt(100, ME, 0, ct.UDP), pkt(120, PEER, 0, ct.UDP), pkt(141, PEER, 0, ct.UDP)]
    assert run(t, rows) == [NEW_OUT, ("end", "timedout", "out", 1, 1), NEW_IN]


def test_icmp_is_keyed_without_ports_and_times_out_after_10(make):
    t = make()
    rows = [pkt(5, ME, 0, ct.ICMP, me_port=8), pkt(15, PEER, 0, ct.ICMP, peer_port=3),
            pkt(26, ME, 0, ct.ICMP6, v6=1, peer_hi=0x20010db8 << 32)]
    events = t.process(ct.packets(rows))
    assert [(e["state"], e["me_port"], e["peer_port"], e["proto"]) for e in ct.as_dicts(events)] \
        == [("active", 0, 0, "icmp"), ("timedout", 0, 0, "icmp"), ("active", 0, 0, "icmp6")]


def test_still_open_at_the_end_is_drained(make):
    t = make()
    rows = [pkt(1, ME, S), pkt(1, PEER, S | A), pkt(2, PEER, F | A), pkt(3, ME, 0, ct.UDP),
            pkt(3, ME, S, peer_port=5), pkt(3, PEER, R, peer_port=5)]
    got = run(t, rows, drain=True)
    assert got[-2:] == [("end", "drained", "out", 1, 2), ("end", "drained", "out", 1, 0)]
    assert (t.live, t.lingering) == (0, 0)


def test_still_open_lists_the_open_connections_as_new_events_and_changes_nothing(make):
    """What a replay that begins to evict records needs: the connections open now, as
    ``new`` events (least recently active first); the table stays as it is."""
    t = make()
    rows = [pkt(1, ME, S), pkt(1, PEER, S | A), pkt(2, ME, 0, ct.UDP, peer_port=53),
            pkt(3, ME, S, peer_port=81), pkt(3, PEER, R | A, peer_port=81), pkt(4, PEER)]
    run(t, rows)
    assert [(e["kind"], e["state"], e["proto"], e["peer_port"])
            for e in ct.as_dicts(t.still_open())] == [("new", "active", "udp", 53),
                                                      ("new", "active", "tcp", 80)]
    assert (t.live, t.lingering) == (2, 1)
    assert [g[:2] for g in run(t, [], drain=True)] == [("end", "drained")] * 2


def test_eviction_takes_the_oldest_last_packet_and_skips_lingering(make):
    t = make(max_connections=2)
    rows = [pkt(1, ME, S, peer_port=1), pkt(1, ME, S, peer_port=2), pkt(1, ME, R, peer_port=2),
            pkt(2, ME, S, peer_port=3), pkt(2, ME, S, peer_port=1), pkt(2, ME, S, peer_port=4)]
    got = run(t, rows)
    assert [g[:2] for g in got] == [("new", "active"), ("new", "active"), ("end", "reset"),
                                    ("new", "active"), ("end", "evicted"), ("new", "active")]
    assert (t.live, t.lingering, t.evictions) == (2, 1, 1)


def test_lingering_entries_are_bounded_too_the_oldest_linger_ends_first(make):
    """max_connections lingering entries at most: one more ends the linger that began
    first, with no event; a late packet on it is then a pickup, on the others absorbed."""
    t = make(max_connections=2)
    ends = [pkt(1, ME, R, peer_port=p) for p in (1, 2, 3)]      # three pickups, reset at once
    assert [g[:2] for g in run(t, ends)] == [("new", "active"), ("end", "reset")] * 3
    assert (t.live, t.lingering) == (0, 2)
    assert run(t, [pkt(2, PEER, peer_port=2), pkt(2, PEER, peer_port=3)]) == []
    assert run(t, [pkt(2, PEER, peer_port=1)]) == [NEW_IN]      # its linger had ended
    assert (t.live, t.lingering) == (1, 2)


def rst_flood(first: int, n: int, sec: int) -> np.ndarray:
    """n lone RSTs from n distinct spoofed IPv4 sources to me:80, in one second: each a
    pickup that ends at once and lingers."""
    batch = syn_flood(first, n, sec)
    batch["flags"] = R
    return batch


def test_rst_flood_lingers_within_the_bound_and_counts_everything_else_exactly(make):
    """A flood of RSTs makes lingering entries, not live ones: they stay within
    max_connections (the table within twice that), and the connections of another
    peer, filling the table across the flood, some closed in its middle (a late ACK
    after the FINs), count exactly: none evicted, no pickup."""
    bound, closing = 50, 20                  # the other peer's connections fill the table
    t = make(max_connections=bound)

    def legit(sec, who, flags, sender=ME):
        return [pkt(sec, sender, flags, peer=1, me_port=5000 + i, peer_port=443) for i in who]
    opened = [row for i in range(bound) for row in
              legit(1, [i], S) + legit(1, [i], S | A, PEER) + legit(1, [i], A)]
    closed = legit(3, range(closing), F | A) + legit(3, range(closing), F | A, PEER)
    batches = [ct.packets(opened)]
    batches += [rst_flood((1 << 24) + 100 * b, 100, 2 + b // 10) for b in range(10)]
    batches += [np.concatenate((ct.packets(closed), rst_flood(1 << 25, 10, 3),
                                ct.packets(legit(3, range(closing), A))))]   # the late ACKs
    batches += [rst_flood((1 << 26) + 100 * b, 100, 3 + b // 10) for b in range(10)]
    events = []
    for b in batches:
        events.append(t.process(b))
        assert t.live <= bound and t.lingering <= bound
    assert t.evictions == 0
    k = conncounts.as_dict(*conncounts.count(np.concatenate(events)))
    zero = dict.fromkeys(conncounts.K_FIELDS, 0)
    assert k.pop((0, 0, 1)) == {**zero, "tcp": bound, "out": bound, "closed": closing,
                                "active": bound - closing}
    assert len(k) == 2010 and all(v == {**zero, "tcp": 1, "in": 1, "reset": 1} for v in k.values())


def test_a_lone_rst_in_a_full_table_evicts_nothing(make):
    """A pickup that its own packet ends (a lone RST) is never live after it: it takes
    no live slot, so it evicts nothing even when max_connections are open."""
    t = make(max_connections=2)
    opened = [pkt(1, ME, S, peer_port=1), pkt(1, ME, S, peer_port=2)]
    assert run(t, opened + [pkt(2, PEER, R, peer_port=3)]) == \
        [NEW_OUT, NEW_OUT, NEW_IN, ("end", "reset", "in", 1, 0)]
    assert (t.live, t.lingering, t.evictions) == (2, 1, 0)
    assert [g[:2] for g in run(t, [pkt(2, PEER, peer_port=4)])] == \
        [("end", "evicted"), ("new", "active")]               # a pickup that stays live


def test_the_clock_never_goes_back(make):
    t = make()
    assert run(t, [pkt(10, ME, 0, ct.UDP), pkt(40, ME, 0, ct.UDP, peer_port=1),
                   pkt(5, ME, 0, ct.UDP)]) == [NEW_OUT, ("end", "timedout", "out", 1, 0),
                                               NEW_OUT, NEW_OUT]
    # the packet of second 5 counted at second 40: it lives until 60
    assert len(t.advance(60)) == 0 and len(t.advance(61)) == 2


def test_advance_expires_with_no_packet(make):
    t = make()
    run(t, [pkt(10, ME, 0, ct.UDP)])
    assert len(t.advance(30)) == 0
    assert [e["state"] for e in ct.as_dicts(t.advance(31))] == ["timedout"]


def test_expiries_come_by_deadline_then_by_when_they_got_it(make):
    udp = [pkt(1, ME, 0, ct.UDP, peer_port=1), pkt(1, ME, 0, ct.UDP, peer_port=2),
           pkt(1, ME, 0, ct.UDP, peer_port=1),         # same deadline: keeps its place
           pkt(5, ME, 0, ct.ICMP), pkt(30, ME, S)]
    events = make(ct.Timeouts(icmp=16)).process(ct.packets(udp))
    assert [(e["state"], e["proto"], e["peer_port"]) for e in ct.as_dicts(events)][-4:] == \
        [("timedout", "udp", 1), ("timedout", "udp", 2), ("timedout", "icmp", 0),
         ("active", "tcp", 80)]


def test_event_fields_floats_and_addresses(make):
    t = make()
    rows = [pkt(7, PEER, 0, ct.UDP, usec=250000, wirelen=100, v6=1, peer_hi=5),
            pkt(8, ME, 0, ct.UDP, usec=1, wirelen=40, v6=1, peer_hi=5)]
    t.process(ct.packets(rows))
    (e,) = ct.as_dicts(t.drain())
    assert (e["start"], e["end"], e["peer_hi"], e["peer_lo"], e["v6"]) == \
        (7.25, 8.000001, 5, PEER_ADDR, 1)
    assert (e["orig_bytes"], e["resp_bytes"], e["dir"]) == (100, 40, "in")


def test_a_batch_of_another_layout_is_read_by_field_name(make):
    rows = ct.packets([pkt(1, PEER, 0, ct.UDP, wirelen=77), pkt(2, ME, 0, ct.UDP)])
    names = list(reversed(ct.PACKET_DTYPE.names))
    other = np.zeros(2, [(n, ct.PACKET_DTYPE[n]) for n in names] + [("extra", "u1")])
    for n in names:
        other[n] = rows[n]
    (e,) = ct.as_dicts(make().process(other[::1]))
    assert (e["dir"], e["orig_bytes"], e["peer_lo"]) == ("in", 77, PEER_ADDR)


def test_untracked_protocols_are_ignored(make):
    assert run(make(), [pkt(1, ME, 0, proto=47), pkt(1, ME, 0, proto=0)]) == []


# --------------------------------------------------------------- settings
def test_timeouts_from_config_overrides_and_refuses_unknown_keys():
    assert ct.Timeouts.from_config({"udp": 60}) == ct.Timeouts(udp=60)
    assert ct.Timeouts.from_config(None) == ct.Timeouts()
    with pytest.raises(ConfigError, match="'tpc'"):
        ct.Timeouts.from_config({"tpc": 3})
    with pytest.raises(ConfigError, match="'tcp'"):
        ct.Timeouts(tcp=-1)
    with pytest.raises(ConfigError, match="max_connections"):
        ct.Tracker(max_connections=0)


# --------------------------------------------------------------- core == reference
SLOW_MACHINE = [HealthCheck.too_slow]     # a shared machine under load: generation may lag
# gaps of 0 most often, so that many packets share a second (and entries a deadline);
# 7 to 17: around and past a whole turn of the timer wheel (8 slots for timeouts <= 4)
GAPS = [0] * 8 + sorted({1, 7, 8, 9, 17} | {t + d for t in (1, 2, 3, 4) for d in (0, 1)})
SMALL_TIMEOUTS = st.builds(ct.Timeouts, tcp_establish=st.integers(0, 3), tcp=st.integers(0, 4),
                           udp=st.integers(0, 3), icmp=st.integers(0, 3),
                           tcp_linger=st.integers(0, 3))
FLAGS = [S, S | A, A, P | A, F | A, F, R, R | A, S | R, F | R | A, 0]
KEYS = [(ct.TCP, PEER_ADDR, 0, 0, 1, 80), (ct.TCP, PEER_ADDR, 0, 0, 2, 80),
        (ct.TCP, 7, 1, 1, 1, 443), (ct.UDP, PEER_ADDR, 0, 0, 1, 53), (ct.UDP, 7, 1, 1, 1, 53),
        (ct.ICMP, PEER_ADDR, 0, 0, 0, 0), (ct.ICMP6, 7, 1, 1, 3, 4), (ct.TCP, 9, 0, 0, 5, 22)]

packet_rows = st.lists(st.tuples(st.sampled_from(GAPS), st.sampled_from(KEYS), st.booleans(),
                                 st.sampled_from(FLAGS), st.integers(0, 999999),
                                 st.integers(40, 1500)), max_size=80)


def stream(spec, start=1000):
    """Packets from (gap, key, from_me, flags, usec, wirelen): few keys, so ports get reused."""
    rows, sec = [], start
    for gap, (proto, peer, peer_hi, v6, me_port, peer_port), from_me, flags, usec, wl in spec:
        sec += gap
        rows.append(pkt(sec, from_me, flags, proto, peer, me_port, peer_port, usec, wl, v6,
                        peer_hi))
    return ct.packets(rows)


def feed(tracker, batch, cuts, ticks):
    """The batch in pieces, an idle clock tick after some; all the events, and drain's."""
    out, last = [], 0
    for i, cut in enumerate(sorted(cuts) + [len(batch)]):
        out.append(tracker.process(batch[last:cut]))
        if i < len(ticks) and ticks[i] and cut:
            out.append(tracker.advance(int(batch["sec"][cut - 1]) + ticks[i]))
        last = cut
    out.append(tracker.drain())
    return np.concatenate(out)


@pytest.mark.slow
@pytest.mark.skipif(not ct.HAVE_CORE, reason="the extension is not built")
@settings(max_examples=400, deadline=None, suppress_health_check=SLOW_MACHINE)
@given(packet_rows, SMALL_TIMEOUTS, st.integers(1, 5),
       st.lists(st.integers(0, 80), max_size=4), st.lists(st.sampled_from([0, 0, 1, 3, 5]),
                                                           max_size=5))
def test_core_equals_reference_packet_for_packet(spec, timeouts, max_conn, cuts, ticks):
    batch = stream(spec)
    cuts = [min(c, len(batch)) for c in cuts]
    core, ref = ct.Tracker(timeouts, max_conn), model(timeouts, max_conn)
    got, want = feed(core, batch, cuts, ticks), feed(ref, batch, cuts, ticks)
    assert got.tolist() == want.tolist()
    assert core.evictions == ref.evictions
    peers, counts = conncounts.count(got)
    assert conncounts.as_dict(peers, counts) == dict(ref._core.k)


@pytest.mark.slow
@pytest.mark.skipif(not ct.HAVE_CORE, reason="the extension is not built")
@settings(max_examples=150, deadline=None, suppress_health_check=SLOW_MACHINE)
@given(packet_rows, st.lists(st.integers(0, 80), max_size=6))
def test_default_timeouts_and_batch_boundaries_change_nothing(spec, cuts):
    spec = [(g * 37, *rest) for g, *rest in spec]     # gaps 0..185: around 5, 10, 20, ...
    batch = stream(spec)
    whole = feed(ct.Tracker(), batch, [], [])
    assert feed(ct.Tracker(), batch, [min(c, len(batch)) for c in cuts], []).tolist() \
        == whole.tolist() == feed(model(), batch, [], []).tolist()


@pytest.mark.skipif(not ct.HAVE_CORE, reason="the extension is not built")
@settings(max_examples=60, deadline=None, suppress_health_check=SLOW_MACHINE)
@given(st.lists(st.tuples(st.integers(0, 400),
                          st.sampled_from([5, 6, 10, 11, 20, 21, 300, 301, 600]),
                          st.booleans()), max_size=40))
def test_gaps_around_every_default_timeout(spec):
    rows, sec = [], 0
    for port, gap, from_me in spec:
        sec += gap
        proto = (ct.TCP, ct.UDP, ct.ICMP)[port % 3]
        rows.append(pkt(sec, from_me, (S, A, F | A, S | A)[port % 4], proto, peer_port=port % 3))
    batch = ct.packets(rows)
    assert feed(ct.Tracker(), batch, [], []).tolist() == \
        feed(model(), batch, [], []).tolist()


# --------------------------------------------------------------- a flood
def syn_flood(first: int, n: int, sec: int) -> np.ndarray:
    """n SYNs from n distinct spoofed IPv4 sources to me:80, in one second."""
    batch = np.zeros(n, ct.PACKET_DTYPE)
    batch["sec"], batch["me_lo"], batch["peer_lo"] = sec, ME_ADDR, np.arange(first, first + n)
    batch["me_port"], batch["peer_port"], batch["proto"] = 80, 1024, ct.TCP
    batch["flags"], batch["wirelen"] = S, 60
    return batch


@pytest.mark.slow
@pytest.mark.skipif(not ct.HAVE_CORE, reason="the extension is not built")
def test_syn_flood_is_bounded_and_counts_everything_else_exactly():
    t = ct.Tracker(max_connections=100_000)
    legit = [pkt(1, ME, S, peer=1, me_port=5000 + i, peer_port=443) for i in range(10)] + \
        [pkt(1, PEER, S | A, peer=1, me_port=5000 + i, peer_port=443) for i in range(10)] + \
        [pkt(1, s, F | A, peer=1, me_port=5000 + i, peer_port=443)
         for i in range(10) for s in (ME, PEER)]
    batches = [syn_flood(1 << 24, 150_000, 1), ct.packets(legit), syn_flood(1 << 25, 150_000, 1)]
    events = np.concatenate([t.process(b) for b in batches])
    assert (t.live, t.evictions) == (100_000, 200_000)
    k = conncounts.as_dict(*conncounts.count(events))
    assert k[(0, 0, 1)] == {**dict.fromkeys(conncounts.K_FIELDS, 0),
                            "tcp": 10, "out": 10, "closed": 10}
    total = np.sum(conncounts.count(events)[1], axis=0)
    assert dict(zip(conncounts.K_FIELDS, total))["evicted"] == 200_000


@pytest.mark.slow
@pytest.mark.skipif(not ct.HAVE_CORE, reason="the extension is not built")
@pytest.mark.parametrize("seed,bound", [(1, 1500), (2, 1500), (3, 40)])
def test_core_equals_reference_on_thousands_of_keys(seed, bound):
    """Enough keys for the hash table to grow and to shift slots back on deletion;
    with the small bound, more lingering entries than it (the oldest linger ends)."""
    batch, cuts = thousands_of_keys(seed)
    core, ref = ct.Tracker(THOUSANDS_TIMEOUTS, bound), model(THOUSANDS_TIMEOUTS, bound)
    assert feed(core, batch, cuts, []).tolist() == feed(ref, batch, cuts, []).tolist()
    assert core.evictions == ref.evictions > 0


THOUSANDS_TIMEOUTS = ct.Timeouts(tcp_establish=2, tcp=3, udp=2, icmp=1, tcp_linger=1)


def thousands_of_keys(seed: int) -> tuple[np.ndarray, list[int]]:
    """20,000 random packets on 3000 keys, and five cuts into batches."""
    rng = np.random.default_rng(seed)
    n, keys = 20_000, 3000
    batch = np.zeros(n, ct.PACKET_DTYPE)
    key = rng.integers(0, keys, n)
    batch["sec"] = 1000 + np.cumsum(rng.random(n) < 0.0005)
    batch["usec"], batch["wirelen"] = rng.integers(0, 10 ** 6, n), rng.integers(40, 1500, n)
    batch["me_lo"], batch["peer_lo"] = ME_ADDR, key % 700
    batch["me_port"], batch["peer_port"] = key // 700, 80
    batch["proto"] = np.array([ct.TCP, ct.TCP, ct.UDP, ct.ICMP])[key % 4]
    batch["from_me"], batch["flags"] = rng.integers(0, 2, n), rng.choice(FLAGS, n)
    return batch, sorted(rng.integers(0, n, 5).tolist())


@pytest.mark.slow
@pytest.mark.skipif(not ct.HAVE_CORE, reason="the extension is not built")
def test_core_equals_reference_on_the_open_connections():
    batch, _ = thousands_of_keys(4)
    core, ref = ct.Tracker(THOUSANDS_TIMEOUTS, 1500), model(THOUSANDS_TIMEOUTS, 1500)
    for tracker in (core, ref):
        tracker.process(batch[:15_000])
    assert len(core.still_open()) == core.live > 100
    assert core.still_open().tolist() == ref.still_open().tolist()
    assert feed(core, batch[15_000:], [], []).tolist() == feed(ref, batch[15_000:], [], []).tolist()


MEMORY_PROBE = """
import sys
import numpy as np
from ncsniffer import conntrack as ct

def rss():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmRSS:"))

n, batch = int(sys.argv[1]), 65536
t = ct.Tracker(max_connections=n)
rows = np.zeros(batch, ct.PACKET_DTYPE)
rows["proto"], rows["flags"], rows["me_lo"], rows["me_port"] = ct.TCP, ct.SYN, 1, 80
before = rss()
for first in range(0, 2 * n, batch):
    rows["peer_lo"] = np.arange(first, first + batch)
    t.process(rows[:min(batch, 2 * n - first)])
    if first + batch == n:
        full = rss()
print((full - before) / n, (rss() - full) / n, t.live, t.evictions)
"""


@pytest.mark.slow
@pytest.mark.skipif(not ct.HAVE_CORE, reason="the extension is not built")
def test_a_million_connections_take_at_most_200_bytes_each_and_a_flood_no_more():
    n = 16 * 65536                                   # about a million, in whole batches
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(n)], capture_output=True,
                         text=True, check=True, timeout=120).stdout.split()
    per_conn, more, live, evicted = float(out[0]), float(out[1]), int(out[2]), int(out[3])
    assert per_conn <= 200
    assert more <= 20                                # the events buffer of a batch, no table
    assert (live, evicted) == (n, n)


# ------------------------------------------- FLOW records taken without a copy (the fast path)

_flow_row = st.tuples(
    st.integers(0, 2**40), st.integers(0, 999_999), st.sampled_from([0, ct.TCP, ct.UDP, ct.ICMP]),
    st.booleans(), st.booleans(), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 65535),
    st.integers(0, 65535), st.integers(0, 255), st.integers(0, 2**32 - 1))


@settings(max_examples=100, deadline=None)
@given(st.lists(_flow_row, max_size=20), st.integers(1, 3))
def test_flow_records_are_viewed_as_packets_equal_to_the_field_by_field_copy(rows, step):
    """decode.FLOW is PACKET_DTYPE's layout: the tracker views a batch's records (no copy),
    which must read as the plain copy by field names does; a strided slice is copied."""
    from ncsniffer import decode
    flows = np.array(rows, decode.FLOW)
    assert ct.same_layout(decode.FLOW)
    viewed = ct.as_packets(flows)
    assert viewed.dtype == ct.PACKET_DTYPE and (not rows or np.shares_memory(viewed, flows))
    assert viewed.tolist() == ct.copied(flows).tolist()
    strided = flows[::step]
    assert ct.as_packets(strided).tolist() == ct.copied(strided).tolist()


def test_a_layout_that_differs_is_copied():
    """A row of the same size but another field order is not the core's: it is copied."""
    from ncsniffer import decode
    old = np.dtype([(n, decode.FLOW.fields[n][0]) for n in decode.FLOW.names], align=True)
    assert not ct.same_layout(old)
    rows = np.zeros(3, old)
    rows["peer_lo"], rows["length"] = [1, 2, 3], [60, 70, 80]
    got = ct.as_packets(rows)
    assert got["peer_lo"].tolist() == [1, 2, 3] and got["wirelen"].tolist() == [60, 70, 80]


# ------------------------------------------- K per peer counted in the core (process_counted)

def as_k(tracked) -> dict:
    """A Tracked's K deltas and open-before rows by peer, as lists (order-free)."""
    peers = [tuple(p) for p in tracked.peers.tolist()]
    assert len(set(peers)) == len(peers)
    return {p: (d, b) for p, d, b in zip(peers, tracked.deltas.tolist(), tracked.before.tolist())}


def assert_same_tracked(got, want):
    assert (got.events is None) == (want.events is None)
    if want.events is not None:
        assert got.events.tolist() == want.events.tolist()
    for f in ("peers", "deltas", "before"):
        assert getattr(got, f).dtype == getattr(want, f).dtype
        assert getattr(got, f).tolist() == getattr(want, f).tolist()


def counted_steps(tracker, batch, cuts, ticks, keep):
    """The batch in pieces (an idle tick after some) through process_counted/advance_counted;
    per step the Tracked and the open tally (``still_open``) before it."""
    out, last = [], 0
    for i, cut in enumerate(sorted(cuts) + [len(batch)]):
        steps = [lambda: tracker.process_counted(batch[last:cut], keep)]
        if i < len(ticks) and ticks[i] and cut:
            steps.append(lambda: tracker.advance_counted(int(batch["sec"][cut - 1]) + ticks[i],
                                                         keep))
        for step in steps:
            before = conncounts.open_tally(tracker.still_open())
            out.append((step(), before))
        last = cut
    return out


def test_process_counted_counts_k_per_peer_and_the_open_ones_before():
    t = ct.Tracker()
    t.process(ct.packets([pkt(1, ME, S, peer_port=81)]))
    got = t.process_counted(ct.packets([pkt(1, ME, S), pkt(1, PEER, S | A), pkt(2, ME, R),
                                        pkt(2, PEER, A, ct.UDP, peer=5)]), keep_events=False)
    assert got.events is None
    zero = [0] * ct.K_WIDTH
    k = dict(zip(conncounts.K_FIELDS, range(ct.K_WIDTH)))
    reset = list(zero)
    reset[k["tcp"]] = reset[k["out"]] = reset[k["reset"]] = 1
    before = list(zero)
    before[k["tcp"]] = before[k["out"]] = before[k["active"]] = 1
    udp = list(zero)
    udp[k["udp"]] = udp[k["in"]] = udp[k["active"]] = 1
    assert as_k(got) == {(0, 0, PEER_ADDR): (reset, before), (0, 0, 5): (udp, zero)}
    assert t.ended_totals()["reset"] == 1 and t.live == 2


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=SLOW_MACHINE)
@given(packet_rows, SMALL_TIMEOUTS, st.integers(1, 5),
       st.lists(st.integers(0, 80), max_size=4),
       st.lists(st.sampled_from([0, 0, 1, 3, 5]), max_size=5), st.booleans())
def test_k_counted_in_the_core_equals_the_plain_count_of_the_events(spec, timeouts, max_conn,
                                                                    cuts, ticks, keep):
    """The core's per-peer K deltas and open-before rows, its plain twin's (the core's
    events counted by conncounts, before = open_counts less the batch's open deltas) and
    the reference's: equal step by step, the events the same as ``process`` gives; before
    is the open tally of still_open; the summed K keep the sums of 10.3."""
    if not ct.HAVE_CORE:
        pytest.fail("the extension is not built")
    batch = stream(spec)
    cuts = [min(c, len(batch)) for c in cuts]
    fast, plain = ct.Tracker(timeouts, max_conn), ct.Tracker(timeouts, max_conn)
    plain.core_counts = False
    ref, events = model(timeouts, max_conn), ct.Tracker(timeouts, max_conn)
    assert fast.core_counts and not ref.core_counts
    runs = [counted_steps(t, batch, cuts, ticks, keep) for t in (fast, plain, ref)]
    want_events = feed(events, batch, cuts, ticks)
    total: dict = {}
    for (got, before), *others in zip(*runs):
        assert all(as_k(got) == as_k(o) for o, _ in others)
        assert all(got.peers.tolist() == o.peers.tolist() for o, _ in others)
        assert_same_tracked(pickle.loads(pickle.dumps(got, protocol=5)), got)   # the pipe's
        assert all((o.events is None) == (not keep) for o, _ in [(got, 0), *others])
        for peer, (d, b) in as_k(got).items():
            assert b == before.get(peer, np.zeros(ct.K_WIDTH, np.int64)).tolist()
            total[peer] = np.add(total.get(peer, 0), d)
    assert fast.ended_totals() == plain.ended_totals() == ref.ended_totals()
    if keep:
        got = np.concatenate([g.events for g, _ in runs[0]] + [fast.drain()])
        assert got.tolist() == want_events.tolist()
    for k in total.values():
        k = dict(zip(conncounts.K_FIELDS, k.tolist()))
        ended = sum(k[f] for f in conncounts.END_COUNTER.values())
        assert k["tcp"] + k["udp"] + k["icmp"] == k["in"] + k["out"] == k["active"] + ended


def test_thousands_of_peers_counted_in_the_core_grow_its_index():
    """More peers in one batch than the core's per-batch index starts with, of both
    families (IPv6 peers whose words equal IPv4 ones): the plain count's K, its peers'
    order (the radix sort's passes over every digit of the address)."""
    if not ct.HAVE_CORE:
        pytest.fail("the extension is not built")
    batch, _ = thousands_of_keys(5)
    batch["peer_lo"] = (np.arange(len(batch)) % 5000) * 0x10101 % 2 ** 32
    batch["v6"] = np.arange(len(batch)) % 2
    fast, plain = ct.Tracker(THOUSANDS_TIMEOUTS, 1500), ct.Tracker(THOUSANDS_TIMEOUTS, 1500)
    plain.core_counts = False
    for part in (batch[:12_000], batch[12_000:]):
        got, want = fast.process_counted(part), plain.process_counted(part)
        assert len(got.peers) > 4000 and as_k(got) == as_k(want)
        assert got.peers.tolist() == want.peers.tolist()       # sorted, as the twin's
        assert got.events.tolist() == want.events.tolist()


@pytest.mark.parametrize("big", [0, 100, 2 ** 15, 2 ** 31, 2 ** 62])
def test_tracked_goes_through_a_pipe_in_fewer_bytes_and_comes_back_the_same(big):
    """A two-process replay pickles each batch's Tracked: the counters in the narrowest
    integers that hold them, the same int64 arrays after; counts beyond 32 bits (a long
    advance of a huge table) and negative ones too."""
    n = 1000
    rng = np.random.default_rng(big)
    peers = np.zeros(n, ct.PEER_DTYPE)
    peers["peer_lo"] = np.arange(n)
    deltas = rng.integers(-big, big + 1, (n, ct.K_WIDTH))
    before = rng.integers(0, big + 1, (n, ct.K_WIDTH))
    tracked = ct.Tracked(None, peers, deltas, before)
    sent = pickle.dumps(tracked, protocol=5)
    assert_same_tracked(pickle.loads(sent), tracked)
    if big <= 100:
        assert len(sent) < len(pickle.dumps((peers, deltas, before), protocol=5)) / 4


FREE_MARK_PROBE = """
import numpy as np
from ncsniffer import conntrack as ct
n = 20000
p = np.zeros(n, ct.PACKET_DTYPE)
p["sec"], p["proto"], p["peer_lo"], p["v6"] = 1000, ct.UDP, np.arange(n), 255
for counted in (False, True):
    t = ct.Tracker(ct.Timeouts(udp=1), 100000)
    for part in (p[:10000], p[10000:]):
        t.process_counted(part) if counted else t.process(part)
    ended = t.advance_counted(1010).events if counted else t.advance(1010)
    print(len(ended), t.live, len(t.still_open()))
"""


def test_a_v6_byte_the_core_once_used_to_mark_free_peers_is_a_peer_like_any_other():
    """v6 is only 0 or 1 from a capture, but the core takes any byte: 255 marked a free
    tally record, so the index lost such peers when it grew and ending their last
    connection searched it for ever; every connection ends, once."""
    if not ct.HAVE_CORE:
        pytest.fail("the extension is not built")
    out = subprocess.run([sys.executable, "-c", FREE_MARK_PROBE], capture_output=True,
                         text=True, check=True, timeout=60).stdout.split("\n")
    assert out[:2] == ["20000 0 0", "20000 0 0"]


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=SLOW_MACHINE)
@given(st.binary(max_size=40 * ct.PACKET_DTYPE.itemsize), st.integers(1, 4),
       st.lists(st.integers(0, 40), max_size=3))
def test_any_bytes_as_packets_count_in_the_core_as_in_the_reference(data, max_conn, cuts):
    """Packets of any bytes (any v6 byte, protocol, flags, clock jumps; the addresses
    folded onto a few so that keys repeat): the core's events and K per peer are the
    reference's, and nothing hangs or crashes."""
    rows = np.frombuffer(data[:len(data) - len(data) % ct.PACKET_DTYPE.itemsize],
                         ct.PACKET_DTYPE).copy()
    rows["sec"] = 1000 + np.cumsum(rows["sec"] % 3)
    for f in ("me_hi", "me_lo", "peer_hi", "peer_lo", "me_port", "peer_port"):
        rows[f] %= 3
    rows["proto"] = np.array([ct.TCP, ct.UDP, ct.ICMP, ct.ICMP6, 0, 99])[rows["proto"] % 6]
    timeouts = ct.Timeouts(tcp_establish=1, tcp=2, udp=1, icmp=1, tcp_linger=1)
    core, ref = ct.Tracker(timeouts, max_conn), model(timeouts, max_conn)
    last = 0
    for cut in sorted(min(c, len(rows)) for c in cuts) + [len(rows)]:
        got, want = core.process_counted(rows[last:cut]), ref.process_counted(rows[last:cut])
        assert got.events.tolist() == want.events.tolist()
        assert as_k(got) == as_k(want)
        last = cut
    assert core.drain().tolist() == ref.drain().tolist()
