"""``nc.sniffer -r EMPTY.pcap start``: a capture without packets, without numpy.

The replay (``ncsniffer.replay``) imports numpy, the batch pipeline and a second
process: about 0.2 s before the first packet, all of it wasted on a file that
has none (a rotated capture, a filter run on a quiet link; issue 16).  This
writes what the replay writes for such a file, the stats file of no packets and
its log line, and answers None for everything else, which the replay then
does: a classic pcap of Ethernet with its header alone, a filter libpcap
compiles for it, no name lookups, no connection tracking, no export.
``tests/test_emptycapture.py`` holds the two outputs equal.
"""

from __future__ import annotations

import os
import struct
import sys
from typing import IO, TYPE_CHECKING

from ncsniffer.config import Settings

if TYPE_CHECKING:
    from ncsniffer import dumpfile

PCAP_HEADER = 24                       # a classic pcap's global header
CLASSIC_MAGICS = {0xA1B2C3D4, 0xA1B23C4D}   # µs and ns, read in either byte order
LINKTYPE_ETHERNET = 1
NO_PACKETS = "0 packets, 0 counted, 0 unmatched, 0 truncated, 0 non-IP, 0 invalid, 0 hosts"


def empty_pcap(path: str) -> bool:
    """Whether ``path`` is a classic pcap file of its global header alone."""
    try:
        if os.path.getsize(path) != PCAP_HEADER:
            return False
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return len(head) == 4 and (struct.unpack("<I", head)[0] in CLASSIC_MAGICS
                               or struct.unpack(">I", head)[0] in CLASSIC_MAGICS)


def applies(settings: Settings) -> bool:
    """The settings under which an empty replay is the stats file alone."""
    return (settings.clickhouse is None and not settings.connections and not settings.resolve
            and settings.events is None)


def libpcap_accepts(path: str, bpf: str) -> bool:
    """libpcap reads the file as Ethernet and compiles the filter for it (else the
    replay reports what is wrong, as it always did)."""
    import pcapy                       # the binding alone: no numpy
    try:
        handle = pcapy.open_offline(path)
        try:
            if handle.datalink() != LINKTYPE_ETHERNET:
                return False
            handle.setfilter(bpf)
        finally:
            handle.close()
    except pcapy.PcapError:
        return False
    return True


def header(settings: Settings, path: str) -> dumpfile.Header:
    """The header ``Sniffer.header`` writes before the first packet (no clock started)."""
    from ncsniffer import dumpfile
    s = settings
    return dumpfile.Header(start=0, current=0, hits=0.0, bytes=0.0, users=0, device=path,
                           promiscuous=False, bpf=s.bpf, payload=s.payload, snaplen=s.snaplen,
                           match=s.match, nomatch=s.nomatch,
                           evicted=0 if s.raw.get("max_hosts") else None)


def replay(settings: Settings, path: str, log: IO[str]) -> int | None:
    """Exit code 0 after writing the stats of an empty capture; None where the
    replay is to read ``path``."""
    if not (applies(settings) and empty_pcap(path) and libpcap_accepts(path, settings.bpf)):
        return None
    from ncsniffer import dumpfile     # only then: a replay's reading process starts sooner
    if settings.stats_file is None:
        dumpfile.write_stream(sys.stderr, header(settings, path), [], settings.dump_format)
    else:
        dumpfile.write_file(settings.stats_file, header(settings, path), [],
                            settings.dump_format)
    log.write(f"nc.sniffer: {path}: {NO_PACKETS}\n")
    return 0
