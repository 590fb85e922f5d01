"""Merging the stats of several hosts into one composite (pure: no file is touched).

Per IP: B, C, R, W summed, E the newest, S the earliest, T the latest, names
united; the result does not depend on the order of the hosts.  The composite's
header keeps each host's header under a ``# host:`` line and adds the totals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from ncsniffer import safetext
from ncsniffer.dumpfile import K_KEYS, K_ZERO, MAX_NUMBER, connections_line

_CONNECTIONS = re.compile(r"(\d+) active, (\d+) started, (\d+) evicted")


def _name_order(name: str) -> tuple:
    """Real PTR names before ':SOA' fall-backs, then alphabetical: the first name is
    the one the by-name report groups by."""
    return name.startswith(":"), name.lower(), name


def merge_record(a: Mapping, b: Mapping) -> dict:
    """One IP seen by two hosts: B, C, R, W summed, E the newest, names united.

    S is the earliest start and T the latest lookup time, so the result does not
    depend on the order of the hosts (the original kept the first file's values).
    """
    names = sorted(set(a["N"]) | set(b["N"]), key=_name_order)
    merged = {
        "B": _sum(a["B"], b["B"]), "C": _sum(a["C"], b["C"]), "E": max(a["E"], b["E"]),
        "N": names, "R": _sum(a["R"], b["R"]), "S": min(a["S"], b["S"]),
        "T": max(a["T"], b["T"]), "W": _sum(a["W"], b["W"]),
    }
    if "K" in a or "K" in b:        # a host without connection tracking adds zeros
        ka, kb = a.get("K", K_ZERO), b.get("K", K_ZERO)
        merged["K"] = {k: _sum(ka[k], kb[k]) for k in K_KEYS}
    return merged


def _sum(a, b):
    """A sum kept within what a stats file may hold, so that composite.stats stays
    readable even when a source sits at the limit (only absurd counters get there)."""
    total = a + b
    if -MAX_NUMBER <= total <= MAX_NUMBER:
        return total
    return MAX_NUMBER if total > 0 else -MAX_NUMBER


def merge_all(parts: Iterable[Mapping[str, Mapping]]) -> dict[str, dict]:
    """Merge any number of record maps into a new one (the inputs are left alone).

    One accumulator for all parts: merging ten hosts of 100,000 IPs each copies
    every record once, not once per host.
    """
    merged: dict[str, dict] = {}
    for part in parts:
        for ip, rec in part.items():
            have = merged.get(ip)
            if have is not None:
                merged[ip] = merge_record(have, rec)
            else:
                merged[ip] = dict(rec, N=list(rec["N"]))
                if "K" in rec:
                    merged[ip]["K"] = dict(rec["K"])
    return merged


@dataclass
class Part:
    """One host's contribution to the composite: its header, records and fate."""

    name: str
    header: list[str]
    records: dict
    failure: str = ""          # why fetching failed ('' = fresh)
    used: bool = True          # False when no stats file could be read at all


def bounded_line(text: str, limit: int = 400) -> str:
    """Error text fit for one header line: printable, no tabs or newlines, bounded."""
    text = safetext.one_line(text)
    return text[:limit] + ("..." if len(text) > limit else "")


def host_line(part: Part) -> str:
    """The ``# host:`` line that opens a host's block in the composite header."""
    if not part.failure:
        return f"# host:\t{part.name}"
    fate = "its last stats file is used" if part.used else "no stats file"
    return f"# host:\t{part.name}\tFAILED ({bounded_line(part.failure)}), {fate}"


def composite_header(parts: Sequence[Part], merged_users: int) -> list[str]:
    """Host headers concatenated, then the grand totals (hits and bytes summed)."""
    lines = [f"# ncsniffer composite of {len(parts)} hosts"]
    hits = total_bytes = 0.0
    for part in parts:
        lines.append("")
        lines.append(host_line(part))
        lines.extend(part.header)
        if part.used:
            hits += header_number(part.header, "hits")
            total_bytes += header_number(part.header, "bytes")
    lines += ["", "# grand total all hosts",
              "# hits:\t\t%.0f per minute" % hits,
              "# bytes:\t%.0f per second" % total_bytes,
              f"# users:\t{merged_users}"]
    conns = [connections(p.header) for p in parts if p.used]
    if any(c is not None for c in conns):
        lines.append(connections_line(*(_sum(0, sum(c[i] for c in conns if c)) for i in range(3))))
    failed = [p.name for p in parts if p.failure]
    if failed:
        lines.append("# failed hosts:\t" + " ".join(failed))
    return lines


def connections(header: Sequence[str]) -> tuple[int, int, int] | None:
    """(active, started, evicted) of the first ``# connections:`` line; None if none."""
    for line in header:
        if line.startswith("# connections:"):
            m = _CONNECTIONS.search(line)
            return (int(m[1]), int(m[2]), int(m[3])) if m else None
    return None


def header_number(header: Sequence[str], name: str) -> float:
    """The leading number of the first ``# name:`` line (hits, bytes); 0 if none."""
    prefix = f"# {name}:"
    for line in header:
        if line.startswith(prefix):
            m = re.match(r"\s*(-?\d+(?:\.\d+)?)", line[len(prefix):])
            return float(m.group(1)) if m else 0.0
    return 0.0
