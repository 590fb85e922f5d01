"""The link types ncsniffer decodes: one row each, from which the rest derives.

Each row says what libpcap and capture files call the link type, lays out its
fixed header (a ``Layout``: numpy's type codes, so the header length and the
offset of its type field are read off the layout, never written twice), and
says how the network protocol is told: by an Ethernet type field (then VLAN tags
may follow it, on Ethernet) or by the IP version nibble of what follows (the BSD
loopback family word varies between systems, so it is not trusted).

The scalar rules (``ncsniffer.decode``), the batch offsets (``ncsniffer.batch``),
the filters compiled for files and the support check (``ncsniffer.pcaplib``) and
the synthetic frames (``ncsniffer.pcapgen``) all come from ``LINKS``: a new
link type is a new row.

No numpy: a process forked before numpy is imported compiles a file's filter
and knows its link layout from this module alone; ``Layout.dtype`` imports
numpy for those that want the layout as a numpy dtype.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

BYTE_ORDERS = "<>=|"          # what a type code may start with (numpy's)
# struct's codes for numpy's integer codes (kind and size); "V6": "6s", raw bytes.
STRUCT_CODES = {"u1": "B", "u2": "H", "u4": "I", "u8": "Q",
                "i1": "b", "i2": "h", "i4": "i", "i8": "q"}


def code_size(code: str) -> int:
    """Bytes of a numpy type code: the number after its kind letter (``">u2"``: 2)."""
    return int(code.lstrip(BYTE_ORDERS)[1:])


@functools.lru_cache(maxsize=None)
def _dtype(descr: tuple[tuple[str, str], ...]) -> np.dtype:
    import numpy as np        # only here: this module is imported before numpy is
    return np.dtype(list(descr))


@dataclass(frozen=True)
class Layout:
    """A fixed header without numpy: its fields in order, packed, as numpy's
    ``dtype.descr`` lists them (name, type code such as ``">u2"``, ``"V6"``,
    ``"=u4"``); sizes and offsets follow from the codes."""

    descr: tuple[tuple[str, str], ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.descr)

    @property
    def itemsize(self) -> int:
        """Bytes of the whole header."""
        return sum(code_size(code) for _, code in self.descr)

    def code(self, name: str) -> str:
        """The type code of field ``name`` (KeyError if there is none)."""
        return dict(self.descr)[name]

    def offset(self, name: str) -> int:
        """Where field ``name`` starts (KeyError if there is none)."""
        at = 0
        for field, code in self.descr:
            if field == name:
                return at
            at += code_size(code)
        raise KeyError(name)

    def struct(self, endian: str) -> struct.Struct:
        """A struct packing every field in order, in ``endian`` byte order (struct
        takes one: a field of another one is refused)."""
        codes = [endian]
        for name, code in self.descr:
            own, kind = code[0] if code[0] in BYTE_ORDERS else "", code.lstrip(BYTE_ORDERS)
            if own not in ("", "|", endian):
                raise ValueError(f"field {name} is {code}, not in byte order {endian}")
            codes.append(f"{code_size(code)}s" if kind[0] == "V" else STRUCT_CODES[kind])
        return struct.Struct("".join(codes))

    def dtype(self) -> np.dtype:
        """The same layout as a numpy structured dtype (imports numpy)."""
        return _dtype(self.descr)


# Ethernet types (EtherType) of the network protocols decoded, and of VLAN tags.
ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
VLAN_TAGS = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))
# What a VLAN type announces: the tag's control information, then the next type.
VLAN_TAG = Layout((("tci", ">u2"), ("type", ">u2")))
VLAN_DEPTH = 2                # tags a file filter looks inside, and the capture covers
IPV4_HEADER = 20              # without options
IPV4_MAX_HEADER = 60          # with 40 bytes of options
IPV6_HEADER = 40
IPV6_EXTENSION_BYTES = 64     # extension headers connection tracking captures (SPEC 10.1)
TCP_FLAGS_BYTES = 14          # a TCP header up to its flags byte (ports at 0, flags at 13)

# libpcap DLT_* values (as pcap_datalink() reports them) and file LINKTYPE_* values.
DLT_NULL = 0
DLT_EN10MB = 1
DLT_RAW = 12
DLT_RAW_LINKTYPE = 101        # LINKTYPE_RAW: what files carry for DLT_RAW
DLT_LOOP = 108
DLT_LINUX_SLL = 113
DLT_IPV4 = 228
DLT_IPV6 = 229
DLT_LINUX_SLL2 = 276

ETHERNET_HEADER = Layout((("dst", "V6"), ("src", "V6"), ("type", ">u2")))
SLL_HEADER = Layout((("pkttype", ">u2"), ("hatype", ">u2"), ("halen", ">u2"),
                     ("addr", "V8"), ("protocol", ">u2")))
SLL2_HEADER = Layout((("protocol", ">u2"), ("reserved", ">u2"), ("ifindex", ">u4"),
                      ("hatype", ">u2"), ("pkttype", "u1"), ("halen", "u1"), ("addr", "V8")))
NULL_HEADER = Layout((("family", "=u4"),))     # in the byte order of the writer's host
LOOP_HEADER = Layout((("family", ">u4"),))
NO_HEADER = Layout()                           # the frame is the IP packet
ETHERTYPE = ">u2"                              # how a type field is stored


@dataclass(frozen=True)
class LinkType:
    """One supported link type: its names and values, its header, how it is decoded."""

    name: str                     # libpcap's name, without DLT_
    dlt: int                      # what pcap_datalink() reports
    header: Layout                # the fixed link header
    ethertype: str | None = None  # the header field holding the Ethernet type; None:
    #                               the IP version nibble after the header tells
    vlan: bool = False            # 802.1Q / 802.1ad tags can follow the header
    linktype: int | None = None   # what files carry, if not ``dlt``

    def __post_init__(self) -> None:
        if self.ethertype is not None and self.header.code(self.ethertype) != ETHERTYPE:
            raise ValueError(f"{self.name}: field {self.ethertype} is not a big-endian u2")

    @property
    def length(self) -> int:
        """Bytes of the fixed header: where the IP header (or the first tag) starts."""
        return self.header.itemsize

    @property
    def type_at(self) -> int | None:
        """Offset of the Ethernet type field, None if the version nibble decides."""
        return None if self.ethertype is None else self.header.offset(self.ethertype)

    @property
    def file_value(self) -> int:
        """The LINKTYPE_ value a capture file stores for this link type."""
        return self.dlt if self.linktype is None else self.linktype

    @property
    def values(self) -> tuple[int, ...]:
        """Every value that names this link type (libpcap's, then a file's)."""
        return (self.dlt,) if self.linktype is None else (self.dlt, self.linktype)

    @property
    def longest(self) -> int:
        """The longest link header before the IP header that decoding must capture."""
        return self.length + (VLAN_DEPTH * VLAN_TAG.itemsize if self.vlan else 0)


LINKS = (
    LinkType("EN10MB", DLT_EN10MB, ETHERNET_HEADER, "type", vlan=True),
    LinkType("LINUX_SLL", DLT_LINUX_SLL, SLL_HEADER, "protocol"),
    LinkType("LINUX_SLL2", DLT_LINUX_SLL2, SLL2_HEADER, "protocol"),
    LinkType("NULL", DLT_NULL, NULL_HEADER),
    LinkType("LOOP", DLT_LOOP, LOOP_HEADER),
    LinkType("RAW", DLT_RAW, NO_HEADER, linktype=DLT_RAW_LINKTYPE),
    LinkType("IPV4", DLT_IPV4, NO_HEADER),
    LinkType("IPV6", DLT_IPV6, NO_HEADER),
)
BY_VALUE = {value: link for link in LINKS for value in link.values}
# What decoding reads at most: the longest link header, its tags, an IPv6 header.
DECODE_BYTES = max(link.longest for link in LINKS) + IPV6_HEADER
# What connection tracking reads at most: that, IP options or extension headers, TCP flags.
FLOW_BYTES = max(link.longest for link in LINKS) + \
    max(IPV4_MAX_HEADER, IPV6_HEADER + IPV6_EXTENSION_BYTES) + TCP_FLAGS_BYTES


def lookup(value: int) -> LinkType | None:
    """The row of a DLT_ or LINKTYPE_ value, None if ncsniffer does not decode it."""
    return BY_VALUE.get(value)


def file_value(value: int) -> int:
    """The LINKTYPE_ value a file stores for a DLT_ value (RAW: 101); others as they are."""
    link = BY_VALUE.get(value)
    return value if link is None else link.file_value


def c_decoding(value: int) -> tuple | None:
    """How the C pass (``_fastread.prepare``) decodes a link type: (by type field,
    header length, type field offset, VLAN types); None if ncsniffer does not."""
    link = BY_VALUE.get(value)
    if link is None:
        return None
    if link.type_at is not None:
        return (True, link.length, link.type_at, tuple(sorted(VLAN_TAGS)))
    return (False, link.length, 0, ())
