"""The resolver's decisions (SPEC 5), with messages built by dnspython and no network.

A few tests at the end use a UDP socket on 127.0.0.1 as a stand-in name
server, to check the I/O layer; they take milliseconds.
"""

from __future__ import annotations

import io
import ipaddress
import select
import socket

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.reversename
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ncsniffer import resolver
from ncsniffer.accounting import ONEDAY, Accounting
from ncsniffer.config import Settings
from ncsniffer.resolver import (ANSWERED, EMPTY, GONE, IGNORED, REJECTED, Lookups,
                                judge, make_query, reverse_name)

SERVER = ("127.0.0.1", 5353)
NOW = 1_700_000_000
A = ipaddress.ip_address("198.51.100.7").packed
B = ipaddress.ip_address("203.0.113.9").packed
V6 = ipaddress.ip_address("2001:db8::1").packed


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def ids(*values):
    it = iter(values)
    return lambda: next(it)


def make_lookups(keys=(A,), qps=50, outstanding=500, clock=None, random_id=None):
    acct = Accounting(NOW)
    lk = Lookups(acct, SERVER, outstanding, qps, clock=clock or Clock(), random_id=random_id)
    acct.names = lk.queue
    for key in keys:
        acct.count(key, 100, NOW)
    return acct, lk


def send_all(lk: Lookups, now: int = NOW) -> list[tuple[int, bytes]]:
    """What Resolver.tick would send: (id, wire) pairs."""
    out = []
    for key in lk.take(lk.budget()):
        started = lk.start(key, now)
        if started:
            out.append(started)
    return out


def response(wire: bytes, rcode=dns.rcode.NOERROR, answers=(), authority=(),
             flags_on=0, flags_off=0, opcode=None) -> bytes:
    """A response to the query ``wire``, built by dnspython."""
    query = dns.message.from_wire(wire)
    resp = dns.message.make_response(query)
    resp.set_rcode(rcode)
    resp.answer.extend(answers)
    resp.authority.extend(authority)
    resp.flags |= flags_on
    resp.flags &= ~flags_off
    if opcode is not None:
        resp.set_opcode(opcode)
    return resp.to_wire()


def ptr(owner, ttl, *targets):
    return dns.rrset.from_text_list(owner, ttl, "IN", "PTR", list(targets))


def soa(ttl=900, mname="ns.dialtoneinternet.net.", owner="arpa."):
    return dns.rrset.from_text(owner, ttl, "IN", "SOA", f"{mname} host.example. 1 2 3 4 5")


def one_query(key=A, **kw):
    acct, lk = make_lookups(keys=(key,), **kw)
    [(qid, wire)] = send_all(lk)
    return acct, lk, qid, wire


# --------------------------------------------------------------------------- queries

def test_reverse_names_ipv4_and_ipv6():
    assert reverse_name(A).to_text() == "7.100.51.198.in-addr.arpa."
    assert reverse_name(V6).to_text().endswith(".8.b.d.0.1.0.0.2.ip6.arpa.")
    assert reverse_name(V6).to_text().startswith("1.0.0.0.")


def test_query_is_a_recursive_ptr_query_in_class_in():
    msg = dns.message.from_wire(make_query(reverse_name(A), 4242))
    assert msg.id == 4242
    assert msg.flags & dns.flags.RD and not msg.flags & dns.flags.QR
    assert msg.opcode() == dns.opcode.QUERY
    [q] = msg.question
    assert (q.name, q.rdtype, q.rdclass) == (reverse_name(A), dns.rdatatype.PTR, 1)


def test_sending_sets_t_a_day_ahead_and_unqueues():
    acct, lk, qid, wire = one_query()
    assert acct.records[A].T == NOW + ONEDAY
    assert A not in lk.queue
    assert lk.outstanding[qid].key == A
    assert lk.counters["sent"] == 1
    # T is in the future now: more packets do not queue the IP again
    acct.count(A, 100, NOW + 5)
    assert A not in lk.queue


def test_ids_are_random_not_sequential():
    acct, lk = make_lookups(keys=[bytes([10, 0, i // 256, i % 256]) for i in range(200)])
    sent = send_all(lk)
    qids = [qid for qid, _ in sent]
    assert len(set(qids)) == len(qids) == 50
    assert qids != sorted(qids)
    assert len({q >> 8 for q in qids}) > 10   # spread over the 16 bits


def test_id_collision_draws_again():
    acct, lk = make_lookups(keys=(A, B), random_id=ids(7, 7, 7, 9))
    assert sorted(qid for qid, _ in send_all(lk)) == [7, 9]


def test_record_gone_before_sending_is_skipped():
    acct, lk = make_lookups(keys=(A, B))
    del acct.records[A]
    sent = send_all(lk)
    assert [lk.outstanding[q].key for q, _ in sent] == [B]
    assert lk.counters["skipped"] == 1


# --------------------------------------------------------------------------- accepted answers

def test_noerror_one_ptr():
    acct, lk, qid, wire = one_query()
    r = response(wire, answers=[ptr(reverse_name(A), 3600, "host.example.com.")])
    assert lk.receive(r, SERVER, NOW + 2) == ANSWERED
    rec = acct.records[A]
    assert rec.N == ["host.example.com"]          # no trailing dot
    assert rec.T == NOW + 2 + 3600
    assert qid not in lk.outstanding


def test_noerror_several_ptrs():
    acct, lk, qid, wire = one_query()
    owner = reverse_name(A)
    r = response(wire, answers=[ptr(owner, 100, "a.example.", "b.example.", "c.example.")])
    assert lk.receive(r, SERVER, NOW) == ANSWERED
    assert sorted(acct.records[A].N) == ["a.example", "b.example", "c.example"]
    assert acct.records[A].T == NOW + 100


def test_ttl_of_the_last_record_read():
    acct, lk, qid, wire = one_query()
    owner = reverse_name(A)
    other = dns.name.from_text("elsewhere.example.")
    r = response(wire, answers=[ptr(owner, 100, "a.example."), ptr(other, 7, "b.example.")])
    assert lk.receive(r, SERVER, NOW) == ANSWERED
    assert acct.records[A].N == ["a.example", "b.example"]
    assert acct.records[A].T == NOW + 7


def test_cname_then_ptr_takes_ptr_names_and_last_ttl():
    acct, lk, qid, wire = one_query()
    owner = reverse_name(A)
    alias = dns.name.from_text("7.0-25.100.51.198.in-addr.arpa.")
    cname = dns.rrset.from_text(owner, 86400, "IN", "CNAME", alias.to_text())
    r = response(wire, answers=[cname, ptr(alias, 600, "classless.example.net.")])
    assert lk.receive(r, SERVER, NOW) == ANSWERED
    assert acct.records[A].N == ["classless.example.net"]
    assert acct.records[A].T == NOW + 600


def test_in_addr_arpa_names_are_filtered():
    acct, lk, qid, wire = one_query()
    owner = reverse_name(A)
    r = response(wire, answers=[ptr(owner, 60, "7.100.51.198.In-Addr.Arpa.example.",
                                    "real.example.org.")])
    assert lk.receive(r, SERVER, NOW) == ANSWERED
    assert acct.records[A].N == ["real.example.org"]


def test_in_addr_arpa_names_are_kept_when_they_are_the_only_ones():
    acct, lk, qid, wire = one_query()
    owner = reverse_name(A)
    r = response(wire, answers=[ptr(owner, 60, "x.IN-ADDR.ARPA."), ptr(owner, 60, "y.in-addr.arpa.")])
    assert lk.receive(r, SERVER, NOW) == ANSWERED
    # (name compression on the wire may change the case of the common suffix)
    assert [n.lower() for n in acct.records[A].N] == ["x.in-addr.arpa", "y.in-addr.arpa"]


def test_nxdomain_with_soa_gives_colon_mname():
    acct, lk, qid, wire = one_query()
    ns = dns.rrset.from_text("arpa.", 5, "IN", "NS", "a.root.example.")
    r = response(wire, rcode=dns.rcode.NXDOMAIN, authority=[ns, soa(900),
                                                            soa(1, "second.example.", "in-addr.arpa.")])
    assert lk.receive(r, SERVER, NOW) == ANSWERED
    assert acct.records[A].N == [":ns.dialtoneinternet.net"]
    assert acct.records[A].T == NOW + 900         # the TTL of that SOA


def test_judge_is_pure():
    wire = make_query(reverse_name(A), 1)
    msg = dns.message.from_wire(response(wire, answers=[ptr(reverse_name(A), 42, "j.example.")]))
    assert judge(msg) == resolver.Verdict(ANSWERED, ("j.example",), 42)
    msg = dns.message.from_wire(response(wire, rcode=dns.rcode.NXDOMAIN, authority=[soa(9)]))
    assert judge(msg) == resolver.Verdict(ANSWERED, (":ns.dialtoneinternet.net",), 9)


def test_ipv6_answer():
    acct, lk, qid, wire = one_query(key=V6)
    assert dns.message.from_wire(wire).question[0].name.to_text().endswith("ip6.arpa.")
    r = response(wire, answers=[ptr(reverse_name(V6), 30, "six.example.")])
    assert lk.receive(r, SERVER, NOW) == ANSWERED
    assert acct.records[V6].N == ["six.example"]


def test_odd_bytes_in_names_come_out_escaped():
    acct, lk, qid, wire = one_query()
    r = response(wire, answers=[ptr(reverse_name(A), 30, "we\\'ird\\000\\032x.example.")])
    assert lk.receive(r, SERVER, NOW) == ANSWERED
    assert acct.records[A].N == ["we'ird\\000\\032x.example"]
    assert all(32 < ord(c) < 127 for c in acct.records[A].N[0])


# --------------------------------------------------------------------------- responses not accepted

def _assert_untouched(acct, lk, qid):
    rec = acct.records[A]
    assert rec.N == [] or rec.N == ()
    assert rec.T == NOW + ONEDAY


@pytest.mark.parametrize("case", [
    "nxdomain without authority", "servfail", "servfail with answer", "tc", "refused",
    "noerror without answer", "opcode notify",
])
def test_responses_to_our_query_that_are_not_accepted(case):
    acct, lk, qid, wire = one_query()
    answer = [ptr(reverse_name(A), 60, "host.example.")]
    r = {
        "nxdomain without authority": lambda: response(wire, rcode=dns.rcode.NXDOMAIN),
        "servfail": lambda: response(wire, rcode=dns.rcode.SERVFAIL, authority=[soa()]),
        "servfail with answer": lambda: response(wire, rcode=dns.rcode.SERVFAIL, answers=answer),
        "tc": lambda: response(wire, answers=answer, flags_on=dns.flags.TC),
        "refused": lambda: response(wire, rcode=dns.rcode.REFUSED, answers=answer),
        "noerror without answer": lambda: response(wire, authority=[soa()]),
        "opcode notify": lambda: response(wire, answers=answer, opcode=dns.opcode.NOTIFY),
    }[case]()
    assert lk.receive(r, SERVER, NOW) == REJECTED
    _assert_untouched(acct, lk, qid)
    assert qid not in lk.outstanding      # the query is over: T says retry in a day
    assert lk.counters[REJECTED] == 1


def test_nxdomain_with_authority_but_no_soa_stores_nothing():
    acct, lk, qid, wire = one_query()
    ns = dns.rrset.from_text("arpa.", 5, "IN", "NS", "a.root.example.")
    assert lk.receive(response(wire, rcode=dns.rcode.NXDOMAIN, authority=[ns]), SERVER, NOW) == EMPTY
    _assert_untouched(acct, lk, qid)


def test_noerror_with_only_a_cname_stores_nothing():
    acct, lk, qid, wire = one_query()
    cname = dns.rrset.from_text(reverse_name(A), 60, "IN", "CNAME", "elsewhere.example.")
    assert lk.receive(response(wire, answers=[cname]), SERVER, NOW) == EMPTY
    _assert_untouched(acct, lk, qid)


def _with_id(wire: bytes, qid: int) -> bytes:
    return qid.to_bytes(2, "big") + wire[2:]


@pytest.mark.parametrize("case", [
    "wrong id", "wrong question name", "wrong question type", "two questions", "no question",
    "wrong source address", "wrong source port", "qr clear", "truncated", "short",
])
def test_datagrams_that_do_not_answer_our_query_are_ignored(case):
    acct, lk, qid, wire = one_query(random_id=ids(1000))
    good = response(wire, answers=[ptr(reverse_name(A), 60, "host.example.")])
    other = make_query(reverse_name(B), 1000)
    source = SERVER
    if case == "wrong id":
        r = _with_id(good, 1001)
    elif case == "wrong question name":
        r = response(other, answers=[ptr(reverse_name(B), 60, "host.example.")])
    elif case == "wrong question type":
        q = dns.message.make_query(reverse_name(A), "A", id=1000)
        r = response(q.to_wire(), answers=[ptr(reverse_name(A), 60, "host.example.")])
    elif case == "two questions":
        msg = dns.message.from_wire(good)
        msg.question.append(dns.rrset.RRset(reverse_name(B), 1, dns.rdatatype.PTR))
        r = msg.to_wire()
    elif case == "no question":
        msg = dns.message.from_wire(good)
        msg.question = []
        r = msg.to_wire()
    elif case == "wrong source address":
        r, source = good, ("127.0.0.2", SERVER[1])
    elif case == "wrong source port":
        r, source = good, (SERVER[0], SERVER[1] + 1)
    elif case == "qr clear":
        r = response(wire, answers=[ptr(reverse_name(A), 60, "host.example.")],
                     flags_off=dns.flags.QR)
    elif case == "truncated":
        r = good[:-5]
    else:
        r = good[:11]
    assert lk.receive(r, source, NOW) == IGNORED
    _assert_untouched(acct, lk, qid)
    assert qid in lk.outstanding          # the real answer can still come
    assert lk.receive(good, SERVER, NOW) == ANSWERED
    assert acct.records[A].N == ["host.example"]


def test_duplicate_answer_is_dropped():
    acct, lk, qid, wire = one_query()
    first = response(wire, answers=[ptr(reverse_name(A), 60, "first.example.")])
    second = response(wire, answers=[ptr(reverse_name(A), 99, "second.example.")])
    assert lk.receive(first, SERVER, NOW) == ANSWERED
    assert lk.receive(first, SERVER, NOW + 1) == IGNORED
    assert lk.receive(second, SERVER, NOW + 1) == IGNORED
    assert acct.records[A].N == ["first.example"] and acct.records[A].T == NOW + 60


def test_answer_for_a_record_gone_is_dropped():
    acct, lk, qid, wire = one_query()
    del acct.records[A]
    r = response(wire, answers=[ptr(reverse_name(A), 60, "host.example.")])
    assert lk.receive(r, SERVER, NOW) == GONE
    assert A not in acct.records
    assert lk.counters[GONE] == 1


def test_answer_after_a_reset_goes_to_the_new_record_without_a_second_query():
    acct, lk, qid, wire = one_query()
    acct.reset(NOW + 10)                 # SIGHUP: new dicts
    acct.count(A, 1, NOW + 10)
    assert A in lk.queue
    assert send_all(lk, NOW + 10) == []  # already outstanding: no second query
    assert acct.records[A].T == NOW + 10 + ONEDAY
    r = response(wire, answers=[ptr(reverse_name(A), 60, "host.example.")])
    assert lk.receive(r, SERVER, NOW + 11) == ANSWERED
    assert acct.records[A].N == ["host.example"]


def test_reset_empties_the_queue():
    """SIGHUP: the accounting starts over and the resolver's reset empties its
    queue (Accounting.reset did it while the queue was the accounting's)."""
    acct, lk = make_lookups(keys=(A, B))
    acct.reset(NOW + 10)
    lk.reset()
    assert not lk.queue


def test_answers_only_touch_their_own_record():
    acct, lk = make_lookups(keys=(A, B))
    sent = {lk.outstanding[q].key: (q, w) for q, w in send_all(lk)}
    r = response(sent[B][1], answers=[ptr(reverse_name(B), 60, "b.example.")])
    assert lk.receive(r, SERVER, NOW) == ANSWERED
    assert acct.records[B].N == ["b.example"]
    assert list(acct.records[A].N) == [] and acct.records[A].T == NOW + ONEDAY


# --------------------------------------------------------------------------- limits and timeouts

def test_rate_limit_per_second():
    clock = Clock()
    keys = [bytes([10, 1, i // 256, i % 256]) for i in range(120)]
    acct, lk = make_lookups(keys=keys, qps=50, clock=clock)
    assert len(send_all(lk)) == 50
    clock.t += 0.5
    assert send_all(lk) == []
    clock.t += 0.499
    assert send_all(lk) == []
    clock.t += 0.002
    assert len(send_all(lk)) == 50
    clock.t += 1.0
    assert len(send_all(lk)) == 20
    assert lk.counters["sent"] == 120
    assert not lk.queue


def test_outstanding_limit():
    clock = Clock()
    keys = [bytes([10, 2, 0, i]) for i in range(30)]
    acct, lk = make_lookups(keys=keys, qps=100, outstanding=10, clock=clock)
    sent = send_all(lk)
    assert len(sent) == 10 and len(lk.queue) == 20
    clock.t += 5
    assert send_all(lk) == []
    qid, wire = sent[0]
    key = lk.outstanding[qid].key
    lk.receive(response(wire, answers=[ptr(reverse_name(key), 9, "x.example.")]), SERVER, NOW)
    assert len(send_all(lk)) == 1


def test_queries_expire_after_300s_checked_every_15s():
    clock = Clock(1000.0)
    acct, lk = make_lookups(keys=(A,), clock=clock)   # first sweep at 1015
    [(qid, wire)] = send_all(lk)
    for t in (1015.0, 1030.0, 1300.0):
        clock.t = t
        assert lk.expire() == 0
    clock.t = 1304.0                      # deadline 1300 < 1304 but no sweep is due
    assert lk.expire() == 0 and qid in lk.outstanding
    clock.t = 1315.5
    assert lk.expire() == 1
    assert qid not in lk.outstanding and lk.counters["timed out"] == 1
    late = response(wire, answers=[ptr(reverse_name(A), 60, "late.example.")])
    assert lk.receive(late, SERVER, NOW) == IGNORED
    assert acct.records[A].T == NOW + ONEDAY


def test_cancel_restores_the_record_and_the_queue():
    acct, lk, qid, wire = one_query()
    lk.cancel(qid)
    assert acct.records[A].T == 0 and A in lk.queue
    assert lk.counters["sent"] == 0 and not lk.outstanding and not lk.recent


def test_counters_text():
    acct, lk, qid, wire = one_query()
    text = lk.text()
    assert "\n" not in text
    for word in ("1 sent", "0 answered", "0 rejected", "0 timed out", "0 for records gone",
                 "1 outstanding"):
        assert word in text


# --------------------------------------------------------------------------- garbage

@pytest.mark.slow
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data):
    acct, lk = make_lookups(keys=(A, B), random_id=ids(0x1234, 0x4321))
    send_all(lk)
    for wire in (data, b"\x12\x34" + data, b"\x43\x21\x81\x80" + data):
        assert lk.receive(wire, SERVER, NOW) in (IGNORED, REJECTED, EMPTY, ANSWERED)
    # Random bytes cannot carry our question, so no record is touched.
    for key in (A, B):
        assert list(acct.records[key].N) == [] and acct.records[key].T == NOW + ONEDAY


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_answers_never_raise_nor_touch_another_record(data):
    acct, lk = make_lookups(keys=(A, B), random_id=ids(0x1234, 0x4321))
    sent = {lk.outstanding[q].key: (q, w) for q, w in send_all(lk)}
    good = bytearray(response(sent[A][1], answers=[ptr(reverse_name(A), 60, "h.example.")],
                              authority=[soa()]))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(2, len(good) - 1))
        good[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(good)))
    lk.receive(bytes(good[:cut]), SERVER, NOW)
    assert list(acct.records[B].N) == [] and acct.records[B].T == NOW + ONEDAY


# --------------------------------------------------------------------------- configuration

def test_system_nameserver(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch example.com\nnameserver bogus\n"
                    "nameserver fe80::1%eth0\nnameserver 192.0.2.53\n")
    assert resolver.system_nameserver(str(conf)) == "fe80::1"
    conf.write_text("nameserver 192.0.2.53 # the first\nnameserver 192.0.2.54\n")
    assert resolver.system_nameserver(str(conf)) == "192.0.2.53"
    conf.write_text("search example.com\n")
    assert resolver.system_nameserver(str(conf)) is None
    assert resolver.system_nameserver(str(tmp_path / "missing")) is None


def _settings(**kw) -> Settings:
    base = dict(name="t", raw={}, piddir=None, sniffer="STDERR", stats_file=None, bpf="host 127.0.0.1",
                me_name="127.0.0.1", me="127.0.0.1", me_packed=b"\x7f\0\0\x01", interface=None,
                promiscuous=False, snaplen=38)
    base.update(kw)
    return Settings(**base)


def test_server_address(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\n")
    assert resolver.server_address(_settings(), str(conf)) == ("127.0.0.53", 53)
    assert resolver.server_address(_settings(nameserver="127.0.0.9:5300"), str(conf)) == \
        ("127.0.0.9", 5300)
    assert resolver.server_address(_settings(nameserver="[::1]:5300"), str(conf)) == ("::1", 5300)
    conf.write_text("")
    with pytest.raises(resolver.ResolverError, match="nameserver"):
        resolver.server_address(_settings(), str(conf))


# --------------------------------------------------------------------------- I/O on loopback

@pytest.fixture
def fake_server():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    try:
        yield sock
    finally:
        sock.close()


def _resolver(fake_server, acct, **kw):
    port = fake_server.getsockname()[1]
    r = resolver.Resolver(_settings(nameserver=f"127.0.0.1:{port}", **kw), acct)
    acct.names = r.queue
    return r


def _wait_readable(r, seconds=2.0):
    assert select.select([r.fileno()], [], [], seconds)[0]


def test_socket_holds_an_answer_to_every_query_in_flight(fake_server):
    """The kernel drops datagrams once a socket's receive buffer is full: the default
    (about 200 KiB) held fewer than 500 answers, so at 1000 queries/s on a loaded
    machine answers were lost (RcvbufErrors). It must hold dns_max_outstanding of them."""
    for outstanding in (500, 4096):
        r = _resolver(fake_server, Accounting(NOW), dns_max_outstanding=outstanding)
        try:
            room = r.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            limit = int(open("/proc/sys/net/core/rmem_max").read()) * 2
            assert room >= min(outstanding * resolver.ANSWER_ROOM, limit), (outstanding, room)
        finally:
            r.close()


def test_resolver_round_trip_on_loopback(fake_server):
    acct = Accounting(NOW)
    r = _resolver(fake_server, acct)
    acct.count(A, 100, NOW)
    try:
        r.on_readable(NOW)                        # nothing there: returns at once
        r.tick(NOW)
        wire, client = fake_server.recvfrom(4096)
        assert acct.records[A].T == NOW + ONEDAY and not r.queue
        # a stranger (another port of the same address) is dropped by the kernel
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            spoof = response(wire, answers=[ptr(reverse_name(A), 60, "spoof.example.")])
            stranger.sendto(spoof, client)
        finally:
            stranger.close()
        fake_server.sendto(response(wire, answers=[ptr(reverse_name(A), 60, "real.example.")]),
                           client)
        _wait_readable(r)
        r.on_readable(NOW + 1)
        assert acct.records[A].N == ["real.example"] and acct.records[A].T == NOW + 61
        assert "1 answered" in r.counters_text() and "0 ignored" in r.counters_text()
    finally:
        r.close()


def test_resolver_respects_reset_of_the_accounting(fake_server):
    acct = Accounting(NOW)
    r = _resolver(fake_server, acct, dns_max_qps=3)
    try:
        acct.reset(NOW)                            # new dicts after the resolver exists
        for i in range(5):
            acct.count(bytes([10, 3, 0, i]), 1, NOW)
        r.tick(NOW)
        r.tick(NOW)
        got = [fake_server.recvfrom(4096)[0] for _ in range(3)]
        assert len(got) == 3 and len(r.queue) == 2
        fake_server.settimeout(0.05)
        with pytest.raises(socket.timeout):
            fake_server.recvfrom(4096)
    finally:
        r.close()


@pytest.mark.integration
def test_offline_lookups_off_or_silent_server(fake_server, monkeypatch):
    port = fake_server.getsockname()[1]
    assert resolver.offline_lookups(_settings(resolve=False)) is None
    log = io.StringIO()
    monkeypatch.setattr(resolver, "PROBE_WAIT", 0.2)
    assert resolver.offline_lookups(_settings(nameserver=f"127.0.0.1:{port}"), log=log) is None
    assert "does not answer" in log.getvalue()


def test_resolver_over_ipv6_loopback():
    try:
        server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        server.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    server.settimeout(2)
    acct = Accounting(NOW)
    r = resolver.Resolver(_settings(nameserver=f"[::1]:{server.getsockname()[1]}"), acct)
    acct.names = r.queue
    acct.count(V6, 100, NOW)
    try:
        r.tick(NOW)
        wire, client = server.recvfrom(4096)
        assert dns.message.from_wire(wire).question[0].name == reverse_name(V6)
        server.sendto(response(wire, answers=[ptr(reverse_name(V6), 60, "six.example.")]), client)
        _wait_readable(r)
        r.on_readable(NOW)
        assert acct.records[V6].N == ["six.example"]
        assert r.counters_text().startswith("[::1]:")
    finally:
        r.close()
        server.close()


def test_names_are_bounded_in_number_and_length():
    """Issue 11.17: an answer's names are kept up to MAX_NAMES, each at most
    MAX_NAME_CHARS long; the in-addr.arpa rule still applies."""
    from ncsniffer.resolver import MAX_NAME_CHARS, MAX_NAMES, filter_names
    long_one = "x" * (MAX_NAME_CHARS + 1)
    names = [long_one] + [f"h{i}.example.com" for i in range(3000)]
    assert filter_names(names) == [f"h{i}.example.com" for i in range(MAX_NAMES)]
    arpa = [f"{i}.0/25.2.0.192.in-addr.arpa" for i in range(100)]
    assert filter_names(arpa) == arpa[:MAX_NAMES]
    assert filter_names(arpa + ["ok.example.com"]) == ["ok.example.com"]
    assert filter_names([long_one]) == []
    assert filter_names(["y" * MAX_NAME_CHARS]) == ["y" * MAX_NAME_CHARS]
