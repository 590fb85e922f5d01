"""Link and IP header decoding: the rules that find the two addresses of a frame.

One small function per supported link type, on raw bytes at fixed offsets;
they never raise: a frame that cannot be decoded yields ``(None, reason)``.
These are the reference rules, frame by frame: ``ncsniffer.batch`` applies
the same rules to whole batches with numpy, and its tests check that both
agree on every frame, truncated and random ones included.
"""

from __future__ import annotations

from typing import Callable

# Why a frame was not decoded; the caller counts them.
TRUNCATED = "truncated"
NOT_IP = "non-ip"
INVALID = "invalid"

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
VLAN_TAGS = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))

# libpcap DLT_* values (as pcap_datalink() reports them) and file LINKTYPE_* values.
DLT_NULL = 0
DLT_EN10MB = 1
DLT_RAW = 12
DLT_RAW_LINKTYPE = 101
DLT_LOOP = 108
DLT_LINUX_SLL = 113
DLT_IPV4 = 228
DLT_IPV6 = 229
DLT_LINUX_SLL2 = 276

Decoded = tuple  # (src, dst) packed addresses, or (None, reason)


def ip_by_ethertype(data: bytes, off: int, etype: int) -> Decoded:
    """Addresses of the IP header at ``off``, announced by an Ethernet type."""
    while etype in VLAN_TAGS:
        if len(data) < off + 4:
            return None, TRUNCATED
        etype = data[off + 2] << 8 | data[off + 3]
        off += 4
    if etype == ETH_IPV4:
        if len(data) < off + 20:
            return None, TRUNCATED
        vihl = data[off]
        if vihl >> 4 != 4 or vihl & 15 < 5:
            return None, INVALID
        return data[off + 12:off + 16], data[off + 16:off + 20]
    if etype == ETH_IPV6:
        if len(data) < off + 40:
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


def ethernet(data: bytes) -> Decoded:
    """DLT_EN10MB, with any number of 802.1Q / 802.1ad tags."""
    if len(data) < 14:
        return None, TRUNCATED
    return ip_by_ethertype(data, 14, data[12] << 8 | data[13])


def linux_sll(data: bytes) -> Decoded:
    """DLT_LINUX_SLL (the 'any' device, 16-byte header, protocol at 14)."""
    if len(data) < 16:
        return None, TRUNCATED
    return ip_by_ethertype(data, 16, data[14] << 8 | data[15])


def linux_sll2(data: bytes) -> Decoded:
    """DLT_LINUX_SLL2 (20-byte header, protocol first)."""
    if len(data) < 20:
        return None, TRUNCATED
    return ip_by_ethertype(data, 20, data[0] << 8 | data[1])


def null_loop(data: bytes) -> Decoded:
    """DLT_NULL / DLT_LOOP: a 4-byte address family whose byte order and values
    vary between systems, so the IP version nibble decides."""
    if len(data) < 4:
        return None, TRUNCATED
    return ip_by_version(data, 4)


def raw(data: bytes) -> Decoded:
    """DLT_RAW, DLT_IPV4, DLT_IPV6: the frame is the IP packet."""
    return ip_by_version(data, 0)


_DECODERS: dict[int, Callable[[bytes], Decoded]] = {
    DLT_EN10MB: ethernet,
    DLT_LINUX_SLL: linux_sll,
    DLT_LINUX_SLL2: linux_sll2,
    DLT_NULL: null_loop,
    DLT_LOOP: null_loop,
    DLT_RAW: raw,
    DLT_RAW_LINKTYPE: raw,
    DLT_IPV4: raw,
    DLT_IPV6: raw,
}


def decoder_for(linktype: int) -> Callable[[bytes], Decoded] | None:
    """The decoder of a link type, or None if ncsniffer does not support it."""
    return _DECODERS.get(linktype)

