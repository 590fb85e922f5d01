"""The report's text (SPEC 8.2): header, groups by bandwidth, totals.

``render_report`` lays out records already read; ``read_stf``, ``report_text``
and ``report`` are its file-reading edge.
"""

from __future__ import annotations

import time
from typing import IO, Iterable

from ncsniffer import dumpfile, safetext
from ncsniffer.grouping import Group, by_cidr24, by_name, ip_order

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def my_time(t: float) -> str:
    """Local time as ``apr 24 17:02:14`` (lower-case month, the original's layout)."""
    try:
        tm = time.localtime(int(t))
    except (OverflowError, OSError, ValueError):
        return "?"          # a time no clock can show: the report goes on
    return "%s %02d %02d:%02d:%02d" % (MONTHS[tm.tm_mon - 1], tm.tm_mday, tm.tm_hour,
                                       tm.tm_min, tm.tm_sec)


TITLE = "\n   IP addr\t    host name\n qrys/mn -- bytes/sec -- #IP's\tlast contact time\n\n"


def report_order(groups: Iterable[Group]) -> list:
    """Biggest bandwidth first (whole bytes/second), then lowest first IP."""
    return sorted(groups, key=lambda g: (-int(g.W / 3600), ip_order(g.A[0])))


def render_report(header: list, records: dict, by_domain: bool) -> Iterable[str]:
    """The report's text in pieces: header, groups by bandwidth, totals (SPEC 8.2)."""
    groups, rate, bw = by_cidr24(records)
    if by_domain:
        groups, rate, bw = by_name(records, groups)
    # names and header lines are shown stripped: no escape sequence, no forged line
    strip = safetext.strip_controls
    yield "\n" + "".join(strip(line, "\t") + "\n" for line in header)
    yield "\nComposite report, %s ordered by BANDWIDTH\n" % ("SUB DOMAIN" if by_domain else "CIDR/24")
    yield TITLE
    for g in report_order(groups):
        ips = sorted(g.A, key=ip_order)
        yield "".join("%s\t%s\n" % (ip, "\n\t\t".join(map(strip, records[ip]["N"])))
                      for ip in ips)
        yield " %6.0f\t -- %.0f\t -- %d\t%s\n" % (g.R / 60, g.W / 3600, len(ips), my_time(g.E))
    yield TITLE
    yield ("rate\t\t= %.0f connections per minute\nbandwidth\t= %.0f bytes per second\n"
           "users\t\t= %d\n" % (rate / 60, bw / 3600, len(records)))


def read_stf(file: str) -> dumpfile.StatsFile:
    """Read a stats file of any format (Python, Perl, JSON) without executing it.

    Returns a ``dumpfile.StatsFile``: ``.records`` maps IP text to a dict with
    the keys B C E N R S T W; ``.header`` holds the '#' lines (no newline).
    Raises ``DumpFileError`` naming the file if it is missing, damaged or hostile.
    """
    return dumpfile.read_stats(file)


def report_text(file: str, by_domain: bool) -> str:
    """The whole report of a stats file as one string."""
    stats = read_stf(file)
    return "".join(render_report(stats.header, stats.records, by_domain))


def report(handle: IO[str], file: str, by_name: bool) -> None:
    """Write the /24 report (``by_name`` false) or the sub-domain report of ``file``.

    The file is read completely before anything is written, so an unreadable
    file raises ``DumpFileError`` and leaves ``handle`` untouched; the report is
    then written piece by piece (no second copy of a big report's text).
    """
    stats = read_stf(file)
    for piece in render_report(stats.header, stats.records, bool(by_name)):
        handle.write(piece)
