"""The per-peer K counters (spec 10.3) derived from events: by hand, and their invariant."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ncsniffer import conncounts, conntrack as ct
from tests.test_conntrack import packet_rows, stream

ZERO = dict.fromkeys(conncounts.K_FIELDS, 0)


def event(kind, state, proto=ct.TCP, direction=ct.DIR_OUT, peer=2, v6=0):
    e = np.zeros(1, ct.EVENT_DTYPE)
    e["kind"], e["state"], e["proto"], e["dir"], e["peer_lo"], e["v6"] = \
        kind, state, proto, direction, peer, v6
    return e


def test_new_counts_protocol_and_direction_end_counts_its_state():
    events = np.concatenate([event(ct.NEW, ct.ACTIVE),
                             event(ct.NEW, ct.ACTIVE, ct.ICMP6, ct.DIR_IN),
                             event(ct.END, ct.REFUSED), event(ct.NEW, ct.ACTIVE, ct.UDP, peer=3),
                             event(ct.END, ct.DRAINED, ct.UDP, peer=3)])
    k = conncounts.as_dict(*conncounts.count(events))
    assert k == {(0, 0, 2): {**ZERO, "tcp": 1, "icmp": 1, "in": 1, "out": 1, "active": 1,
                             "refused": 1},
                 (0, 0, 3): {**ZERO, "udp": 1, "out": 1, "active": 1}}


def test_an_end_alone_makes_active_negative_so_deltas_add_up():
    k = conncounts.as_dict(*conncounts.count(event(ct.END, ct.TIMEDOUT, v6=1)))
    assert k == {(1, 0, 2): {**ZERO, "timedout": 1, "active": -1}}


def test_no_events_no_peers():
    peers, counts = conncounts.count(np.zeros(0, ct.EVENT_DTYPE))
    assert len(peers) == 0 and counts.shape == (0, len(conncounts.K_FIELDS))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([ct.TCP, ct.UDP, ct.ICMP, ct.ICMP6]), st.booleans(),
                          st.integers(1, 4), st.sampled_from(range(ct.CLOSED, ct.DRAINED))),
                max_size=30))
def test_the_sums_of_10_3_hold(conns):
    """Each connection begun and ended (drained ones left out): the three sums agree."""
    events = np.concatenate([np.zeros(0, ct.EVENT_DTYPE)] + [
        np.concatenate([event(ct.NEW, ct.ACTIVE, p, int(d), peer),
                        event(ct.END, s, p, int(d), peer)]) for p, d, peer, s in conns])
    for k in conncounts.as_dict(*conncounts.count(events)).values():
        ended = sum(k[f] for f in conncounts.END_COUNTER.values())
        assert k["tcp"] + k["udp"] + k["icmp"] == k["in"] + k["out"] == k["active"] + ended
        assert k["active"] == 0


PEERS = [(0, 0, 5), (0, 0, 9), (1, 0, 5), (1, 7, 5), (1, 7, 2), (0, 3, 1)]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PEERS), st.booleans(), st.integers(0, 7)),
                max_size=40))
def test_peers_of_both_families_counted_as_one_by_one(rows):
    """IPv4 peers take a fast path, the others a lexsort: both agree with counting by hand."""
    events = np.zeros(len(rows), ct.EVENT_DTYPE)
    want = {}
    for i, ((v6, hi, lo), is_new, state) in enumerate(rows):
        events[i]["v6"], events[i]["peer_hi"], events[i]["peer_lo"] = v6, hi, lo
        events[i]["kind"], events[i]["proto"] = (ct.NEW if is_new else ct.END), ct.UDP
        events[i]["dir"] = ct.DIR_OUT
        events[i]["state"] = ct.ACTIVE if is_new else state
        k = want.setdefault((v6, hi, lo), dict(ZERO))
        if is_new:
            k["udp"] += 1
            k["out"] += 1
            k["active"] += 1
        elif state in conncounts.END_COUNTER:
            k[conncounts.END_COUNTER[state]] += 1
            k["active"] -= 1
    peers, counts = conncounts.count(events)
    assert peers.tolist() == sorted(want)
    assert conncounts.as_dict(peers, counts) == want


# The open tally asked of the tracker at a reset against its plain twin kept batch by batch.
@pytest.mark.slow
@pytest.mark.parametrize("reference", [False, True])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=packet_rows, cuts=st.lists(st.integers(0, 80), max_size=6),
       ticks=st.lists(st.sampled_from([0, 1, 5, 30]), max_size=6), max_conn=st.integers(1, 6))
def test_open_tally_of_the_tracker_equals_the_batch_by_batch_twin(reference, spec, cuts, ticks,
                                                                  max_conn):
    if not reference and not ct.HAVE_CORE:
        pytest.fail("the extension is not built")
    batch = stream(spec)
    tracker = ct.Tracker(ct.Timeouts(tcp_establish=2, tcp=4, udp=3, icmp=1, tcp_linger=2),
                         max_conn, reference=reference)
    tally: dict = {}
    last = 0
    for i, cut in enumerate(sorted(min(c, len(batch)) for c in cuts) + [len(batch)]):
        for events in [tracker.process(batch[last:cut])] + (
                [tracker.advance(int(batch["sec"][cut - 1]) + ticks[i])]
                if i < len(ticks) and ticks[i] and cut else []):
            conncounts.remember_open(tally, events)
        last = cut
        fast = conncounts.open_tally(tracker.still_open())
        assert {k: v.tolist() for k, v in fast.items()} == \
            {k: v.tolist() for k, v in tally.items()}
        active = conncounts.K_FIELDS.index("active")
        assert sum(int(v[active]) for v in fast.values()) == tracker.live


def asked_peers(batch: np.ndarray) -> np.ndarray:
    """Every peer of the stream, once, and one it never had (PEER_DTYPE rows)."""
    peers = np.zeros(len(batch) + 1, conncounts.PEER_DTYPE)
    for f in conncounts.PEER_DTYPE.names:
        peers[f][:-1] = batch[f]
    peers[-1]["v6"], peers[-1]["peer_lo"] = 1, 0xDEAD
    return np.unique(peers)


# The tally the core keeps as connections open and end, asked for given peers.
@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=packet_rows, cuts=st.lists(st.integers(0, 80), max_size=6),
       ticks=st.lists(st.sampled_from([0, 1, 5, 30]), max_size=6), max_conn=st.integers(1, 6),
       drain_at=st.one_of(st.none(), st.integers(0, 6)))
def test_open_counts_of_core_and_reference_equal_the_tally_of_the_open_ones(spec, cuts, ticks,
                                                                           max_conn, drain_at):
    """Timeouts, lingering, eviction (a small max_connections) and a drain: after each
    step both trackers' open_counts are the begun counts of still_open, peer by peer."""
    if not ct.HAVE_CORE:
        pytest.fail("the extension is not built")
    batch = stream(spec)
    peers = asked_peers(batch)
    timeouts = ct.Timeouts(tcp_establish=2, tcp=4, udp=3, icmp=1, tcp_linger=2)
    core, ref = (ct.Tracker(timeouts, max_conn, reference=r) for r in (False, True))
    last = 0
    for i, cut in enumerate(sorted(min(c, len(batch)) for c in cuts) + [len(batch)]):
        for t in (core, ref):
            t.process(batch[last:cut])
            if i < len(ticks) and ticks[i] and cut:
                t.advance(int(batch["sec"][cut - 1]) + ticks[i])
            if i == drain_at:
                t.drain()
        last = cut
        tally = conncounts.open_tally(core.still_open())
        want = [tally.get(p, np.zeros(len(conncounts.K_FIELDS), np.int64)).tolist()
                for p in peers.tolist()]
        assert core.open_counts(peers).tolist() == ref.open_counts(peers).tolist() == want
        with_one = core.open_counts(np.concatenate([peers, peers[:1]]))
        assert with_one[-1].tolist() == want[0]


def test_open_counts_over_thousands_of_peers_of_both_families_with_evictions():
    """More peers than the index starts with (it grows, records move when peers go),
    IPv6 peers whose words equal IPv4 ones (v6 tells them apart), SYNs evicting, then
    expiry of a part: the core's counts are those of still_open for every peer."""
    if not ct.HAVE_CORE:
        pytest.fail("the extension is not built")
    n = 6000
    syns = np.zeros(n, ct.PACKET_DTYPE)
    syns["sec"] = 1000 + np.arange(n) // 2000              # three seconds of SYNs
    syns["proto"], syns["flags"], syns["me_port"], syns["peer_port"] = ct.TCP, ct.SYN, 80, 4000
    syns["peer_lo"], syns["v6"] = 1 + np.arange(n) % 3001, np.arange(n) % 2   # all distinct
    syns["from_me"] = np.arange(n) % 3 == 0
    tracker = ct.Tracker(ct.Timeouts(tcp_establish=5), max_connections=4000)
    peers = asked_peers(syns)
    for step in (lambda: tracker.process(syns), lambda: tracker.advance(1007)):
        step()
        tally = conncounts.open_tally(tracker.still_open())
        want = [tally.get(p, np.zeros(len(conncounts.K_FIELDS), np.int64)).tolist()
                for p in peers.tolist()]
        assert tracker.open_counts(peers).tolist() == want
        assert tracker.open_counts(peers)[:, conncounts.K_FIELDS.index("active")].sum() \
            == tracker.live > 0
    assert tracker.evictions == n - 4000 and tracker.live == 2000


# ------------------------------------------- records that go while their peer has connections open

PEERS = 3
_op = st.one_of(
    st.tuples(st.just("begin"), st.integers(0, PEERS - 1), st.sampled_from((ct.TCP, ct.UDP)),
              st.sampled_from((ct.DIR_IN, ct.DIR_OUT))),
    st.tuples(st.just("end"), st.integers(0, PEERS - 1), st.integers(0, 3),
              st.sampled_from(sorted(conncounts.END_COUNTER)), st.booleans()),
    st.tuples(st.just("packet"), st.integers(0, PEERS - 1)),
    st.tuples(st.just("reset"),))


@pytest.mark.slow
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_op, max_size=30), st.sampled_from((1, 2)))
def test_a_record_made_after_its_peers_connections_began_counts_the_open_ones(ops, max_hosts):
    """Records evicted (max_hosts), reset (SIGHUP) and made anew while their peer has
    connections open: every record keeps tcp+udp+icmp == in+out == active+ended, and
    once it counts a connection its ``active`` is the peer's open connections exactly."""
    from ncsniffer import config, decode
    from ncsniffer.clock import WallClock
    from ncsniffer.sniffer import Sniffer
    s = config.validate({"bpf": "host 192.0.2.1", "sniffer": "/tmp", "resolve": False,
                         "connections": True, "max_hosts": max_hosts or 0},
                        "nc.sniffer", offline=True)
    sn = Sniffer(s, decode.DLT_EN10MB, WallClock(lambda: 1000.0, lambda: 0.0), device="x")
    assert sn.carry_open                               # live: its clock is not the packets'
    sn.reset(1000)
    open_ = {p: [] for p in range(PEERS)}            # the model: (proto, dir) of open ones
    key = [bytes([10, 0, 0, p + 1]) for p in range(PEERS)]
    for now, op in enumerate(ops, 1001):
        if op[0] == "begin":
            _, p, proto, direction = op
            sn.acct.count(key[p], 60, now)
            open_[p].append((proto, direction))
            sn.feed(event(ct.NEW, ct.ACTIVE, proto, direction, peer=0x0A000001 + p))
        elif op[0] == "end" and open_[op[1]]:
            _, p, i, state, with_packet = op
            proto, direction = open_[p].pop(i % len(open_[p]))
            if with_packet:
                sn.acct.count(key[p], 60, now)
            sn.feed(event(ct.END, state, proto, direction, peer=0x0A000001 + p))
        elif op[0] == "packet":
            sn.acct.count(key[op[1]], 60, now)
        elif op[0] == "reset":
            sn.reset(now)
        table = sn.acct.records
        slots = table.occupied()
        for k_of, k in zip(table.keys_at(slots), table.conn_dicts(slots)):
            begun = k["tcp"] + k["udp"] + k["icmp"]
            ended = sum(k[f] for f in conncounts.END_COUNTER.values())
            assert begun == k["in"] + k["out"] == k["active"] + ended
            if begun:
                assert k["active"] == len(open_[key.index(k_of)])


# ------------------------------------- the sniffer's open counts: from the tracker, and its twin

_step = st.one_of(
    st.tuples(st.just("packets"),
              st.lists(st.tuples(st.integers(0, PEERS - 1), st.sampled_from((ct.TCP, ct.UDP)),
                                 st.integers(1, 3), st.booleans(),
                                 st.sampled_from((ct.SYN, ct.SYN | ct.ACK, ct.ACK, ct.FIN | ct.ACK,
                                                  ct.RST))), min_size=1, max_size=8)),
    st.tuples(st.just("tick"), st.integers(1, 4)),
    st.tuples(st.just("reset"),))


@pytest.mark.slow
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_step, max_size=25), st.sampled_from((1, 2, 3)), st.integers(1, 4))
def test_the_open_counts_asked_of_the_tracker_equal_the_tally_kept_batch_by_batch(
        steps, max_hosts, max_connections):
    """Three live sniffers, the same packets: one takes its tracker's K per peer with
    the open ones before the batch (``process_counted``), one asks its tracker for a new
    record's open connections (after the batch, taken back to before it), the other
    keeps the plain tally; records evicted (max_hosts), reset, connections timed out,
    evicted and ended in the batch that makes a record anew: their K stay equal, and keep
    the sums of 10.3."""
    from tests.test_conntrack import pkt
    from ncsniffer import config, decode
    from ncsniffer.clock import WallClock
    from ncsniffer.sniffer import Sniffer
    s = config.validate({"bpf": "host 192.0.2.1", "sniffer": "/tmp", "resolve": False,
                         "connections": True, "max_hosts": max_hosts,
                         "max_connections": max_connections,
                         "timeouts": {"tcp_establish": 1, "tcp": 3, "udp": 2, "tcp_linger": 1}},
                        "nc.sniffer", offline=True)
    core, fast, twin = (Sniffer(s, decode.DLT_EN10MB, WallClock(lambda: 1000.0, lambda: 0.0),
                                device="x") for _ in range(3))
    key = [bytes([10, 0, 0, p + 1]) for p in range(PEERS)]
    now = 1000
    for sn in (core, fast, twin):
        sn.reset(now)
    for step in steps:
        now += 1
        for sn in (core, fast, twin):
            if step[0] == "packets":
                for p, *_ in step[1]:
                    sn.acct.count(key[p], 60, now)
                rows = np.array([pkt(now, from_me, flags, proto, 0x0A000001 + p, 40000 + port, 80)
                                 for p, proto, port, from_me, flags in step[1]], ct.PACKET_DTYPE)
                track = sn.tracker.process_counted if sn is core else sn.tracker.process
                events = track(rows)
            elif step[0] == "tick":
                track = sn.tracker.advance_counted if sn is core else sn.tracker.advance
                events = track(now + step[1])
            else:
                sn.reset(now)
                continue
            if sn is core:                 # K per peer counted in the core
                sn.take_tracked(events)
            else:
                sn.feed(events, sn.tracker if sn is fast else None)
        k_core, k_fast, k_twin = (sn.acct.records.conn_dicts(sn.acct.records.occupied())
                                  for sn in (core, fast, twin))
        assert k_core == k_fast == k_twin
        for k in k_fast:
            ended = sum(k[f] for f in conncounts.END_COUNTER.values())
            assert k["tcp"] + k["udp"] + k["icmp"] == k["in"] + k["out"] == k["active"] + ended
