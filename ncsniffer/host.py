"""Facts about this machine: name resolution, interfaces, processes.

The one module that imports psutil; everything here is a thin, testable edge.
"""

from __future__ import annotations

import re

# socket and ipaddress are imported where used: `status`, `stop` and the CGI load
# this module for its process functions alone (issue 16: every start pays imports)

_NUMERIC = re.compile(r"^[\d.]+$")


def resolve_address(name: str) -> str | None:
    """Return the first address of ``name`` as text (IPv4 first), or None if it
    does not resolve."""
    found = resolve_all(name)
    return found[0] if found else None


def resolve_all(name: str) -> list[str]:
    """Every address of ``name`` as text, IPv4 ones first; [] if it does not resolve.

    Dotted numbers follow inet_aton (as the Perl original did), so ``1.2.3.4.5``
    fails at once instead of waiting for a DNS answer.
    """
    import socket
    name = str(name).strip()
    if not name:
        return []
    if _NUMERIC.match(name):
        try:
            return [socket.inet_ntoa(socket.inet_aton(name))]
        except OSError:
            return []
    if ":" in name:
        import ipaddress
        try:
            return [str(ipaddress.ip_address(name.split("%")[0]))]
        except ValueError:
            return []
    try:
        infos = socket.getaddrinfo(name, None, 0, socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return []
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    found = [sockaddr[0].split("%")[0] for family, _, _, _, sockaddr in infos
             if family in (socket.AF_INET, socket.AF_INET6)]
    return list(dict.fromkeys(found))


def pack_address(text: str) -> bytes:
    """The address (as ``resolve_all`` gives it) in network byte order: 4 bytes for
    IPv4, 16 for IPv6 (inet_pton: every replay's start would import ipaddress)."""
    import socket
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def interface_addresses() -> dict[str, list[tuple[str, str]]]:
    """Map each interface (alias suffix ``:N`` removed) to its (address, netmask) pairs."""
    import socket

    import psutil      # here, not at the top: a replay never needs it (13 ms of start-up)
    result: dict[str, list[tuple[str, str]]] = {}
    for name, addrs in psutil.net_if_addrs().items():
        base = name.split(":")[0]
        for addr in addrs:
            if addr.family not in (socket.AF_INET, socket.AF_INET6) or not addr.netmask:
                continue
            result.setdefault(base, []).append((addr.address.split("%")[0], addr.netmask))
    return result


def find_interface(address: str, table: dict[str, list[tuple[str, str]]] | None = None):
    """Pick the capture interface for ``address``: (name, promiscuous) or None.

    The interface owning the address is used as is; otherwise the alphabetically
    first interface whose subnet contains it, in promiscuous mode, because that
    traffic is not addressed to us.
    """
    import ipaddress
    table = interface_addresses() if table is None else table
    target = ipaddress.ip_address(address)
    within = []
    for name in sorted(table):
        for addr, mask in table[name]:
            try:
                ifaddr = ipaddress.ip_address(addr)
                if ifaddr.version != target.version:
                    continue
                if ifaddr == target:
                    return name, False
                net = ipaddress.ip_network(f"{addr}/{mask}", strict=False)
            except ValueError:
                continue
            if target in net:
                within.append(name)
    if within:
        return sorted(within)[0], True
    return None


def process_cmdline(pid: int) -> list[str] | None:
    """The command line of a live process, or None if there is no such process."""
    import psutil
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return []


def process_exists(pid: int) -> bool:
    """True while ``pid`` is a live (non-zombie) process."""
    return process_cmdline(pid) is not None


def process_start(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (proc(5) stat field 22);
    None if there is no such live process.  Together with the pid, no other
    process of this boot can have it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if len(fields) < 20 or fields[0] == b"Z":
        return None
    return int(fields[19])


def boot_id() -> str:
    """This boot's random id: a pid file from an earlier boot never matches."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""
