"""The record store: columns, the IPv4 index and its stale entries, the order of a dump."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ncsniffer import table as table_mod
from ncsniffer.accounting import Accounting

B = bytes([10, 0, 0, 3])


POOL = [bytes([10, 0, i >> 8, i & 255]) for i in range(40)] + \
    [bytes(14) + bytes([0x80, i]) for i in range(10)] + [bytes([255]) * 16]


@pytest.mark.slow
@settings(max_examples=50, deadline=None)
@given(st.sets(st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16)),
               min_size=1, max_size=60))
def test_columns_in_numeric_order_with_their_fields(keys):
    keys = list(keys)
    acct = Accounting(1000)
    acct.count_packets(keys, np.arange(len(keys)), np.full(len(keys), 1000),
                       np.arange(len(keys)) + 40)
    got = []
    for packed, b, *_ in acct.records.columns(chunk=7):
        width = len(packed) // len(b)
        got += [(packed[i * width:(i + 1) * width], n) for i, n in enumerate(b)]
    expected = sorted(((k, i + 40) for i, k in enumerate(keys)),
                      key=lambda kb: (len(kb[0]), kb[0]))
    assert got == expected


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(POOL)), max_size=120))
def test_table_finds_what_was_added_and_not_what_was_deleted(ops):
    """Records come and go (slots reused, IPv4 index entries left stale)."""
    acct, model = Accounting(0), {}
    for add, key in ops:
        if add:
            acct.count(key, len(model) + 1, 0)
            model[key] = model.get(key, 0) + len(model) + 1
        elif key in model:
            del acct.records[key]
            del model[key]
    assert set(acct.records) == set(model) and len(acct.records) == len(model)
    for key in POOL:
        assert (key in acct.records) == (key in model)
        if key in model:
            assert acct.records[key].B == model[key] and acct.records.key(
                acct.records.find([key])[0]) == key


@pytest.mark.slow
def test_ipv4_index_compacts_after_mass_deletion():
    acct = Accounting(0)
    keys = [i.to_bytes(4, "big") for i in range(5000)]
    acct.count_run(keys, [1] * 5000, 0)
    for key in keys[:4000]:
        del acct.records[key]
    assert len(acct.records.v4) < 5000 and acct.records.stale < 2000
    acct.count_run(keys[:10], [2] * 10, 5)
    assert [acct.records[k].B for k in keys[:10]] == [2] * 10
    assert all(k in acct.records for k in keys[4000:]) and len(acct.records) == 1010


def test_slots_are_reused_after_purge():
    acct = Accounting(0)
    for i in range(10):
        acct.count(bytes([10, 0, 0, i]), 1, 0)
    assert acct.purge(86401, seconds=1) == 10
    acct.count(B, 7, 86402)
    assert acct.records.size == 10 and acct.records[B].as_dict() == \
        {"B": 7, "C": 1, "E": 86402, "N": [], "R": 0, "S": 0, "T": 0, "W": 0}


# --------------------------------------------------------------------------- K counters (10.3)

from ncsniffer import conncounts, conntrack as ct  # noqa: E402


def k_events(*rows):
    """Events from (kind, state, proto, dir, peer_lo, v6, peer_hi) rows."""
    e = np.zeros(len(rows), ct.EVENT_DTYPE)
    for f, values in zip(("kind", "state", "proto", "dir", "peer_lo", "v6", "peer_hi"),
                         zip(*rows)):
        e[f] = values
    return e


V6 = bytes(8) + bytes([0, 0, 0, 0, 0, 0, 0x12, 0x34])


def two_peers_with_connections() -> Accounting:
    """B and V6 with a few connections each (and one of a peer without a record)."""
    acct = Accounting(1000, connections=True)
    acct.count_run((B, V6), (60, 60), 1000)
    acct.count_connections(*conncounts.count(k_events(
        (ct.NEW, ct.ACTIVE, ct.TCP, ct.DIR_OUT, 0x0A000003, 0, 0),
        (ct.NEW, ct.ACTIVE, ct.UDP, ct.DIR_IN, 0x0A000003, 0, 0),
        (ct.END, ct.REFUSED, ct.TCP, ct.DIR_OUT, 0x0A000003, 0, 0),
        (ct.NEW, ct.ACTIVE, ct.ICMP6, ct.DIR_IN, 0x1234, 1, 0),
        (ct.NEW, ct.ACTIVE, ct.TCP, ct.DIR_IN, 0x0A000009, 0, 0))))   # no record: skipped
    return acct


def test_k_counts_per_peer_both_families_and_active_computed():
    table = two_peers_with_connections().records
    got = dict(zip(table.keys_at(table.occupied()), table.conn_dicts(table.occupied())))
    assert got[B] == {**dict.fromkeys(conncounts.K_FIELDS, 0), "tcp": 1, "udp": 1, "in": 1,
                      "out": 1, "refused": 1, "active": 1}
    assert got[V6]["icmp"] == got[V6]["in"] == got[V6]["active"] == 1
    assert table.conn_totals() == (2, 3, 0) and len(table) == 2


def test_ends_of_connections_not_begun_in_the_record_are_dropped():
    """After SIGHUP (or a purge) an old connection's end has no begin here: the sums hold."""
    acct = Accounting(1000, connections=True)
    acct.count(B, 60, 1000)
    acct.count_connections(*conncounts.count(k_events(
        (ct.END, ct.TIMEDOUT, ct.TCP, ct.DIR_OUT, 0x0A000003, 0, 0))))
    acct.count_connections(*conncounts.count(k_events(
        (ct.NEW, ct.ACTIVE, ct.UDP, ct.DIR_OUT, 0x0A000003, 0, 0),
        (ct.END, ct.RESET, ct.TCP, ct.DIR_OUT, 0x0A000003, 0, 0),
        (ct.END, ct.CLOSED, ct.TCP, ct.DIR_OUT, 0x0A000003, 0, 0))))
    k = acct.records.conn_dicts(acct.records.occupied())[0]
    assert (k["udp"], k["out"], k["timedout"], k["active"]) == (1, 1, 0, 0)
    assert k["closed"] + k["reset"] == 1


def test_k_goes_with_its_record_and_with_sighup():
    acct = Accounting(1000, max_hosts=1, connections=True)
    acct.count(B, 60, 1000)
    acct.count_connections(*conncounts.count(k_events(
        (ct.NEW, ct.ACTIVE, ct.TCP, ct.DIR_OUT, 0x0A000003, 0, 0))))
    acct.count(V6, 60, 1001)                  # evicts B, its slot reused
    acct.count(B, 60, 1002)                   # B again: a new record, K from zero
    table = acct.records
    assert table.conn_dicts(table.occupied()) == [dict.fromkeys(conncounts.K_FIELDS, 0)]
    acct.count_connections(*conncounts.count(k_events(
        (ct.NEW, ct.ACTIVE, ct.TCP, ct.DIR_OUT, 0x0A000003, 0, 0))))
    acct.reset(1003)
    acct.count(B, 60, 1003)
    assert acct.records.connections and acct.records.conn_totals() == (0, 0, 0)


def test_k_columns_grow_with_the_table():
    acct = Accounting(1000, connections=True)
    keys = [bytes([10, 1, i >> 8, i & 255]) for i in range(3000)]
    acct.count_packets(keys, np.arange(len(keys)), np.full(len(keys), 1000), np.full(len(keys), 60))
    events = k_events(*[(ct.NEW, ct.ACTIVE, ct.UDP, ct.DIR_OUT, int.from_bytes(k, "big"), 0, 0)
                        for k in keys])
    acct.count_connections(*conncounts.count(events))
    assert acct.records.conn_totals() == (3000, 3000, 0)
    assert len(acct.records.cols["conn"]) == len(acct.records.cols["B"]) >= 3000


def test_no_k_columns_when_connections_are_off():
    acct = Accounting(1000)
    acct.count(B, 60, 1000)
    assert "conn" not in acct.records.cols and acct.records.conn_totals() is None
    assert all(len(row) == 9 for row in acct.records.columns())


def test_k_counters_saturate_instead_of_wrapping():
    acct = Accounting(1000, connections=True)
    acct.count(B, 60, 1000)
    peers, deltas = conncounts.count(k_events((ct.NEW, ct.ACTIVE, ct.UDP, ct.DIR_OUT,
                                               0x0A000003, 0, 0)))
    acct.count_connections(peers, deltas * (2 ** 32 - 2))
    acct.count_connections(peers, deltas * 5)
    k = acct.records.conn_dicts(acct.records.occupied())[0]
    assert k["udp"] == k["out"] == k["active"] == 2 ** 32 - 1


@given(st.lists(st.tuples(st.integers(0, 40), st.lists(st.integers(0, 2 ** 31), min_size=3,
                                                         max_size=3)), max_size=60),
       st.booleans())
def test_sum_by_slot_equals_its_plain_twin(rows, distinct):
    if distinct:
        rows = list({slot: (slot, r) for slot, r in rows}.values())
    slots = np.array([slot for slot, _ in rows], np.int64)
    values = np.array([r for _, r in rows], np.int64).reshape(len(rows), 3)
    got, want = table_mod.sum_by_slot(slots, values), table_mod.sum_by_slot_plain(slots, values)
    assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()


def test_conn_array_is_conn_dicts_in_the_files_order():
    from ncsniffer import dumpfile
    table = two_peers_with_connections().records
    slots = table.occupied()
    assert table_mod.K_SORTED == dumpfile.K_KEYS
    assert list(map(tuple, table.conn_array(slots).tolist())) == \
        [dumpfile._K_VALUES(d) for d in table.conn_dicts(slots)]
    assert table.conn_values(slots) == [dumpfile._K_VALUES(d) for d in table.conn_dicts(slots)]


_k_row = st.lists(st.one_of(st.integers(-3, 5), st.integers(-2 ** 40, 2 ** 40)),
                  min_size=len(conncounts.K_FIELDS), max_size=len(conncounts.K_FIELDS))


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 6), min_size=len(table_mod.CONN_STORED),
                         max_size=len(table_mod.CONN_STORED)), min_size=1, max_size=6),
       st.lists(st.tuples(st.integers(-1, 5), _k_row), max_size=12), st.booleans(),
       st.booleans(), st.booleans())
def test_add_connections_in_c_equals_its_plain_twin(start, rows, distinct, near_max, narrow):
    """Records with K already (near saturation or not), deltas of any sign and size for
    some of them (-1: no record; a slot twice: the plain twin's sum), int64 or int32 as
    the core gives them: the same K."""
    if distinct:
        rows = list({slot: (slot, r) for slot, r in rows}.values())
    k = np.array(start, np.int64) + (table_mod.CONN_MAX - 6 if near_max else 0)
    slots = np.array([min(s, len(k) - 1) for s, _ in rows], np.int64)
    deltas = np.array([r for _, r in rows], np.int64).reshape(len(rows), ct.K_WIDTH)
    if narrow:
        deltas = deltas.clip(-2 ** 31, 2 ** 31 - 1).astype(np.int32)
    tables = []
    for fast in (True, False):
        acct = Accounting(1000, connections=True)
        acct.count_packets([bytes([10, 0, 0, i]) for i in range(len(k))], np.arange(len(k)),
                           np.full(len(k), 1000), np.full(len(k), 60))
        acct.records.cols["conn"]["k"][:len(k)] = k
        add = acct.records.add_connections if fast else acct.records.add_connections_plain
        add(slots, deltas)
        tables.append(acct.records.cols["conn"]["k"][:len(k)].tolist())
    assert tables[0] == tables[1]


def test_add_connections_refuses_a_slot_beyond_the_table():
    acct = two_peers_with_connections()
    with pytest.raises(IndexError):
        acct.records.add_connections(np.array([10 ** 6]), np.ones((1, ct.K_WIDTH), np.int64))


def test_add_k_refuses_buffers_that_are_not_k_columns_slots_and_rows():
    """The C twin reads raw buffers: sizes that do not match are refused, not read."""
    add_k = pytest.importorskip("ncsniffer._conntrack").add_k
    k = np.zeros((4, len(table_mod.CONN_STORED)), np.uint32)
    slots, deltas = np.array([0, 1]), np.ones((2, ct.K_WIDTH), np.int64)
    for bad in ((k[:, :5].copy(), slots, deltas), (k, slots.astype(np.int32), deltas),
                (k, slots, deltas[:1]), (k.tobytes(), slots, deltas),
                (k, slots, deltas.astype(np.uint64)), (k, slots, deltas.astype(np.int16))):
        with pytest.raises((ValueError, TypeError, BufferError)):
            add_k(*bad)
    assert add_k(k, slots, deltas) and k[:2].sum() and not k[2:].any()
    assert not add_k(k, np.array([3, 3]), deltas)              # twice: left to the twin


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=len(table_mod.CONN_STORED),
                         max_size=len(table_mod.CONN_STORED)), max_size=30),
       st.integers(0, 2 ** 32 - 4))
def test_conn_values_share_a_tuple_per_distinct_k_and_equal_the_plain_twin(ks, base):
    """Few distinct K among many records: one tuple object each, the values the plain
    twin's (a tuple per record), record for record."""
    acct = Accounting(1000, connections=True)
    acct.count_packets([bytes([10, 0, 0, i]) for i in range(len(ks))], np.arange(len(ks)),
                       np.full(len(ks), 1000), np.full(len(ks), 60))
    table = acct.records
    slots = table.occupied()
    table.cols["conn"]["k"][slots] = np.array(ks, np.int64).reshape(
        len(ks), len(table_mod.CONN_STORED)) + base
    got = table.conn_values(slots)
    assert got == table.conn_values_plain(slots)
    assert len({id(v) for v in got}) == len(set(got))
