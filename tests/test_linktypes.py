"""The link table: every row's scalar rule, batch offsets, filters and frames agree."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ncsniffer import batch, capture, decode, linktypes, pcapgen, pcapread
from ncsniffer.gather import Gather, Heads

ROWS = {link.name: link for link in linktypes.LINKS}
VALUES = sorted(linktypes.BY_VALUE)
HOSTS = {4: ["10.0.0.1", "10.0.0.2", "200.0.0.1"], 6: ["2001:db8::1", "2001:db8::2", "fe80::1"]}
REASON = {decode.TRUNCATED: batch.TRUNCATED, decode.NOT_IP: batch.NOT_IP,
          decode.INVALID: batch.INVALID}


def versions(link: linktypes.LinkType) -> list[int]:
    """The IP versions a link type carries (DLT_IPV4 and DLT_IPV6 one each)."""
    return {"IPV4": [4], "IPV6": [6]}.get(link.name, [4, 6])


def batch_decode(link: int, frames: list[bytes]):
    """(reason, l3 offset, is IPv6) per frame, by the batch path."""
    buf = b"".join(frames)
    offs = np.cumsum([0] + [len(f) for f in frames[:-1]]).astype(np.int64)
    caplen = np.array([len(f) for f in frames], np.int64)
    heads = Heads(Gather(np.frombuffer(buf, np.uint8)), offs, width=64)
    return batch.decode_batch(link, heads, np.arange(len(frames)), caplen)


def test_every_value_names_one_row_and_libpcap_knows_its_name():
    assert len(linktypes.BY_VALUE) == sum(len(link.values) for link in linktypes.LINKS)
    for link in linktypes.LINKS:
        assert capture.link_type_name(link.dlt) == f"{link.name} ({link.dlt})"
        assert linktypes.lookup(link.file_value) is link
    assert linktypes.file_value(decode.DLT_RAW) == decode.DLT_RAW_LINKTYPE == 101
    assert linktypes.file_value(105) == 105 and linktypes.lookup(105) is None


LAYOUTS = {name: value for module in (linktypes, pcapread) for name, value in vars(module).items()
           if isinstance(value, linktypes.Layout)}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layouts_read_off_what_numpy_lays_out(name):
    """Sizes and offsets come from the type codes, without numpy: numpy's own
    layout of the same fields holds them equal (packed, in order)."""
    layout = LAYOUTS[name]
    dtype = np.dtype(list(layout.descr))
    assert layout.dtype() == dtype and layout.names == (dtype.names or ())
    assert layout.itemsize == dtype.itemsize
    for field in layout.names:
        assert layout.offset(field) == dtype.fields[field][1]
        assert np.dtype(layout.code(field)) == dtype.fields[field][0]
    with pytest.raises(KeyError):
        layout.offset("nothing")


def test_layouts_are_the_headers_they_were():
    assert {name: layout.itemsize for name, layout in LAYOUTS.items()} == {
        "VLAN_TAG": 4, "ETHERNET_HEADER": 14, "SLL_HEADER": 16, "SLL2_HEADER": 20,
        "NULL_HEADER": 4, "LOOP_HEADER": 4, "NO_HEADER": 0, "PCAP_FILE_HEADER": 24}
    assert linktypes.VLAN_TAG.offset("type") == 2
    assert pcapread.PCAP_FILE_HEADER.struct("<").format == "<IHHiIII"
    assert linktypes.ETHERNET_HEADER.struct(">").format == ">6s6sH"
    with pytest.raises(ValueError):
        linktypes.ETHERNET_HEADER.struct("<")      # its type field is big-endian


def test_batch_offsets_are_the_rows_layouts():
    assert set(batch.LINK_HEADER) | set(batch.BY_VERSION) == set(linktypes.BY_VALUE)
    assert not set(batch.LINK_HEADER) & set(batch.BY_VERSION)
    assert batch.LINK_HEADER == {1: (14, 12), 113: (16, 14), 276: (20, 0)}
    assert batch.BY_VERSION == {0: 4, 108: 4, 12: 0, 101: 0, 228: 0, 229: 0}


def test_minimum_capture_covers_the_longest_headers():
    assert linktypes.DECODE_BYTES == 14 + 2 * 4 + 40
    assert capture.MIN_CAPTURE == 64 >= linktypes.DECODE_BYTES
    longest = pcapgen.frame(decode.DLT_EN10MB, pcapgen.ip_packet("2001:db8::1", "2001:db8::2",
                                                                 payload=bytes(100)), (5, 6))
    cut = longest[:linktypes.DECODE_BYTES]
    assert decode.ethernet(cut)[0] is not None
    assert batch_decode(decode.DLT_EN10MB, [cut])[0].tolist() == [batch.OK]


def test_vlan_aware_filters_exactly_where_tags_follow():
    assert capture.vlan_aware("X") == "(X) or (vlan and ((X) or (vlan and (X))))"
    for value, link in linktypes.BY_VALUE.items():
        wanted = [capture.vlan_aware("host a"), "host a"] if link.vlan else ["host a"]
        assert capture.file_filters(value, "host a") == wanted
        assert capture.file_filters(value, "vlan and host a") == ["vlan and host a"]
    assert capture.file_filters(105, "host a") == ["host a"]


def test_raw_link_compiles_as_its_file_value():
    assert capture.compile_filter(decode.DLT_RAW, "host 10.0.0.1") == \
        capture.compile_filter(decode.DLT_RAW_LINKTYPE, "host 10.0.0.1")


@pytest.mark.parametrize("value", VALUES)
def test_frames_carry_the_type_field_where_the_row_says(value):
    link = linktypes.lookup(value)
    for version in versions(link):
        packet = pcapgen.ip_packet(*HOSTS[version][:2])
        f = pcapgen.frame(value, packet)
        assert len(f) == link.length + len(packet) and f.endswith(packet)
        head = np.frombuffer(f[:link.length], link.header.dtype())[0] if link.length else None
        if link.ethertype is not None:
            etype = linktypes.ETH_IPV4 if version == 4 else linktypes.ETH_IPV6
            assert int(head[link.ethertype]) == etype


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALUES), st.data())
def test_every_rows_scalar_rule_agrees_with_the_batch_offsets(value, data):
    link = linktypes.lookup(value)
    frames, whole = [], []
    for _ in range(data.draw(st.integers(1, 8))):
        version = data.draw(st.sampled_from(versions(link)))
        src, dst = (data.draw(st.sampled_from(HOSTS[version])) for _ in range(2))
        tags = data.draw(st.lists(st.integers(0, 4095), max_size=3)) if link.vlan else []
        payload = data.draw(st.binary(max_size=30))
        f = pcapgen.frame(value, pcapgen.ip_packet(src, dst, payload=payload), tags)
        cut = data.draw(st.integers(0, len(f)))
        frames.append(f[:cut] or b"\x00")
        whole.append((cut == len(f), link.length + 4 * len(tags), version == 6))
    reason, l3, is6 = batch_decode(value, frames)
    for i, f in enumerate(frames):
        src, dst = decode.decoder_for(value)(f)
        if src is None:
            assert reason[i] == REASON[dst]
            assert not whole[i][0]
        else:
            assert reason[i] == batch.OK
            assert (int(l3[i]), bool(is6[i])) == whole[i][1:]
            assert f[l3[i]] >> 4 == (6 if is6[i] else 4)
