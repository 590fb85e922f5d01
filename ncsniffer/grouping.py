"""Grouping of stats records for the reports: by /24 (IPv6 /64) and by domain name.

Pure functions of an IP -> record map (the keys B C E N R S T W of a stats
file): no file, socket or clock is touched.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Group:
    """IPs reported together: their rate and bandwidth sums, newest contact, IPs.

    ``R`` packets/hour, ``W`` bytes/hour, ``E`` newest E of the members, ``A`` the
    IPs in numeric order; ``key`` the network (``10.1.2``, or the /64 for IPv6) or,
    from ``by_name``, the reversed domain key.
    """

    key: object
    R: float
    W: float
    E: float
    A: list = field(default_factory=list)


def ip_order(ip: str) -> tuple:
    """Numeric order of IP texts, IPv4 before IPv6 (as the daemon sorts its dump)."""
    if ":" in ip:
        return (6, socket.inet_pton(socket.AF_INET6, ip))
    return (4, socket.inet_aton(ip))


def network_of(ip: str) -> tuple:
    """The /24 of an IPv4 address or the /64 of an IPv6 address, as a sortable key."""
    if ":" in ip:
        return (6, socket.inet_pton(socket.AF_INET6, ip)[:8])
    return (4, socket.inet_aton(ip)[:3])


def network_text(net: tuple) -> str:
    """Show a network key: ``10.1.2.0/24`` or ``2001:db8::/64``."""
    version, prefix = net
    if version == 4:
        return socket.inet_ntoa(prefix + b"\0") + "/24"
    return socket.inet_ntop(socket.AF_INET6, prefix + b"\0" * 8) + "/64"


def by_cidr24(records: dict) -> tuple:
    """Group records by /24 (IPv6: /64).

    Returns ``(groups, rate, bw)``: ``groups`` a list of ``Group`` (key = network,
    see ``network_of``) in numeric order of their first IP, each with ``A`` in
    numeric order; ``rate`` and ``bw`` the sums of R and W over all records (per
    hour).  Unlike the original, the last group is never dropped.
    """
    nets: dict = {}
    for ip in sorted(records, key=ip_order):
        rec = records[ip]
        net = network_of(ip)
        group = nets.get(net)
        if group is None:
            nets[net] = Group(net, rec["R"], rec["W"], rec["E"], [ip])
        else:
            group.R += rec["R"]
            group.W += rec["W"]
            if rec["E"] > group.E:
                group.E = rec["E"]
            group.A.append(ip)
    groups = list(nets.values())
    return groups, sum(g.R for g in groups), sum(g.W for g in groups)


_CC_DOMAIN = re.compile(r"[\w-]{2}\.[\w-]{3}\.[\w-]+", re.ASCII)
_DOMAIN = re.compile(r"[\w-]+\.[\w-]+", re.ASCII)


def domain_key(name: str) -> str:
    """The reversed domain a host name is grouped under (``moc.elpmaxe``).

    The name is lower-cased and reversed character by character, then the
    original's two patterns are tried: ``cc.xxx.name`` (e.g. ``example.com.au``),
    then ``ext.name``; otherwise the whole reversed name is the key.
    """
    rev = name.lower()[::-1]
    m = _CC_DOMAIN.match(rev) or _DOMAIN.match(rev)
    return m.group() if m else rev


def first_name(records: dict, ip: str) -> str:
    """The lower-cased first name of an IP, '' if it has none."""
    names = records[ip]["N"]
    return names[0].lower() if names else ""


def by_name(records: dict, cidr: Optional[list] = None) -> tuple:
    """Group the /24 groups by the domain of the first name of their first IP.

    Returns ``(groups, rate, bw)`` like ``by_cidr24``; a group's ``key`` is the
    reversed domain (``domain_key``) or, for a /24 whose first IP has no name,
    ``('', network)`` so that it is never merged.  Groups are visited in order of
    (first name, first IP); all groups of a key merge (sums, newest E, IP lists
    joined in visiting order), not only adjacent ones as in the original.
    ``cidr`` is the list from ``by_cidr24`` (computed when not given).
    """
    if cidr is None:
        cidr = by_cidr24(records)[0]
    ordered = sorted(cidr, key=lambda g: (first_name(records, g.A[0]), ip_order(g.A[0])))
    merged: dict = {}
    for g in ordered:
        name = first_name(records, g.A[0])
        key = domain_key(name) if name else ("", g.key)
        have = merged.get(key)
        if have is None:
            merged[key] = Group(key, g.R, g.W, g.E, list(g.A))
        else:
            have.R += g.R
            have.W += g.W
            if g.E > have.E:
                have.E = g.E
            have.A.extend(g.A)
    groups = list(merged.values())
    return groups, sum(g.R for g in groups), sum(g.W for g in groups)
