"""``chkIFrunning PIDFILE [COMMAND ARGS...]``: restart a daemon from cron if it died.

Exit 0 if the pid file names the running daemon (the same test as ``status``:
the instance is NAME of ``NAME.pid``); otherwise remove the stale pid file and
exec COMMAND when it exists and is executable.
"""

from __future__ import annotations

import os
import sys

from ncsniffer import pidfile
from ncsniffer.errors import PidFileError

USAGE = "usage: chkIFrunning PIDFILE [COMMAND ARGS...]\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stderr.write(USAGE)
        return 1 if not argv else 0
    path, command = argv[0], argv[1:]
    name = os.path.basename(path).removesuffix(".pid")
    try:
        if pidfile.running_pid(path, name) is not None:
            return 0
    except PidFileError as exc:
        sys.stderr.write(f"chkIFrunning: {exc}\n")
        return 2
    if os.path.exists(path):
        try:
            os.unlink(path)
        except OSError as exc:
            sys.stderr.write(f"chkIFrunning: cannot remove stale '{path}': {exc.strerror}\n")
            return 2
    if command and os.path.isfile(command[0]) and os.access(command[0], os.X_OK):
        os.execv(command[0], command)
    if command:
        sys.stderr.write(f"chkIFrunning: '{command[0]}' is not an executable file\n")
        return 2
    return 0
