"""libpcap through ctypes for what pcapy does not expose: the filter compiled for
a capture file, link type names.

No numpy, and none of the modules that import it: a reading process forked
before numpy is imported compiles the filter for its file (and checks the link
type) with this module and ``ncsniffer.linktypes`` alone.  Live and file
handles are ``ncsniffer.capture``'s.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from typing import Iterator

from ncsniffer import linktypes
from ncsniffer.errors import CaptureError
from ncsniffer.pcapread import pcap_header

FILTER_SNAPLEN = 262144       # the program's accept value; any non-zero one accepts
ERRBUF_SIZE = 256             # PCAP_ERRBUF_SIZE


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint), ("insns", ctypes.POINTER(_Insn))]


@functools.cache
def _lib() -> ctypes.CDLL:
    """The libpcap that pcapy uses (its wheel may bundle its own), for what pcapy
    does not expose: compiling against a savefile, and link type names.  Symbols
    looked up through the extension resolve in the library it links.  Loaded when
    first wanted: a replay's counting process checks link types with this module
    and never needs libpcap."""
    import pcapy
    lib = ctypes.CDLL(pcapy.__file__)
    lib.pcap_open_offline.restype = ctypes.c_void_p
    lib.pcap_open_offline.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Program), ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_uint32]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_Program)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    lib.pcap_datalink_val_to_name.restype = ctypes.c_char_p
    lib.pcap_datalink_val_to_name.argtypes = [ctypes.c_int]
    return lib


def vlan_aware(bpf: str, depth: int = linktypes.VLAN_DEPTH) -> str:
    """The filter, also applied inside up to ``depth`` VLAN tags.

    A live Linux capture filters the frame with its tag stripped, so ``host X``
    sees tagged traffic; a file keeps the tags, and the same filter would miss
    it.  Replaying must count what a live run counts.
    """
    inner = bpf
    for _ in range(depth):
        inner = f"({bpf}) or (vlan and ({inner}))"
    return inner


def file_filters(linktype: int, bpf: str) -> list[str]:
    """The filters to try for a file, best first: where VLAN tags can follow the
    link header the VLAN-aware one, then the user's own (whose compile error is
    the one to report)."""
    link = linktypes.lookup(linktype)
    if link is not None and link.vlan and "vlan" not in bpf.lower():
        return [vlan_aware(bpf), bpf]
    return [bpf]


def link_type_name(linktype: int) -> str:
    """How messages name a link type: libpcap's name and the number."""
    name = _lib().pcap_datalink_val_to_name(linktype)
    return f"{name.decode()} ({linktype})" if name else f"{linktype} (unknown to libpcap)"


def check_link_type(linktype: int, source: str) -> None:
    """Refuse a link type the table does not hold, naming it (before any filter
    is compiled for it: the filter is not what is wrong)."""
    if linktypes.lookup(linktype) is None:
        raise CaptureError(f"{source}: link type {link_type_name(linktype)} is not supported")


@contextlib.contextmanager
def _savefile(linktype: int, swapped: bool) -> Iterator[int]:
    """A libpcap handle on an empty savefile of ``linktype`` (as libpcap reports
    it, or the value files store) in the byte order ``swapped`` says: what libpcap
    compiles a filter for depends on both (DLT_NULL's family word is in the
    writer's byte order, and a savefile's IPv6 test takes every BSD AF_INET6 value)."""
    native = "<" if sys.byteorder == "little" else ">"
    order = {"<": ">", ">": "<"}[native] if swapped else native
    with _file_of(pcap_header(linktypes.file_value(linktype), FILTER_SNAPLEN, order)) as path:
        err = ctypes.create_string_buffer(ERRBUF_SIZE)
        handle = _lib().pcap_open_offline(path.encode(), err)
        if not handle:
            raise CaptureError(f"libpcap cannot compile for link type {linktype}: "
                               f"{err.value.decode(errors='replace')}")
        try:
            yield handle
        finally:
            _lib().pcap_close(handle)


@contextlib.contextmanager
def _file_of(data: bytes) -> Iterator[str]:
    """The path of a file of ``data``: one in memory (memfd) where /proc names it,
    else a temporary one (importing tempfile alone is 5 ms of a replay's reading
    process, which waits for the filter; issue 16)."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("ncsniffer-filter", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    import tempfile
    with tempfile.NamedTemporaryFile(prefix="ncsniffer-", suffix=".pcap") as fh:
        fh.write(data)
        fh.flush()
        yield fh.name


def _compile(handle: int, text: str) -> list[tuple[int, int, int, int]]:
    """The program of ``text``; pcapy.PcapError (as setfilter raises) if it does not compile."""
    import pcapy
    prog = _Program()
    if _lib().pcap_compile(handle, ctypes.byref(prog), text.encode(), 1, 0) != 0:
        raise pcapy.PcapError(_lib().pcap_geterr(handle).decode(errors="replace"))
    try:
        return [(i.code, i.jt, i.jf, i.k) for i in prog.insns[:prog.len]]
    finally:
        _lib().pcap_freecode(ctypes.byref(prog))


def compile_filter(linktype: int, bpf: str, swapped: bool = False) -> list[tuple[int, int, int, int]]:
    """libpcap's compiled program for a file of ``linktype`` whose byte order is
    the other one than this machine's if ``swapped`` (as open_offline applies it)."""
    import pcapy
    *better, own = file_filters(linktype, bpf)
    with _savefile(linktype, swapped) as handle:
        for text in better:
            try:
                return _compile(handle, text)
            except pcapy.PcapError:
                pass
        try:
            return _compile(handle, own)
        except pcapy.PcapError as exc:
            raise CaptureError(f"bad bpf filter '{bpf}': {exc}") from exc
