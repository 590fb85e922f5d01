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

from ncsniffer import linktypes

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

TAG, TAG_TYPE = linktypes.VLAN_TAG.itemsize, linktypes.VLAN_TAG.fields["type"][1]
IPV4_HEADER, IPV6_HEADER = linktypes.IPV4_HEADER, linktypes.IPV6_HEADER

Decoded = tuple  # (src, dst) packed addresses, or (None, reason)


def ip_by_ethertype(data: bytes, off: int, etype: int) -> Decoded:
    """Addresses of the IP header at ``off``, announced by an Ethernet type."""
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
        return data[off + 12:off + 16], data[off + 16:off + 20]
    if etype == ETH_IPV6:
        if len(data) < off + IPV6_HEADER:
            return None, TRUNCATED
        if data[off] >> 4 != 6:
            return None, INVALID
        return data[off + 8:off + 24], data[off + 24:off + 40]
    return None, NOT_IP


def ip_by_version(data: bytes, off: int) -> Decoded:
    """Addresses of the IP header at ``off``, told apart by its version nibble."""
    if len(data) <= off:
        return None, TRUNCATED
    version = data[off] >> 4
    if version == 4:
        return ip_by_ethertype(data, off, ETH_IPV4)
    if version == 6:
        return ip_by_ethertype(data, off, ETH_IPV6)
    return None, INVALID


def by_type_field(data: bytes, length: int, type_at: int) -> Decoded:
    """A link header of ``length`` bytes whose Ethernet type is at ``type_at``."""
    if len(data) < length:
        return None, TRUNCATED
    return ip_by_ethertype(data, length, data[type_at] << 8 | data[type_at + 1])


def by_version(data: bytes, length: int) -> Decoded:
    """A link header of ``length`` bytes whose protocol the IP version tells
    (DLT_NULL / DLT_LOOP: a 4-byte address family whose byte order and values
    vary between systems; DLT_RAW and kin: no header at all)."""
    if len(data) < length:
        return None, TRUNCATED
    return ip_by_version(data, length)


def _decoder(link: linktypes.LinkType) -> Callable[[bytes], Decoded]:
    """The scalar rule of a table row."""
    if link.type_at is None:
        return functools.partial(by_version, length=link.length)
    return functools.partial(by_type_field, length=link.length, type_at=link.type_at)


_DECODERS = {value: _decoder(link) for value, link in linktypes.BY_VALUE.items()}
# Some rows' rules by name, as callers knew them.
ethernet, linux_sll, linux_sll2 = (_DECODERS[v] for v in (DLT_EN10MB, DLT_LINUX_SLL,
                                                         DLT_LINUX_SLL2))
null_loop, raw = _DECODERS[DLT_NULL], _DECODERS[DLT_RAW]


def decoder_for(linktype: int) -> Callable[[bytes], Decoded] | None:
    """The decoder of a link type, or None if ncsniffer does not support it."""
    return _DECODERS.get(linktype)
