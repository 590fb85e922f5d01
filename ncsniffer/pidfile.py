"""The pid file, and whether the process it names is really this running daemon.

A pid file left by a crash must never block a start, and ``stop`` must never
signal a stranger that happens to have reused the pid.  The first line is the
bare pid (what old tools and systemd read); the daemon adds its start time in
clock ticks and the boot id, which no other process can share with it.
A pid file without them (an older version's) is matched on the command line:
the program must be this instance's (``nc.sniffer``, ``nc.sniffer1.pl``...,
or ``--name NAME``).
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

from ncsniffer import host, safefile
from ncsniffer.configfile import instance_name   # not config: `status` validates nothing
from ncsniffer.errors import PidFileError

MAX_PID_FILE = 256
INTERPRETER = re.compile(r"(?:python|perl)[\d.]*")


class PidRecord(NamedTuple):    # not a dataclass: `status` would import inspect for it
    """What a pid file says: the pid and, when the daemon wrote it, who that was."""

    pid: int
    starttime: int | None = None
    boot: str | None = None


def read_record(path: str) -> PidRecord | None:
    """The pid file's contents, or None if it is missing or holds no pid.

    Opened non-blocking and without following a symlink: a FIFO or a link
    planted as the pid file is an error naming it, never a hang.
    """
    try:
        fd = safefile.open_regular(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PidFileError(f"cannot read pid file '{path}': {exc.strerror}") from exc
    with open(fd, "rb") as fh:
        lines = fh.read(MAX_PID_FILE).decode("ascii", errors="replace").splitlines()
    return parse_record(lines)


def parse_record(lines: list[str]) -> PidRecord | None:
    """``PID`` then optional ``starttime TICKS`` and ``boot ID`` lines."""
    first = lines[0].strip() if lines else ""
    if not first.isdigit() or int(first) <= 0:
        return None
    fields = dict(line.split(None, 1) for line in lines[1:] if len(line.split(None, 1)) == 2)
    ticks = fields.get("starttime", "").strip()
    return PidRecord(int(first), int(ticks) if ticks.isdigit() else None,
                     fields.get("boot", "").strip() or None)


def read_pid(path: str) -> int | None:
    """The pid in the file, or None if the file is missing or holds no pid."""
    record = read_record(path)
    return record.pid if record else None


def program_names(cmdline: list[str]) -> set[str]:
    """The instance names a command line runs as: its program (the script after an
    interpreter) without ``.pl``/``.py``, and a ``--name`` value."""
    args = list(cmdline)
    while args and INTERPRETER.fullmatch(os.path.basename(args[0])):
        args = args[1:]
        while args and args[0].startswith("-"):     # interpreter options (-u, -O...)
            args = args[1:]
    names = {instance_name(args[0])} if args else set()
    names.update(value for flag, value in zip(cmdline, cmdline[1:]) if flag == "--name")
    return names


def is_ours(cmdline: list[str], name: str) -> bool:
    """Does this command line run the ncsniffer instance ``name``?"""
    return name in program_names(cmdline)


def identifies(record: PidRecord, name: str) -> bool:
    """Is the live process ``record.pid`` the daemon that wrote ``record``?"""
    if record.starttime is not None:
        return (host.process_start(record.pid) == record.starttime
                and record.boot in (None, host.boot_id()))
    cmdline = host.process_cmdline(record.pid)
    return cmdline is not None and is_ours(cmdline, name)


def running_pid(path: str, name: str) -> int | None:
    """The pid of the running instance, or None (stale or absent pid file)."""
    record = read_record(path)
    if record is None or record.pid == os.getpid():
        return None
    return record.pid if identifies(record, name) else None


def record_text(pid: int) -> str:
    """The pid file's text for the live process ``pid``."""
    text = f"{pid}\n"
    ticks = host.process_start(pid)
    if ticks is not None:
        text += f"starttime {ticks}\nboot {host.boot_id()}\n"
    return text


def write_pid(path: str, pid: int) -> None:
    """Write the pid file atomically (a new ``FILE.PID.tmp``, then rename)."""
    try:
        safefile.write_atomic(path, [record_text(pid)], tmp=safefile.tmp_name(path, pid))
    except OSError as exc:
        raise PidFileError(f"could not make pidfile '{path}' for {pid}: {exc.strerror}") from exc


def remove_pid(path: str, pid: int) -> None:
    """Remove the pid file if it still names ``pid``."""
    try:
        if read_pid(path) == pid:
            os.unlink(path)
    except (OSError, PidFileError):
        pass
