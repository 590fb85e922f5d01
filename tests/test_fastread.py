"""The C read path (ncsniffer/_fastread.c) against its plain twin, the numpy path:
the same record walk, the same Prepared batches field for field, the same errors
on hostile files, and byte-identical stats files end to end."""

import glob
import os
import random
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ncsniffer import batch, capture, decode, fastread, linktypes, pcapfile, pcapgen
from tests.conftest import run_cli, write_config
from tests.test_batch import FILTERS, programs

pytestmark = pytest.mark.skipif(fastread._fastread is None, reason="_fastread not built")

LINKS = sorted(linktypes.BY_VALUE)
V4 = ["10.0.0.1", "10.0.0.2", "200.0.0.1", "0.0.0.0"]
V6 = ["2001:db8::1", "2001:db8::2", "fe80::1", "::"]
MES = [b"\x0a\x00\x00\x01", bytes(16), b"", bytes.fromhex("20010db8" + "00" * 11 + "01"),
       bytes(4)]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@st.composite
def frames(draw, link: int):
    """A frame of ``link``: an IP packet of any kind (options, fragments, IPv6
    extension headers, VLAN tags), cut anywhere, or random bytes."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=80))
    six = draw(st.booleans()) if link not in (decode.DLT_IPV4, decode.DLT_IPV6) else \
        link == decode.DLT_IPV6
    hosts = V6 if six else V4
    proto = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    pkt = pcapgen.ip_packet(draw(st.sampled_from(hosts)), draw(st.sampled_from(hosts)), proto,
                            draw(st.binary(max_size=40)), sport=draw(st.integers(0, 65535)),
                            dport=draw(st.integers(0, 65535)),
                            options=b"" if six else draw(st.sampled_from([b"", b"\x01" * 4])),
                            frag_offset=0 if six else draw(st.sampled_from([0, 0, 3])),
                            ext_headers=six and draw(st.booleans()))
    pkt = bytearray(pkt)
    if draw(st.integers(0, 4)) == 0:                  # a byte of the headers changed
        pkt[draw(st.integers(0, min(len(pkt) - 1, 60)))] = draw(st.integers(0, 255))
    vlans = draw(st.lists(st.integers(0, 4095), max_size=2))
    f = pcapgen.frame(link, bytes(pkt), vlans)
    return f[:draw(st.integers(0, len(f)))] if draw(st.booleans()) else f


def as_batch(frames_: list[bytes], wirelen: list[int], usec: bool) -> pcapfile.Batch:
    """The frames as one batch, some garbage between them."""
    pieces, offs, pos = [], [], 0
    for i, f in enumerate(frames_):
        gap = bytes([0xA5] * (i % 3))
        pieces += [gap, f]
        offs.append(pos + len(gap))
        pos += len(gap) + len(f)
    buf = b"".join(pieces)
    n = len(frames_)
    sec = np.arange(n, dtype=np.int64) // 3 + 1_600_000_000
    micro = (np.arange(n, dtype=np.int64) * 7919) % 1_000_000 if usec else None
    return pcapfile.Batch(buf, np.frombuffer(buf, np.uint8), np.array(offs, np.int64),
                          np.array([len(f) for f in frames_], np.int64),
                          np.array(wirelen, np.int64), sec, usec=micro)


def assert_same(fast: batch.Prepared, plain: batch.Prepared) -> None:
    """Every field of two Prepared batches equal, dtypes included."""
    assert (fast.seen, fast.undecoded, fast.unmatched) == \
        (plain.seen, plain.undecoded, plain.unmatched)
    for name in ("sec", "good", "lengths"):
        a, b = getattr(fast, name), getattr(plain, name)
        assert a.dtype == b.dtype and a.tolist() == b.tolist(), name
    for name in ("is6", "v4", "hi", "lo"):
        a, b = getattr(fast.targets, name), getattr(plain.targets, name)
        assert a.dtype == b.dtype and a.tolist() == b.tolist(), name
    assert (fast.flows is None) == (plain.flows is None)
    if plain.flows is not None:
        assert fast.flows.dtype == plain.flows.dtype
        for name in decode.FLOW.names:
            assert fast.flows[name].tolist() == plain.flows[name].tolist(), name


def compiled(link: int, text: str):
    try:
        return capture.compile_filter(link, text)
    except Exception:             # not a filter for this link type
        return None


@st.composite
def filters(draw, link: int):
    """None (all pass), a libpcap-compiled filter from the list, or a random program."""
    kind = draw(st.sampled_from(["none", "text", "text", "random"]))
    if kind == "none":
        return None
    if kind == "random":
        return draw(programs())
    return compiled(link, draw(st.sampled_from(FILTERS)))


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_prepare_equals_numpy_on_random_packets(data):
    link = data.draw(st.sampled_from(LINKS))
    got = data.draw(st.lists(frames(link), min_size=1, max_size=25))
    wirelen = [len(f) + data.draw(st.integers(0, 30)) for f in got]
    b = as_batch(got, wirelen, data.draw(st.booleans()))
    rules = batch.Rules(link, data.draw(st.sampled_from(MES)), 65535,
                        flows=data.draw(st.booleans()))
    prog = data.draw(filters(link))
    fast = batch.prepare_fast(b, prog, rules)
    assert fast is not None
    assert_same(fast, batch.prepare_numpy(b, prog, rules))


def test_prepare_takes_the_links_program_from_a_mapping():
    """A pcapng batch's programs by link: the batch's own link, not the rules' one."""
    link = (decode.DLT_LINUX_SLL, False)
    pkt = pcapgen.ip_packet("10.0.0.1", "10.0.0.2")
    b = as_batch([pcapgen.frame(link[0], pkt)] * 3, [99] * 3, True)
    b.links = (link,)
    rules = batch.Rules(decode.DLT_EN10MB, b"\x0a\x00\x00\x01", 65535, flows=True)
    progs = {link: capture.compile_filter(link[0], "host 10.0.0.2")}
    fast = batch.prepare_fast(b, progs, rules)
    assert fast.seen == 3 and len(fast.good) == 3
    assert_same(fast, batch.prepare_numpy(b, progs, rules))


def test_prepare_leaves_to_numpy_what_it_does_not_take():
    b = as_batch([pcapgen.frame(decode.DLT_EN10MB, pcapgen.ip_packet("10.0.0.1", "10.0.0.2"))],
                 [60], False)
    me = b"\x0a\x00\x00\x01"
    assert batch.prepare_fast(b, None, batch.Rules(1, me, 100, payload=0, match=b"x")) is None
    assert batch.prepare_fast(b, [(batch.bpfvm.ST, 0, 0, 16), (0x16, 0, 0, 0)],
                              batch.Rules(1, me, 100)) is None        # memory past M[15]
    two = pcapfile.Batch(b.buf, b.u8, b.offs, b.caplen, b.wirelen, b.sec,
                         ((1, False), (113, False)), np.zeros(1, np.int64))
    assert batch.prepare_fast(two, {(1, False): None, (113, False): None},
                              batch.Rules(1, me, 100)) is None


def test_packets_outside_the_buffer_raise_not_crash():
    b = as_batch([b"\x00" * 20], [20], False)
    rules = batch.Rules(decode.DLT_EN10MB, b"", 65535)
    for off, cap in ((0, 21), (-1, 5), (19, 2), (2 ** 40, 1), (0, -1)):
        bad = pcapfile.Batch(b.buf, b.u8, np.array([off], np.int64), np.array([cap], np.int64),
                             b.wirelen, b.sec)
        with pytest.raises(ValueError):
            batch.prepare_fast(bad, None, rules)


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(fastread.ENV, "0")
    assert not fastread.enabled()
    monkeypatch.setattr(batch, "prepare_fast", lambda *a: pytest.fail("the C path ran"))
    b = as_batch([b"\x00" * 20], [20], False)
    assert batch.prepare(b, None, batch.Rules(1, b"", 65535)).seen == 1
    monkeypatch.delenv(fastread.ENV)
    assert fastread.enabled()


# ------------------------------------------------------------------ the record walk

def read_all(path: str, fast: bool, max_packets: int, max_bytes: int):
    """Every batch's columns, then the error (type and text) or None."""
    with open(path, "rb") as fh:
        try:
            reader = pcapfile.Reader(fh, path)
        except (pcapfile.Unsupported, pcapfile.Truncated) as exc:
            return [], (type(exc), str(exc))
        reader.fast = fast
        out = []
        try:
            for b in reader.batches(max_packets, max_bytes):
                out.append([a.tolist() for a in (b.offs, b.caplen, b.wirelen, b.sec, b.micros())])
        except (pcapfile.Truncated, pcapfile.Unsupported, struct.error) as exc:
            return out, (type(exc), str(exc))
    return out, None


@st.composite
def pcap_files(draw):
    """A classic pcap file, either byte order and time unit, with hostile records:
    lengths past the snaplen, past MAX_RECORD, past the end, a file cut anywhere."""
    endian = draw(st.sampled_from("<>"))
    magic = draw(st.sampled_from([0xA1B2C3D4, 0xA1B23C4D]))
    snaplen = draw(st.sampled_from([0, 40, 65535, 300000]))
    body = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, 1)]
    for _ in range(draw(st.integers(0, 30))):
        kind = draw(st.integers(0, 9))
        data = draw(st.binary(max_size=90))
        incl = len(data)
        if kind == 0:
            incl = draw(st.sampled_from([pcapfile.MAX_RECORD + 1, 2 ** 32 - 1, incl + 5000]))
        elif kind == 1:
            data = draw(st.binary(max_size=20))     # random bytes for a header
            body.append(data)
            continue
        body.append(struct.pack(endian + "IIII", draw(st.integers(0, 2 ** 32 - 1)),
                                draw(st.integers(0, 2 ** 32 - 1)), incl,
                                draw(st.integers(0, 2 ** 32 - 1))) + data)
    blob = b"".join(body)
    if draw(st.booleans()):
        blob = blob[:draw(st.integers(0, len(blob)))]
    return blob


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(pcap_files(), st.integers(1, 9), st.sampled_from([16, 100, 1 << 20]))
def test_walk_equals_numpy_on_hostile_files(tmp_path_factory, blob, max_packets, max_bytes):
    path = str(tmp_path_factory.mktemp("walk") / "f.pcap")
    with open(path, "wb") as fh:
        fh.write(blob)
    assert read_all(path, True, max_packets, max_bytes) == \
        read_all(path, False, max_packets, max_bytes)


def test_walk_equals_the_numpy_lanes_on_a_long_file(tmp_path):
    """Enough records for the numpy lanes to walk (not only the plain walk)."""
    rnd = random.Random(5)
    path = str(tmp_path / "long.pcap")
    pkts = [(1_600_000_000 + i / 1000, bytes(rnd.randrange(40, 600))) for i in range(6000)]
    pcapgen.write_pcap(path, decode.DLT_EN10MB, pkts, snaplen=400)
    with open(path, "rb") as fh:
        reader = pcapfile.Reader(fh, path)
        reader.fast = False
        list(reader.batches())
        assert reader.chain.trusted         # the lanes did walk it
    assert read_all(path, True, 0, 0) == read_all(path, False, 0, 0)


# ------------------------------------------------------------------ end to end

def stats_files():
    """The sample captures, the corpus, and a file of every kind of packet."""
    found = sorted(glob.glob(os.path.join(ROOT, "samples", "*.pcap")))
    return found + sorted(glob.glob(os.path.join(ROOT, "tests", "data", "captures", "*.pcap*")))


@pytest.mark.integration
@pytest.mark.parametrize("connections", [False, True])
@pytest.mark.parametrize("path", stats_files(), ids=os.path.basename)
def test_stats_file_byte_identical_to_the_numpy_path(tmp_path, path, connections):
    outputs = []
    for mode in ("1", "0"):
        work = tmp_path / mode
        work.mkdir()
        conf = write_config(str(work), bpf="", connections=connections)
        env = dict(os.environ, NCSNIFFER_FASTREAD=mode)
        done = run_cli("-c", conf, "-r", path, "start", env=env)
        stats = work / "nc.sniffer.stats"
        outputs.append((done.returncode, done.stderr,
                        stats.read_bytes() if stats.exists() else None))
    assert outputs[0] == outputs[1]


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(programs(), st.lists(st.binary(max_size=90), min_size=1, max_size=30), st.data())
def test_random_programs_pass_what_bpfvm_passes(prog, blobs, data):
    """Every instruction the interpreters run, on random bytes: the same packets pass."""
    wirelen = [len(f) + data.draw(st.integers(0, 100)) for f in blobs]
    b = as_batch(blobs, wirelen, False)
    b.sec = np.arange(len(blobs), dtype=np.int64)          # a packet's second names it
    fast = batch.prepare_fast(b, prog, batch.Rules(decode.DLT_EN10MB, b"", 65535))
    passed = batch.bpfvm.run(prog, b.u8, b.offs, b.caplen, b.wirelen)
    assert fast.sec.tolist() == np.flatnonzero(passed).tolist()


ALU_OPS = range(0, 0xB0, 0x10)        # add sub mul div or and lsh rsh neg mod xor


@pytest.mark.parametrize("op", ALU_OPS)
def test_every_alu_result_bit_for_bit(op):
    """Each ALU operation's whole 32-bit result, read bit by bit through RET A
    (the edges: shifts by 31 and 32, division by zero, wrap-around)."""
    b = as_batch([bytes(4)], [4], False)
    rules = batch.Rules(decode.DLT_EN10MB, b"", 65535)
    for a in (1, 0x80000001, 0xFFFFFFFF):
        for rhs in (0, 1, 31, 32, 0xFFFFFFFF):
            for by_x in (0, 0x08):
                head = [(batch.bpfvm.LD, 0, 0, a), (batch.bpfvm.LDX, 0, 0, rhs),
                        (batch.bpfvm.ALU | op | by_x, 0, 0, rhs)]
                for bit in range(32):
                    prog = head + [(batch.bpfvm.ALU | 0x50, 0, 0, 1 << bit), (0x16, 0, 0, 0)]
                    want = batch.bpfvm.run(prog, b.u8, b.offs, b.caplen, b.wirelen).tolist()
                    assert [batch.prepare_fast(b, prog, rules).seen == 1] == want, (a, rhs, bit)


WORDS = [0, 1, 2 ** 63, 2 ** 64 - 1, 0x20010DB8 << 32]
V4_VALUES = [0, 1, 2047, 2048, 65535, 65536, 0x0A000001, 2 ** 32 - 1]
ADDRESS = st.one_of(
    st.tuples(st.just(False), st.one_of(st.sampled_from(V4_VALUES), st.integers(0, 2 ** 32 - 1))),
    st.tuples(st.just(True), st.tuples(st.sampled_from(WORDS),
                                       st.one_of(st.sampled_from(WORDS),
                                                 st.integers(0, 2 ** 64 - 1)))))


@given(st.lists(ADDRESS, max_size=300))
def test_distinct_equals_numpy(targets):
    """batch.distinct's numbers in C (radix sort, hash) and by numpy: the same
    sorted addresses, the same index per packet, the same dtypes."""
    is6 = np.array([six for six, _ in targets], bool)
    v4 = np.array([a for six, a in targets if not six], np.uint32)
    pairs = [a for six, a in targets if six]
    hi = np.array([p[0] for p in pairs], np.uint64)
    lo = np.array([p[1] for p in pairs], np.uint64)
    fast, plain = fastread.distinct(is6, v4, hi, lo), batch.distinct_numpy(is6, v4, hi, lo)
    for x, y in zip(fast, plain):
        assert x.dtype == y.dtype and x.tolist() == y.tolist()
    assert plain[0].tolist() == sorted(set(v4.tolist()))
    assert list(zip(plain[1].tolist(), plain[2].tolist())) == sorted(set(pairs))


def test_distinct_refuses_families_that_do_not_match():
    with pytest.raises(ValueError):
        fastread.distinct(np.array([True, False]), np.zeros(2, np.uint32), np.zeros(0, np.uint64),
                          np.zeros(0, np.uint64))


@given(st.lists(st.integers(0, 40), max_size=300), st.integers(0, 1000),
       st.lists(st.integers(-5, 1100), min_size=41, max_size=41))
def test_number_last_equals_maximum_at(slots, base, q):
    """Each record numbered by its last packet: the C loop and np.maximum.at, its
    plain twin (accounting's Q for max_hosts), even where a number is already higher."""
    slots = np.array(slots, np.int64)
    want, got = np.array(q, np.int64), np.array(q, np.int64)
    np.maximum.at(want, slots, np.arange(base, base + len(slots)))
    fastread.number_last(slots, got, base)
    assert got.tolist() == want.tolist()
    with pytest.raises(IndexError, match="no such record"):
        fastread.number_last(np.array([41], np.int64), got, base)
