"""The pid file, and whether the process it names is really a running ncsniffer.

A pid file left by a crash must never block a start, and ``stop`` must never
signal a stranger that happens to have reused the pid.
"""

from __future__ import annotations

import os

from ncsniffer import host
from ncsniffer.errors import PidFileError


def read_pid(path: str) -> int | None:
    """The pid in the file, or None if the file is missing or holds no pid."""
    try:
        with open(path, "r", encoding="ascii", errors="replace") as fh:
            text = fh.read(64).strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PidFileError(f"cannot read pid file '{path}': {exc.strerror}") from exc
    return int(text) if text.isdigit() and int(text) > 0 else None


def is_ours(cmdline: list[str], name: str) -> bool:
    """Does this command line belong to the ncsniffer instance ``name``?"""
    for arg in cmdline:
        base = os.path.basename(arg)
        for suffix in (".pl", ".py"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        if base == name or "ncsniffer" in arg:
            return True
    return False


def running_pid(path: str, name: str) -> int | None:
    """The pid of the running instance, or None (stale or absent pid file)."""
    pid = read_pid(path)
    if pid is None or pid == os.getpid():
        return None
    cmdline = host.process_cmdline(pid)
    if cmdline is None:
        return None
    if cmdline == []:          # not allowed to look: trust the pid file
        return pid
    return pid if is_ours(cmdline, name) else None


def write_pid(path: str, pid: int) -> None:
    """Write the pid atomically (tmp + rename)."""
    tmp = f"{path}.{pid}.tmp"
    try:
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(f"{pid}\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise PidFileError(f"could not make pidfile '{path}' for {pid}: {exc.strerror}") from exc


def remove_pid(path: str, pid: int) -> None:
    """Remove the pid file if it still names ``pid``."""
    try:
        if read_pid(path) == pid:
            os.unlink(path)
    except (OSError, PidFileError):
        pass
