"""The classic pcap walk by numpy lanes must give exactly what the plain walk gives.

Lanes only decide speed: every file here is read three ways (lanes tuned small so
that they engage on small files, the plain walk, and an independent reference
parser) and the records and the final error must agree; a few files are also
checked against libpcap.
"""

import os
import random
import struct

import numpy as np
import pcapy
import pytest
from hypothesis import given, settings, strategies as st

from ncsniffer import fastread, pcapfile, pcapread

T0 = 1_700_000_000
SMALL = pcapfile.Lanes(spacing=1024, windows=(256, 512), minimum=2)
PLAIN = pcapfile.Lanes(minimum=1 << 62)
MAGIC = {False: 0xA1B2C3D4, True: 0xA1B23C4D}           # by nanoseconds


def header(e: str, sec: int, frac: int, incl: int, orig: int) -> bytes:
    return struct.pack(e + "IIII", sec, frac, incl, orig)


def pcap_file(records, big=False, nano=False, snaplen=65535) -> bytes:
    """File bytes: ``records`` are (sec, frac, incl_len, orig_len, data) tuples."""
    e = ">" if big else "<"
    out = [struct.pack(e + "IHHiIII", MAGIC[nano], 2, 4, 0, 0, snaplen, 1)]
    for sec, frac, incl, orig, data in records:
        out.append(header(e, sec, frac, incl, orig) + data)
    return b"".join(out)


def reference(data: bytes):
    """(records, error) by libpcap's rules, one record at a time."""
    e = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    snaplen = struct.unpack_from(e + "I", data, 16)[0]
    snaplen = snaplen if 0 < snaplen <= pcapfile.MAX_RECORD else pcapfile.MAX_RECORD
    pos, out = 24, []
    while pos < len(data):
        if pos + 16 > len(data):
            return out, f"file ends inside a record ({len(data) - pos} bytes left over)"
        sec, _, incl, orig = struct.unpack_from(e + "IIII", data, pos)
        if incl > pcapfile.MAX_RECORD:
            return out, f"bogus record length {incl}"
        if pos + 16 + incl > len(data):
            return out, f"file ends inside a record ({len(data) - pos} bytes left over)"
        out.append((pos + 16, min(incl, snaplen), orig, sec))
        pos += 16 + incl
    return out, None


def read(path, lanes, max_packets=pcapfile.MAX_PACKETS, max_bytes=pcapfile.MAX_BYTES,
         fast=False, reuse=False, ramp=False):
    """(records, error, reader) through the batch reader with ``lanes`` (``fast``:
    the C walk instead; ``reuse``: read into one reused buffer).  Each packet's
    bytes are checked where its batch's buffer holds them, before the next batch."""
    batches, error = [], None
    data = path.read_bytes()
    with open(path, "rb") as fh:
        r = pcapfile.Reader(fh, str(path))
        r.chain.lanes = lanes
        r.fast = fast
        try:
            for b in r.batches(max_packets, max_bytes, reuse=reuse, ramp=ramp):
                assert len(b.offs) <= max_packets
                assert b.offs[-1] - b.offs[0] < max_bytes
                for a in (b.offs, b.caplen, b.wirelen, b.sec):
                    assert a.dtype == np.int64
                for off, cap in zip(b.offs.tolist(), b.caplen.tolist()):
                    assert bytes(b.buf[off:off + cap]) == data[b.at + off:b.at + off + cap]
                batches.append(np.stack((b.offs + b.at, b.caplen, b.wirelen, b.sec), axis=1))
        except pcapfile.Truncated as exc:
            error = str(exc)
    records = [tuple(x) for x in np.concatenate(batches).tolist()] if batches else []
    return records, error, r


def check(tmp_path, data: bytes, max_bytes=8192, max_packets=pcapfile.MAX_PACKETS):
    """Read ``data`` four ways; they must agree.  Returns the lanes' reader."""
    path = tmp_path / "f.pcap"
    path.write_bytes(data)
    want = reference(data)
    fast = read(path, SMALL, max_packets, max_bytes)
    plain = read(path, PLAIN, max_packets, max_bytes)
    assert plain[:2] == want
    assert fast[:2] == want
    if fastread.enabled():
        assert read(path, PLAIN, max_packets, max_bytes, fast=True)[:2] == want
        assert read(path, PLAIN, max_packets, max_bytes, fast=True, reuse=True)[:2] == want
    assert plain[2].chain.tried == 0
    return fast[2]


def clean_records(rnd: random.Random, n: int, sizes=(0, 2000), payload="random"):
    out, sec = [], T0
    for _ in range(n):
        size = rnd.randint(*sizes)
        sec += rnd.random() < 0.3
        data = bytes(size) if payload == "zeros" else rnd.randbytes(size)
        out.append((sec, rnd.randrange(10 ** 6), size, size + rnd.randrange(3), data))
    return out


def fake_chain(e: str, rnd: random.Random, n: int = 4) -> bytes:
    """Plausible pcap records, to hide in a payload."""
    out = b""
    for _ in range(n):
        size = rnd.randrange(0, 60)
        out += header(e, T0 + rnd.randrange(5), rnd.randrange(10 ** 6), size, size) + bytes(size)
    return out


# ---------------------------------------------------------------- properties
record_sizes = st.one_of(st.integers(0, 2000), st.integers(0, 80), st.just(65535))


@st.composite
def files(draw):
    """A random classic pcap: sizes, payload kinds, byte order, units, snaplen; then
    maybe a bogus length in the middle and maybe cut short anywhere."""
    big, nano = draw(st.booleans()), draw(st.booleans())
    e = ">" if big else "<"
    rnd = random.Random(draw(st.integers(0, 2 ** 32)))
    records, sec = [], T0 + draw(st.integers(-10 ** 6, 10 ** 6))
    for size in draw(st.lists(record_sizes, min_size=1, max_size=120)):
        kind = draw(st.sampled_from(["random", "zeros", "fake", "copies"]))
        if kind == "zeros":
            data = bytes(size)
        elif kind == "fake":
            data = (fake_chain(e, rnd) * (size // 64 + 1))[:size]
        elif kind == "copies" and records:      # real headers of this file, repeated
            heads = b"".join(header(e, *r[:4]) for r in records[-4:])
            data = (heads * (size // len(heads) + 1))[:size]
        else:
            data = rnd.randbytes(size)
        sec += draw(st.integers(0, 3))
        frac = rnd.randrange(10 ** 9 if nano else 10 ** 6)
        records.append((sec, frac, size, size + draw(st.integers(0, 2)), data))
    snaplen = draw(st.sampled_from([65535, 0, 1500, 100, 262144, 300000]))
    if draw(st.booleans()) and len(records) > 2:
        i = draw(st.integers(1, len(records) - 1))
        bogus = draw(st.sampled_from([pcapfile.MAX_RECORD + 1, 2 ** 32 - 1, 10 ** 7]))
        records[i] = records[i][:2] + (bogus,) + records[i][3:]
    data = pcap_file(records, big, nano, snaplen)
    if draw(st.booleans()):
        data = data[:draw(st.integers(24, len(data)))]
    return data


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(files(), st.sampled_from([8192, 4096, 3000, 100000]), st.sampled_from([5, 64, 10 ** 6]))
def test_lanes_equal_plain_walk_and_reference(tmp_path_factory, data, max_bytes, max_packets):
    check(tmp_path_factory.mktemp("p"), data, max_bytes, max_packets)


# ---------------------------------------------------------------- cases
def test_lanes_are_used_and_trusted_on_a_clean_file(tmp_path):
    rnd = random.Random(1)
    r = check(tmp_path, pcap_file(clean_records(rnd, 400)))
    assert r.chain.tried > 20 and r.chain.trusted > 0.9 * r.chain.tried


@pytest.mark.parametrize("big,nano", [(False, False), (True, False), (False, True), (True, True)])
def test_byte_orders_and_units(tmp_path, big, nano):
    rnd = random.Random(2)
    records = [(s, f * 1000 + 999 if nano else f, i, o, d)
               for s, f, i, o, d in clean_records(rnd, 300)]
    r = check(tmp_path, pcap_file(records, big, nano))
    assert r.chain.trusted > 3


def test_zero_payloads_and_zero_length_records(tmp_path):
    rnd = random.Random(3)
    records = clean_records(rnd, 300, payload="zeros") + clean_records(rnd, 300, (0, 0))
    r = check(tmp_path, pcap_file(records))
    assert r.chain.trusted > 0


def test_headers_hidden_in_payloads_do_not_fool_the_lanes(tmp_path):
    """Payloads full of plausible records: lanes sync on them, fail to land, and
    leave those batches to the plain walk."""
    rnd = random.Random(4)
    records = []
    for sec, frac, _, _, _ in clean_records(rnd, 300):
        data = fake_chain("<", rnd, 12)
        records.append((sec, frac, len(data), len(data), data))
    r = check(tmp_path, pcap_file(records))
    assert r.chain.tried > r.chain.trusted


def test_big_records_leave_too_few_lanes(tmp_path):
    rnd = random.Random(5)
    check(tmp_path, pcap_file(clean_records(rnd, 40, (60000, 65535))), max_bytes=200000)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_files(tmp_path, n):
    rnd = random.Random(6)
    check(tmp_path, pcap_file(clean_records(rnd, n, (0, 100))))


def test_header_only_file(tmp_path):
    assert check(tmp_path, pcap_file([])).chain.tried == 0


@pytest.mark.slow
def test_truncated_at_every_kind_of_point(tmp_path):
    rnd = random.Random(7)
    data = pcap_file(clean_records(rnd, 120, (0, 300)))
    starts, pos = [], 24
    while pos < len(data):
        starts.append(pos)
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    cuts = set(range(24, len(data), 97))
    for s in starts[40:43] + starts[-2:]:
        cuts.update(range(s - 2, s + 20))                # in and around a header
    for cut in sorted(cuts):
        check(tmp_path, data[:cut], max_bytes=2048)


def test_bogus_length_in_the_middle(tmp_path):
    rnd = random.Random(8)
    records = clean_records(rnd, 200)
    records[150] = records[150][:2] + (pcapfile.MAX_RECORD + 1,) + records[150][3:]
    path = tmp_path / "b.pcap"
    path.write_bytes(pcap_file(records))
    got, error, _ = read(path, SMALL, max_bytes=8192)
    assert len(got) == 150 and error == f"bogus record length {pcapfile.MAX_RECORD + 1}"


@pytest.mark.skipif(not fastread.enabled(), reason="the reused buffer is the C walk's")
@pytest.mark.parametrize("end", ["whole", "cut", "bogus"])
def test_reused_buffer_reads_records_across_its_end(tmp_path, end):
    """A file many times the reused buffer, records up to the largest libpcap takes
    straddling its end: what the map gives, and the same last error."""
    rnd = random.Random(11)
    records = clean_records(rnd, 60, (0, 3000))
    for i in range(0, 60, 7):                      # records that fill most of a buffer
        size = rnd.choice([pcapfile.MAX_RECORD, pcapfile.MAX_RECORD - 1, 200_000])
        records[i] = records[i][:2] + (size, size, rnd.randbytes(size))
    if end == "bogus":
        records[45] = records[45][:2] + (pcapfile.MAX_RECORD + 1,) + records[45][3:]
    data = pcap_file(records)
    if end == "cut":
        data = data[:-5]
    assert len(data) > 4 * (8192 + 16 + pcapfile.MAX_RECORD)
    want = reference(data)
    check(tmp_path, data, max_bytes=8192)
    path = tmp_path / "f.pcap"
    assert read(path, PLAIN, max_bytes=8192, fast=True, reuse=True)[:2] == want
    assert read(path, PLAIN, fast=True, reuse=True)[:2] == want


@pytest.mark.parametrize("fast, reuse", [(False, False), (True, False), (True, True)])
def test_a_ramp_starts_small_and_reads_the_same(tmp_path, monkeypatch, fast, reuse):
    """``ramp``: batches span FIRST_BYTES, twice that... up to max_bytes; the records
    and the last error are those of any other read."""
    if fast and not fastread.enabled():
        pytest.skip("no C walk")
    monkeypatch.setattr(pcapread, "FIRST_BYTES", 1024)
    rnd = random.Random(13)
    data = pcap_file(clean_records(rnd, 300, (0, 300)))[:-7]
    path = tmp_path / "r.pcap"
    path.write_bytes(data)
    assert read(path, PLAIN, max_bytes=8192, fast=fast, reuse=reuse, ramp=True)[:2] == \
        reference(data)
    with open(path, "rb") as fh:
        r = pcapfile.Reader(fh, str(path))
        r.fast = fast
        spans = []
        for b in r.batches(max_bytes=8192, reuse=reuse, ramp=True):
            spans.append(int(b.offs[-1] - b.offs[0]))
            if len(spans) == 6:
                break
    assert [s < limit for s, limit in zip(spans, (1024, 2048, 4096, 8192, 8192, 8192))] == \
        [True] * 6
    assert spans[0] < 1024 <= spans[3]


@pytest.mark.skipif(not fastread.enabled(), reason="the reused buffer is the C walk's")
def test_a_file_cut_while_it_is_read_is_an_error_not_a_crash(tmp_path):
    """The map would have been SIGBUS past the new end; the read says what happened."""
    path = tmp_path / "s.pcap"
    path.write_bytes(pcap_file(clean_records(random.Random(12), 400, (500, 1500))))
    with open(path, "rb") as fh:
        batches = pcapfile.Reader(fh, str(path)).batches(max_bytes=4096, reuse=True)
        next(batches)
        os.truncate(path, 100_000)
        shrank = r"file shrank while read \(100000 of \d+ bytes\)"
        with pytest.raises(pcapfile.Truncated, match=shrank):
            for _ in batches:
                pass


def test_batch_limits(tmp_path):
    rnd = random.Random(9)
    path = tmp_path / "l.pcap"
    path.write_bytes(pcap_file(clean_records(rnd, 500, (0, 200))))
    with open(path, "rb") as fh:
        r = pcapfile.Reader(fh, str(path))
        r.chain.lanes = SMALL
        sizes = [len(b.offs) for b in r.batches(max_packets=100, max_bytes=1 << 30)]
    assert sizes == [100] * 5


# ---------------------------------------------------------------- libpcap
def libpcap(path):
    """(sec, wire length, data) per record, and whether libpcap reported an error."""
    p = pcapy.open_offline(str(path))
    out = []
    while True:
        try:
            hdr, data = p.next()
        except pcapy.PcapError:
            return out, True
        if hdr is None:
            return out, False
        out.append((hdr.getts()[0], hdr.getlen(), bytes(data)))


@pytest.mark.parametrize("seed,cut", [(10, None), (11, -5), (12, -3000), (13, None)])
def test_lanes_agree_with_libpcap(tmp_path, seed, cut):
    rnd = random.Random(seed)
    data = pcap_file(clean_records(rnd, 300), big=seed == 13, snaplen=1000)
    path = tmp_path / "x.pcap"
    path.write_bytes(data[:cut])
    got, error, r = read(path, SMALL, max_bytes=8192)
    ours = [(s, w, data[o:o + c]) for o, c, w, s in got]
    assert (ours, error is not None) == libpcap(path)
    assert r.chain.trusted > 0


# ---------------------------------------------------------------- pcapng corpus
CAPTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "captures")


def read_pcapng(path, max_packets):
    """((sec, wire length, data) per packet, the links of each, the error or None)."""
    out, links, error = [], [], None
    with open(path, "rb") as fh:
        r = pcapfile.Reader(fh, str(path))
        try:
            for b in r.batches(max_packets):
                which = b.link.tolist() if b.link is not None else [0] * len(b.offs)
                for o, c, w, s, i in zip(b.offs.tolist(), b.caplen.tolist(),
                                         b.wirelen.tolist(), b.sec.tolist(), which):
                    out.append((s, w, bytes(b.buf[o:o + c])))
                    links.append(b.links[i])
        except pcapfile.Truncated as exc:
            error = exc
    return out, links, error


@pytest.mark.parametrize("name", ["trailer-mid.pcapng", "trailer-first.pcapng",
                                  "section-version-2.0.pcapng", "null-be.pcapng"])
@pytest.mark.parametrize("max_packets", [1, 7, 64])
def test_pcapng_damage_ends_where_libpcap_ends(name, max_packets):
    """Issue 11.2: every packet before the damage, whatever the batch boundaries."""
    path = os.path.join(CAPTURES, name)
    ours, _, error = read_pcapng(path, max_packets)
    assert (ours, error is not None) == libpcap(path)


@pytest.mark.parametrize("max_packets", [1, 7, 1000])
def test_pcapng_each_packet_carries_its_interfaces_link(max_packets):
    """Issue 11.5: (link type, byte-swapped) per packet, as the file declares it."""
    _, links, error = read_pcapng(os.path.join(CAPTURES, "mixed-links.pcapng"), max_packets)
    assert error is None
    assert [link for link, _ in links[:5]] == [1, 113, 101, 0, 276]    # first of each, in time
    assert sorted(set(links)) == [(0, False), (1, False), (101, False), (113, False),
                                  (276, False)]
    _, links, _ = read_pcapng(os.path.join(CAPTURES, "mixed-byte-order.pcapng"), max_packets)
    assert links == [(1, False)] * 30 + [(0, True)] * 30


def test_libpcap_cannot_read_what_only_this_reader_reads():
    for name, why in [("mixed-links.pcapng", "link types"),
                      ("mixed-snaplen.pcapng", "snapshot lengths"),
                      ("mixed-byte-order.pcapng", "byte orders and link types"),
                      ("version-1.2.pcapng", "version 1.2"), ("null-be.pcapng", None)]:
        path = os.path.join(CAPTURES, name)
        with open(path, "rb") as fh:
            found = pcapfile.Reader(fh, path).beyond_libpcap()
        assert (found and why in found) if why else found is None, (name, found)
        try:
            refused = libpcap(path)[1]
        except pcapy.PcapError:           # at open
            refused = True
        assert refused == bool(why)


def test_header_layouts_are_the_fields_libpcap_reads():
    formats = {"PCAP_FILE_HEADER": "IHHiIII", "PCAP_RECORD": "IIII", "BLOCK_HEADER": "II",
               "TRAILER": "I", "SHB_BLOCK": "IIIHHq", "IDB_BLOCK": "IIHHI", "OPTION": "HH",
               "EPB_BLOCK": "IIIIIII", "PB_BLOCK": "IIHHIIII", "SPB_BLOCK": "III",
               "IF_TSOFFSET_VALUE": "q"}
    for name, fmt in formats.items():
        for e in "<>":
            assert pcapfile.layout(getattr(pcapfile, name), e).format == e + fmt
    assert (pcapfile.RECORD, pcapfile.MIN_BLOCK, pcapfile.EPB_FIXED, pcapfile.SPB_FIXED) == \
        (16, 12, 32, 16)
    # a packet block reads its fields where an enhanced one has them
    for name in ("interface", "ts_high", "ts_low", "caplen", "wirelen"):
        assert pcapfile.PB_AT[name] == pcapfile.EPB_AT[name]
    assert pcapfile.PB_BLOCK.itemsize == pcapfile.EPB_BLOCK.itemsize == 28
    assert pcapfile.pcap_header(1, 65535, "<") == struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0,
                                                              65535, 1)
    assert pcapfile.layout(pcapfile.SHB_BLOCK, "<", ("major", "minor")).format == "<12xHH"
