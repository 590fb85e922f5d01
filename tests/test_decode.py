"""Link and IP header decoding: every link type, tags, options, truncation, garbage."""

import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ncsniffer import batch, capture, decode, pcapgen
from ncsniffer.gather import Gather, Heads

V4 = ("192.0.2.1", "198.51.100.7")
V6 = ("2001:db8::1", "2001:db8:5::7")
LINKS = [decode.DLT_EN10MB, decode.DLT_LINUX_SLL, decode.DLT_LINUX_SLL2, decode.DLT_NULL,
         decode.DLT_LOOP, decode.DLT_RAW, decode.DLT_RAW_LINKTYPE, decode.DLT_IPV4,
         decode.DLT_IPV6]


def packed(ip):
    import ipaddress
    return ipaddress.ip_address(ip).packed


@pytest.mark.parametrize("link", LINKS)
@pytest.mark.parametrize("pair", [V4, V6])
def test_every_link_type_yields_both_addresses(link, pair):
    if (link == decode.DLT_IPV4 and ":" in pair[0]) or (link == decode.DLT_IPV6 and ":" not in pair[0]):
        pytest.skip("family fixed by link type")
    data = pcapgen.frame(link, pcapgen.ip_packet(*pair, payload=b"hello"))
    assert decode.decoder_for(link)(data) == (packed(pair[0]), packed(pair[1]))


@pytest.mark.parametrize("link", [decode.DLT_NULL, decode.DLT_LOOP])
@pytest.mark.parametrize("family, pair", [(2, V4), (24, V6), (28, V6), (30, V6), (10, V6)])
@pytest.mark.parametrize("order", ["<", ">"])
def test_null_and_loop_every_family_value_and_byte_order(link, family, pair, order):
    """The family word varies by system and byte order (issue 11.1): the IP
    version decides, per frame and per batch alike (the filter chooses which)."""
    data = struct.pack(order + "I", family) + pcapgen.ip_packet(*pair, payload=b"af")
    assert decode.decoder_for(link)(data) == (packed(pair[0]), packed(pair[1]))
    u8 = np.frombuffer(data, np.uint8)
    heads = Heads(Gather(u8), np.zeros(1, np.int64))
    reason, l3, is6 = batch.decode_batch(link, heads, np.arange(1), np.array([len(data)]))
    assert reason[0] == batch.OK and l3[0] == 4 and is6[0] == (pair is V6)


@pytest.mark.parametrize("vlans", [(7,), (100, 200), (1, 2, 3)])
def test_vlan_tags_802_1q_and_802_1ad(vlans):
    data = pcapgen.frame(decode.DLT_EN10MB, pcapgen.ip_packet(*V4), vlans)
    assert decode.ethernet(data) == (packed(V4[0]), packed(V4[1]))


def test_ipv4_options_and_fragments_are_decoded():
    pkt = pcapgen.ip_packet(*V4, options=b"\x01\x01\x01\x00" * 2, frag_offset=1480)
    assert pkt[0] & 15 == 7
    assert decode.raw(pkt) == (packed(V4[0]), packed(V4[1]))


def test_ipv6_extension_headers():
    pkt = pcapgen.ip_packet(*V6, ext_headers=True)
    assert pkt[6] == 0
    assert decode.raw(pkt) == (packed(V6[0]), packed(V6[1]))


def test_reasons_for_undecodable_frames():
    v4 = pcapgen.frame(decode.DLT_EN10MB, pcapgen.ip_packet(*V4))
    assert decode.ethernet(v4[:13]) == (None, decode.TRUNCATED)
    assert decode.ethernet(v4[:14 + 19]) == (None, decode.TRUNCATED)
    assert decode.ethernet(v4[:14 + 20]) == (packed(V4[0]), packed(V4[1]))
    arp = v4[:12] + b"\x08\x06" + v4[14:]
    assert decode.ethernet(arp) == (None, decode.NOT_IP)
    bad_version = v4[:14] + bytes([0x65]) + v4[15:]
    assert decode.ethernet(bad_version) == (None, decode.INVALID)
    bad_ihl = v4[:14] + bytes([0x44]) + v4[15:]
    assert decode.ethernet(bad_ihl) == (None, decode.INVALID)
    assert decode.raw(b"") == (None, decode.TRUNCATED)
    assert decode.raw(b"\x10" * 40) == (None, decode.INVALID)
    tagged = pcapgen.frame(decode.DLT_EN10MB, pcapgen.ip_packet(*V4), (5,))
    assert decode.ethernet(tagged[:16]) == (None, decode.TRUNCATED)


def test_unsupported_link_type():
    assert decode.decoder_for(105) is None
    assert capture.link_type_name(105) == "IEEE802_11 (105)"
    assert capture.link_type_name(1) == "EN10MB (1)"
    assert capture.link_type_name(999) == "999 (unknown to libpcap)"


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(st.sampled_from(LINKS), st.binary(max_size=120))
def test_arbitrary_bytes_never_raise(link, data):
    src, dst = decode.decoder_for(link)(data)
    if src is None:
        assert dst in (decode.TRUNCATED, decode.NOT_IP, decode.INVALID)
    else:
        assert len(src) == len(dst) and len(src) in (4, 16)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.sampled_from(LINKS), st.integers(0, 80), st.booleans())
def test_truncated_real_frames_never_raise(link, cut, six):
    pair = V6 if six else V4
    if (link == decode.DLT_IPV4 and six) or (link == decode.DLT_IPV6 and not six):
        return
    data = pcapgen.frame(link, pcapgen.ip_packet(*pair, payload=b"x" * 20))
    src, dst = decode.decoder_for(link)(data[:cut])
    assert src is None or (src, dst) == (packed(pair[0]), packed(pair[1]))


# --------------------------------------------------------------------------- flow fields (issue 13)

ME4, ME6 = packed("10.0.0.1"), packed("2001:db8::1")


def ipv6_with(packet: bytes, chain: list[tuple[int, bytes]], last: int | None = None) -> bytes:
    """An IPv6 packet of pcapgen's with extension headers ``chain`` ((next-header
    value, body)) put in front of its transport, whose protocol becomes ``last``."""
    head, body = bytearray(packet[:40]), packet[40:]
    nxt = head[6] if last is None else last
    for kind, ext in reversed(chain):
        body = bytes([nxt]) + ext + body
        nxt = kind
    head[6] = nxt
    head[4:6] = struct.pack("!H", len(body))
    return bytes(head) + body


def test_flow_fields_of_tcp_from_me():
    f = pcapgen.frame(decode.DLT_EN10MB, pcapgen.ip_packet("10.0.0.1", "10.0.0.9", "tcp", b"x",
                                                          sport=4321, dport=80))
    assert decode.flow_fields(f, decode.DLT_EN10MB, ME4, 7, 8, 99) == \
        (7, 8, 6, False, True, 0, 0x0A000001, 0, 0x0A000009, 4321, 80, 0x10, 99)


def test_flow_fields_of_udp_to_me_behind_ipv4_options():
    pkt = pcapgen.ip_packet("10.0.0.9", "10.0.0.1", "udp", sport=53, dport=5353,
                            options=b"\x01" * 8)
    fields = decode.flow_fields(pkt, decode.DLT_RAW, ME4, 0, 0, len(pkt))
    assert fields[2:5] == (17, False, False) and fields[9:12] == (5353, 53, 0)


def test_flow_fields_not_tracked():
    frag = pcapgen.ip_packet("10.0.0.9", "10.0.0.1", "udp", frag_offset=8)
    first = bytearray(pcapgen.ip_packet("10.0.0.9", "10.0.0.1", "udp"))
    first[6] |= 0x20                                          # more fragments: the first one
    tcp = pcapgen.ip_packet("10.0.0.9", "10.0.0.1", "tcp")
    gre = bytearray(tcp)
    gre[9] = 47
    v6 = pcapgen.ip_packet("2001:db8::9", "2001:db8::1", "udp")
    later = ipv6_with(v6, [(44, b"\x00\x00\x08\x00\x00\x00\x01")])     # offset 1: no ports
    proto = {name: decode.flow_fields(p, decode.DLT_RAW, ME4, 0, 0, 1)[2] for name, p in [
        ("fragment", frag), ("first fragment", bytes(first)), ("tcp cut before its flags", tcp[:20 + 13]),
        ("tcp", tcp[:20 + 14]), ("gre", bytes(gre)), ("later v6 fragment", later),
        ("icmp in ipv6", ipv6_with(v6, [], last=1))]}
    assert proto == {"fragment": 0, "first fragment": 17, "tcp cut before its flags": 0,
                     "tcp": 6, "gre": 0, "later v6 fragment": 0, "icmp in ipv6": 0}
    assert decode.flow_fields(b"\x45", decode.DLT_RAW, ME4, 0, 0, 1) is None


def test_flow_fields_walk_ipv6_extension_headers():
    v6 = pcapgen.ip_packet("2001:db8::1", "2001:db8::9", "tcp", sport=22, dport=999)
    chain = [(0, b"\x00" + bytes(6)), (43, b"\x02" + bytes(22)), (44, bytes(7)),
             (51, b"\x04" + bytes(22)), (60, b"\x00" + bytes(6))]
    fields = decode.flow_fields(ipv6_with(v6, chain), decode.DLT_RAW, ME6, 0, 0, 1)
    assert fields[2:5] == (6, True, True) and fields[9:11] == (22, 999)
    assert fields[5:9] == (*decode.address_words(ME6), *decode.address_words(packed("2001:db8::9")))
    icmp6 = ipv6_with(pcapgen.ip_packet("2001:db8::9", "2001:db8::1", "icmp"), [], last=58)
    assert decode.flow_fields(icmp6, decode.DLT_RAW, ME6, 0, 0, 1)[2:5] == (58, True, False)
    nine = ipv6_with(v6, [(60, b"\x00" + bytes(6))] * 9)
    assert decode.flow_fields(nine, decode.DLT_RAW, ME6, 0, 0, 1)[2] == 0   # past the walk's bound
