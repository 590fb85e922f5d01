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

USAGE = """\
usage: chkIFrunning PIDFILE [COMMAND ARGS...]

  PIDFILE       the daemon's pid file, e.g. /run/nc.sniffer/nc.sniffer.pid; the
                daemon counts as running if it names a live process of the
                instance NAME of NAME.pid
  COMMAND ARGS  run (exec) this when the daemon is not running, after removing
                the stale pid file, e.g. /usr/local/bin/nc.sniffer start
  -h, --help    this text

Exit 0 if the daemon runs (or nothing was to be done), 2 on failure.
For cron:  */5 * * * * chkIFrunning /run/nc.sniffer/nc.sniffer.pid \\
                                     /usr/local/bin/nc.sniffer start
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        sys.stderr.write(USAGE)
        return 1
    if argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
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
