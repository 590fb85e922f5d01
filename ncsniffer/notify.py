"""systemd's notification protocol: readiness, status, watchdog pings, stopping.

The only module that imports sdnotify.  Nothing is sent unless systemd (or a
test) set ``NOTIFY_SOCKET``; watchdog pings only when ``WATCHDOG_USEC`` asks
for them, and only from the process it names in ``WATCHDOG_PID`` if set.
"""

from __future__ import annotations

import os
from typing import Mapping

import sdnotify


class Notifier:
    """Tells the service manager how the daemon is doing; silent outside systemd."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self.watchdog = self.enabled and _watchdog_wanted(os.environ)
        # sdnotify reads NOTIFY_SOCKET and connects now (as root, before privileges drop)
        self._sd = sdnotify.SystemdNotifier() if self.enabled else None

    def send(self, *lines: str) -> None:
        """One datagram of KEY=VALUE lines."""
        if self._sd is not None:
            self._sd.notify("\n".join(lines))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def ping(self) -> None:
        """The watchdog's keep-alive, from the event loop's tick."""
        if self.watchdog:
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")


def _watchdog_wanted(environ: Mapping[str, str]) -> bool:
    """WATCHDOG_USEC is a positive number, for us (WATCHDOG_PID absent or ours)."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return False
    wanted_pid = environ.get("WATCHDOG_PID")
    return usec > 0 and (not wanted_pid or wanted_pid == str(os.getpid()))
