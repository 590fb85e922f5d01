"""Link and IP header decoding: the rules that find the two addresses of a frame.

One rule per kind of link header (an Ethernet type field, or the IP version
nibble), at the offsets of the link type's row in ``ncsniffer.linktypes``;
they never raise: a frame that cannot be decoded yields ``(None, reason)``.
These are the reference rules, frame by frame: ``ncsniffer.batch`` applies
the same rules to whole batches with numpy, and its tests check that both
agree on every frame, truncated and random ones included.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from ncsniffer import linktypes
from ncsniffer.pcapread import address_words  # noqa: F401 (decode.address_words, as before)

# Why a frame was not decoded; the caller counts them.
TRUNCATED = "truncated"
NOT_IP = "non-ip"
INVALID = "invalid"

# Re-exported: callers name link types and protocols through the decoder.
ETH_IPV4, ETH_IPV6, VLAN_TAGS = linktypes.ETH_IPV4, linktypes.ETH_IPV6, linktypes.VLAN_TAGS
DLT_NULL, DLT_EN10MB, DLT_LOOP = linktypes.DLT_NULL, linktypes.DLT_EN10MB, linktypes.DLT_LOOP
DLT_RAW, DLT_RAW_LINKTYPE = linktypes.DLT_RAW, linktypes.DLT_RAW_LINKTYPE
DLT_IPV4, DLT_IPV6 = linktypes.DLT_IPV4, linktypes.DLT_IPV6
DLT_LINUX_SLL, DLT_LINUX_SLL2 = linktypes.DLT_LINUX_SLL, linktypes.DLT_LINUX_SLL2

TAG, TAG_TYPE = linktypes.VLAN_TAG.itemsize, linktypes.VLAN_TAG.offset("type")
IPV4_HEADER, IPV6_HEADER = linktypes.IPV4_HEADER, linktypes.IPV6_HEADER

Decoded = tuple  # (src, dst) packed addresses, or (None, reason)
Located = tuple  # (offset of the IP header, IP version 4 or 6), or (None, reason)


def ip_header_by_ethertype(data: bytes, off: int, etype: int) -> Located:
    """(offset, IP version) of the IP header at ``off``, announced by an Ethernet type."""
    while etype in VLAN_TAGS:
        if len(data) < off + TAG:
            return None, TRUNCATED
        etype = data[off + TAG_TYPE] << 8 | data[off + TAG_TYPE + 1]
        off += TAG
    if etype == ETH_IPV4:
        if len(data) < off + IPV4_HEADER:
            return None, TRUNCATED
        vihl = data[off]
        if vihl >> 4 != 4 or vihl & 15 < 5:
            return None, INVALID
        return off, 4
    if etype == ETH_IPV6:
        if len(data) < off + IPV6_HEADER:
            return None, TRUNCATED
        if data[off] >> 4 != 6:
            return None, INVALID
        return off, 6
    return None, NOT_IP


def ip_header_by_version(data: bytes, off: int) -> Located:
    """(offset, IP version) of the IP header at ``off``, told by its version nibble."""
    if len(data) <= off:
        return None, TRUNCATED
    version = data[off] >> 4
    if version == 4:
        return ip_header_by_ethertype(data, off, ETH_IPV4)
    if version == 6:
        return ip_header_by_ethertype(data, off, ETH_IPV6)
    return None, INVALID


def addresses(data: bytes, located: Located) -> Decoded:
    """(src, dst) of a located IP header, or (None, reason)."""
    off, version = located
    if off is None:
        return None, version
    if version == 4:
        return data[off + 12:off + 16], data[off + 16:off + 20]
    return data[off + 8:off + 24], data[off + 24:off + 40]


def ip_by_ethertype(data: bytes, off: int, etype: int) -> Decoded:
    """Addresses of the IP header at ``off``, announced by an Ethernet type."""
    return addresses(data, ip_header_by_ethertype(data, off, etype))


def ip_by_version(data: bytes, off: int) -> Decoded:
    """Addresses of the IP header at ``off``, told apart by its version nibble."""
    return addresses(data, ip_header_by_version(data, off))


def header_by_type_field(data: bytes, length: int, type_at: int) -> Located:
    """The IP header behind a link header of ``length`` bytes whose Ethernet type
    is at ``type_at``."""
    if len(data) < length:
        return None, TRUNCATED
    return ip_header_by_ethertype(data, length, data[type_at] << 8 | data[type_at + 1])


def header_by_version(data: bytes, length: int) -> Located:
    """The IP header behind a link header of ``length`` bytes whose protocol the
    IP version tells (DLT_NULL / DLT_LOOP: a 4-byte address family whose byte
    order and values vary between systems; DLT_RAW and kin: no header at all)."""
    if len(data) < length:
        return None, TRUNCATED
    return ip_header_by_version(data, length)


def by_type_field(data: bytes, length: int, type_at: int) -> Decoded:
    """A link header of ``length`` bytes whose Ethernet type is at ``type_at``."""
    return addresses(data, header_by_type_field(data, length, type_at))


def by_version(data: bytes, length: int) -> Decoded:
    """A link header of ``length`` bytes whose protocol the IP version tells."""
    return addresses(data, header_by_version(data, length))


def _locator(link: linktypes.LinkType) -> Callable[[bytes], Located]:
    """The scalar rule of a table row, finding the IP header."""
    if link.type_at is None:
        return functools.partial(header_by_version, length=link.length)
    return functools.partial(header_by_type_field, length=link.length, type_at=link.type_at)


def _decoder(link: linktypes.LinkType) -> Callable[[bytes], Decoded]:
    """The scalar rule of a table row."""
    if link.type_at is None:
        return functools.partial(by_version, length=link.length)
    return functools.partial(by_type_field, length=link.length, type_at=link.type_at)


_LOCATORS = {value: _locator(link) for value, link in linktypes.BY_VALUE.items()}
_DECODERS = {value: _decoder(link) for value, link in linktypes.BY_VALUE.items()}
# Some rows' rules by name, as callers knew them.
ethernet, linux_sll, linux_sll2 = (_DECODERS[v] for v in (DLT_EN10MB, DLT_LINUX_SLL,
                                                         DLT_LINUX_SLL2))
null_loop, raw = _DECODERS[DLT_NULL], _DECODERS[DLT_RAW]


def decoder_for(linktype: int) -> Callable[[bytes], Decoded] | None:
    """The decoder of a link type, or None if ncsniffer does not support it."""
    return _DECODERS.get(linktype)


# --------------------------------------------------------------------------- flow fields
# What connection tracking (SPEC 10) reads of each counted packet: one record
# of this layout per packet, ``ncsniffer.batch.flows`` the vector rule of
# ``flow_fields`` below.  Addresses as ``ncsniffer.table`` keeps them: two
# 64-bit words, an IPv4 address in the low one (``v6`` tells which).
# The fields in ``flow_fields``'s order, laid out in bytes as the connection tracker's
# packet row (``conntrack.PACKET_DTYPE``, the C struct): the tracker takes a batch's
# records as they are, without a copy.  Every field is at an offset of its own size.
FLOW = np.dtype({
    "names": ["sec", "usec", "proto", "v6", "from_me", "me_hi", "me_lo", "peer_hi",
              "peer_lo", "me_port", "peer_port", "flags", "length"],
    "formats": [np.int64, np.uint32, np.uint8, np.bool_, np.bool_, np.uint64, np.uint64,
                np.uint64, np.uint64, np.uint16, np.uint16, np.uint8, np.uint32],
    "offsets": [0, 40, 52, 54, 53, 8, 16, 24, 32, 48, 50, 55, 44],
    "itemsize": 56,
})
NOT_TRACKED = 0                     # ``proto`` of what has no connection key
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
TRACKED = {4: (TCP, UDP, ICMP), 6: (TCP, UDP, ICMPV6)}
# Transport bytes a key needs (ports; the TCP flags byte too); ICMP: none.
KEY_BYTES = {TCP: linktypes.TCP_FLAGS_BYTES, UDP: 4, ICMP: 0, ICMPV6: 0}
TCP_FLAGS_AT = 13
IPV4_FRAGMENT_AT, IPV4_PROTOCOL_AT, IPV4_OFFSET_MASK = 6, 9, 0x1FFF
IPV6_NEXT_AT = 6
# IPv6 extension headers walked to the transport: by next-header value, how the
# header's length byte (its second) counts.  Each is 8 bytes at least, which
# must be captured; a fragment header's offset (bytes 2-3, above 3 flag bits)
# says whether the ports follow.
HOP_BY_HOP, ROUTING, FRAGMENT, AH, DEST_OPTIONS = 0, 43, 44, 51, 60
EIGHT_OCTETS = (HOP_BY_HOP, ROUTING, DEST_OPTIONS)   # (length + 1) * 8 bytes
EXTENSIONS = (*EIGHT_OCTETS, FRAGMENT, AH)           # AH: (length + 2) * 4; fragment: 8
EXTENSION_MIN = 8
MAX_EXTENSIONS = 8                  # more in one packet: not tracked


def extension_length(kind: int, length_byte: int) -> int:
    """Bytes of an IPv6 extension header of next-header value ``kind``."""
    if kind == FRAGMENT:
        return EXTENSION_MIN
    if kind == AH:
        return (length_byte + 2) * 4
    return (length_byte + 1) * 8


def transport(data: bytes, off: int, version: int) -> tuple[int, int]:
    """(protocol, offset of its header) behind the IP header at ``off``;
    (NOT_TRACKED, 0) for a non-first fragment, a header or key not captured
    whole, or a protocol without connections."""
    if version == 4:
        l4 = off + (data[off] & 15) * 4
        frag = data[off + IPV4_FRAGMENT_AT] << 8 | data[off + IPV4_FRAGMENT_AT + 1]
        if len(data) < l4 or frag & IPV4_OFFSET_MASK:
            return NOT_TRACKED, 0
        proto = data[off + IPV4_PROTOCOL_AT]
    else:
        proto, l4 = data[off + IPV6_NEXT_AT], off + IPV6_HEADER
        for _ in range(MAX_EXTENSIONS):
            if proto not in EXTENSIONS:
                break
            if len(data) < l4 + EXTENSION_MIN:
                return NOT_TRACKED, 0
            if proto == FRAGMENT and (data[l4 + 2] << 8 | data[l4 + 3]) >> 3:
                return NOT_TRACKED, 0
            proto, l4 = data[l4], l4 + extension_length(proto, data[l4 + 1])
    if proto not in TRACKED[version] or len(data) < l4 + KEY_BYTES[proto]:
        return NOT_TRACKED, 0
    return proto, l4


def flow_fields(data: bytes, linktype: int, me: bytes, sec: int, usec: int,
                length: int) -> tuple | None:
    """The FLOW record (as a tuple) of one frame, None if it does not decode."""
    off, version = _LOCATORS[linktype](data)
    if off is None:
        return None
    src, dst = addresses(data, (off, version))
    proto, l4 = transport(data, off, version)
    ports = (data[l4] << 8 | data[l4 + 1], data[l4 + 2] << 8 | data[l4 + 3]) \
        if proto in (TCP, UDP) else (0, 0)
    flags = data[l4 + TCP_FLAGS_AT] if proto == TCP else 0
    mine = src == me
    (me_addr, me_port), (peer, peer_port) = ((src, ports[0]), (dst, ports[1])) if mine else \
        ((dst, ports[1]), (src, ports[0]))
    return (sec, usec, proto, version == 6, mine, *address_words(me_addr), *address_words(peer),
            me_port, peer_port, flags, length)
