"""The report as HTML (an inline SVG bar chart above the table) and as JSON.

Pure functions of a stats file's header and records, like ``layout``: the
same groups, in the same order, as the text report.  The HTML needs nothing
from the network (no script, no font, no style sheet) and every name in it is
escaped, because host names come from PTR records anyone can write.
"""

from __future__ import annotations

import html
import json
from typing import Iterable

from ncsniffer import safetext
from ncsniffer.grouping import Group, by_cidr24, by_name, ip_order, network_text
from ncsniffer.layout import my_time, report_order

TOP_BARS = 10              # bars per chart: the busiest peers, the busiest groups
BAR_MAX = 200.0            # height in px of the tallest bar
BAR_WIDTH = 40
BAR_GAP = 16
LABEL_SPACE = 110          # below the bars, for the slanted labels
LABEL_CHARS = 20           # a longer label is cut (the table shows it whole)
LEFT_SPACE = 90           # left of the first bar, for its slanted label
TOP_SPACE = 34          # above the tallest bar: the title, the bar's value
JSON_VERSION = 1

STYLE = """\
.ncsniffer { font-family: sans-serif; }
.ncsniffer svg { display: block; margin: 0 0 1.5em 0; }
.ncsniffer rect { fill: #3a6ea5; }
.ncsniffer table { border-collapse: collapse; }
.ncsniffer th, .ncsniffer td { border: 1px solid #ccc; padding: 2px 8px; vertical-align: top; }
.ncsniffer td.n { text-align: right; }
"""


def _clean(text: str) -> str:
    """A name or header line for a page: no control characters, HTML-escaped."""
    return html.escape(safetext.strip_controls(str(text), "\t"), quote=True)


def group_label(group: Group) -> str:
    """A group's name: ``10.1.2.0/24``, ``2001:db8::/64`` or the domain (``example.com``)."""
    key = group.key
    if isinstance(key, str):
        return key[::-1]                 # by_name keys are reversed domains
    if key and key[0] == "":
        key = key[1]                     # a /24 without a name, never merged
    return network_text(key)


def peer_label(records: dict, ip: str) -> str:
    """An IP's first name, or the IP when it has none."""
    names = records[ip]["N"]
    return names[0] if names else ip


def top_peers(records: dict, count: int = TOP_BARS) -> list:
    """The ``count`` IPs with the biggest bandwidth, as (label, bytes/sec)."""
    ips = sorted(records, key=lambda ip: (-records[ip]["W"], ip_order(ip)))[:count]
    return [(peer_label(records, ip), records[ip]["W"] / 3600) for ip in ips]


def top_groups(groups: list, count: int = TOP_BARS) -> list:
    """The ``count`` groups with the biggest exact bandwidth, biggest first.  The
    table's order ties rates of equal whole bytes/second; bars must not."""
    return sorted(groups, key=lambda g: (-g.W, ip_order(g.A[0])))[:count]


def bar_chart(title: str, bars: list) -> str:
    """An SVG bar chart of (label, bytes/sec): one ``rect`` per bar, height by value."""
    width = LEFT_SPACE + max(1, len(bars)) * (BAR_WIDTH + BAR_GAP)
    height = TOP_SPACE + BAR_MAX + LABEL_SPACE
    top = max((value for _, value in bars), default=0)
    parts = [f'<svg width="{width}" height="{height:.0f}" '
             f'role="img" aria-label="{_clean(title)}">',
             f'<text x="{BAR_GAP}" y="14" font-size="13">{_clean(title)}</text>']
    if not top:
        parts.append(f'<text x="{BAR_GAP}" y="{TOP_SPACE + BAR_MAX / 2:.0f}" font-size="12">'
                     'no bandwidth yet (the hourly rates start at 0)</text>')
    for i, (label, value) in enumerate(bars):
        bar = BAR_MAX * value / top if top else 0.0
        x = LEFT_SPACE + i * (BAR_WIDTH + BAR_GAP)
        y = TOP_SPACE + BAR_MAX - bar
        base = TOP_SPACE + BAR_MAX + 12
        short = label if len(label) <= LABEL_CHARS else label[:LABEL_CHARS - 1] + "\u2026"
        parts.append(f'<rect x="{x}" y="{y:.2f}" width="{BAR_WIDTH}" height="{bar:.2f}" '
                     f'data-value="{value:.2f}"><title>{_clean(label)}: {value:.0f} '
                     'bytes/sec</title></rect>')
        parts.append(f'<text x="{x + BAR_WIDTH / 2:.0f}" y="{y - 3:.2f}" font-size="10" '
                     f'text-anchor="middle">{value:.0f}</text>')
        parts.append(f'<text x="{x + BAR_WIDTH / 2:.0f}" y="{base:.0f}" font-size="11" '
                     f'text-anchor="end" transform="rotate(-40 {x + BAR_WIDTH / 2:.0f} '
                     f'{base:.0f})">{_clean(short)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _table(records: dict, groups: Iterable[Group], by_domain: bool) -> str:
    """The report's table: one row per group, its IPs and names, rates, last contact."""
    rows = ["<table>",
            f'<tr><th>{"sub-domain" if by_domain else "network"}</th><th>IP addr</th>'
            "<th>host name</th><th>qrys/mn</th><th>bytes/sec</th><th>#IP's</th>"
            "<th>last contact time</th></tr>"]
    for g in groups:
        ips = sorted(g.A, key=ip_order)
        names = "<br>".join("<br>".join(_clean(n) for n in records[ip]["N"]) or "&nbsp;"
                            for ip in ips)
        rows.append(f"<tr><td>{_clean(group_label(g))}</td><td>{'<br>'.join(ips)}</td>"
                    f'<td>{names}</td><td class="n">{g.R / 60:.0f}</td>'
                    f'<td class="n">{g.W / 3600:.0f}</td><td class="n">{len(ips)}</td>'
                    f"<td>{_clean(my_time(g.E))}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows) + "\n"


def _grouped(records: dict, by_domain: bool) -> tuple:
    """The report's groups in report order, with the totals: (groups, rate, bw)."""
    groups, rate, bw = by_cidr24(records)
    if by_domain:
        groups, rate, bw = by_name(records, groups)
    return report_order(groups), rate, bw


def render_fragment(header: list, records: dict, by_domain: bool) -> str:
    """The chart and table for a page of one's own (an SSI page): a ``div``, no ``html``."""
    groups, rate, bw = _grouped(records, by_domain)
    kind = "sub-domain" if by_domain else "/24"
    head = "\n".join(_clean(line) for line in header)
    return ('<div class="ncsniffer">\n'
            f"<style>\n{STYLE}</style>\n"
            f"<pre>{head}</pre>\n"
            + bar_chart("top peers by bandwidth (bytes/sec)", top_peers(records))
            + bar_chart(f"top {kind} groups by bandwidth (bytes/sec)",
                        [(group_label(g), g.W / 3600) for g in top_groups(groups)])
            + _table(records, groups, by_domain)
            + f"<p>rate = {rate / 60:.0f} connections per minute, bandwidth = "
            f"{bw / 3600:.0f} bytes per second, users = {len(records)}</p>\n</div>\n")


def render_html(header: list, records: dict, by_domain: bool) -> str:
    """A whole HTML page of the report: the fragment in a document."""
    kind = "by sub-domain" if by_domain else "by /24"
    return ('<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            f"<title>ncsniffer report {kind}</title></head>\n<body>\n"
            + render_fragment(header, records, by_domain) + "</body></html>\n")


def render_json(header: list, records: dict, by_domain: bool) -> str:
    """The report for scripts: header lines, groups in report order, totals."""
    groups, rate, bw = _grouped(records, by_domain)
    doc = {
        "version": JSON_VERSION,
        "report": "domain" if by_domain else "cidr24",
        "header": list(header),
        "groups": [{"group": group_label(g),
                    "queries_per_minute": round(g.R / 60, 3),
                    "bytes_per_second": round(g.W / 3600, 3),
                    "last_contact": g.E,
                    "ips": [{"ip": ip, "names": list(records[ip]["N"]),
                             "bytes_per_second": round(records[ip]["W"] / 3600, 3)}
                            for ip in sorted(g.A, key=ip_order)]}
                   for g in groups],
        "totals": {"connections_per_minute": round(rate / 60, 3),
                   "bytes_per_second": round(bw / 3600, 3), "users": len(records)},
    }
    return json.dumps(doc, indent=1) + "\n"


RENDERERS = {"html": render_html, "fragment": render_fragment, "json": render_json}
