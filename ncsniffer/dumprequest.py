"""The dump-request client: ask the daemon for a fresh stats file and wait for it.

The daemon answers a UDP ``dump`` with ``OK <epoch>`` and rewrites its stats
file; a newer file is recognised by its ctime (``presync``, ``sync``).  The
original's conventions are kept: ``rqst_dump`` returns '' or an error text,
``presync``/``sync``/``chkcache`` a ctime or None.
"""

from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Optional, Union

from ncsniffer.errors import ReportError

if TYPE_CHECKING:
    import socket

DEFAULT_UPDTO = 15
POLL = 0.05                      # seconds between ctime checks while waiting

Address = Union[str, int, "tuple[str, int]", None]


def file_ctime(file: str) -> Optional[int]:
    """A file's ctime in whole seconds, None if it is missing."""
    try:
        return int(os.stat(file).st_ctime)
    except OSError:
        return None


def presync(file: str) -> Optional[int]:
    """The file's ctime once it is older than now, so a newer dump can be told apart.

    If the ctime is this very second, wait for the next second. None if the file
    is missing or its ctime lies in the future.
    """
    ctime = file_ctime(file)
    if ctime is None:
        return None
    now = int(time.time())
    if ctime < now:
        return ctime
    if ctime > now:
        return None
    deadline = time.monotonic() + 1.5
    while int(time.time()) <= ctime and time.monotonic() < deadline:
        time.sleep(POLL)
    return ctime


def dir_of(path: str) -> str:
    """The directory part of a path with its trailing slash, './' if none (Perl's $`)."""
    cut = path.rfind("/")
    return path[:cut + 1] if cut >= 0 else "./"


def readable_dir(directory: str) -> bool:
    """The daemon writes its dump there: it must exist and be readable."""
    return os.path.isdir(directory) and os.access(directory, os.R_OK)


def wait_newer(file: str, old: Optional[int], timeout: float) -> tuple:
    """Wait until ``file`` exists with a ctime above ``old``: ``(ctime, '')`` or ``(None, error)``."""
    directory = dir_of(file)
    if not readable_dir(directory):
        return None, f"stats directory missing or not readable: '{directory}'"
    old = old or 0
    deadline = time.monotonic() + max(timeout, 0)
    while True:
        ctime = file_ctime(file)
        if ctime is not None and ctime > old:
            return ctime, ""
        if time.monotonic() >= deadline:
            return None, f"'{file}' timeout: not updated within {timeout:g} seconds"
        time.sleep(POLL)


def sync(file: str, old: Optional[int], timeout: float = 30) -> Optional[int]:
    """Wait until the file's ctime is newer than ``old`` (0/None: until it exists).

    Returns the new ctime, or None after ``timeout`` seconds, or None at once if
    the file's directory is missing.
    """
    return wait_newer(file, old, timeout or 30)[0]


def chkcache(file: str, age: float = 300) -> Optional[int]:
    """The file's ctime if it is younger than ``age`` seconds, else None (also if missing)."""
    ctime = file_ctime(file)
    if ctime is None or ctime + (age or 300) < time.time():
        return None
    return ctime


def parse_update(spec) -> tuple:
    """``'host:port'``, ``'[v6addr]:port'`` or a bare port -> ``(ip, port)``.

    Raises ``ReportError`` with the original's ``chk_wconf`` messages.
    """
    import socket              # here: a cached page sends no request (issue 16)
    if isinstance(spec, tuple) and len(spec) == 2:
        return str(spec[0]), int(spec[1])
    text = str(spec)
    m = re.fullmatch(r"\[([^\]]*)\]:(\d+)", text)
    if m:
        try:
            socket.inet_pton(socket.AF_INET6, m.group(1))
        except OSError:
            raise ReportError(f"invalid characters in host address: '{m.group(1)}'") from None
        return m.group(1), int(m.group(2))
    m = re.search(r"([\w.-]+):(\d+)", text)
    if m:
        try:
            return socket.gethostbyname(m.group(1)), int(m.group(2))
        except (OSError, UnicodeError):
            raise ReportError(f"invalid characters in host address: '{m.group(1)}'") from None
    if re.fullmatch(r"\d+", text):
        return "127.0.0.1", int(text)
    raise ReportError(f"invalid update specification '{text}'")


def _send_dump(addr: tuple) -> socket.socket:
    """A connected UDP socket that has sent ``dump``; connected so that a refusal shows."""
    import socket
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.connect(addr)
        sock.send(b"dump")
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _reply(sock: socket.socket) -> tuple:
    """``(text, error)`` of the daemon's reply so far; both '' if none arrived yet."""
    try:
        return sock.recv(256).decode("ascii", "replace"), ""
    except BlockingIOError:
        return "", ""
    except ConnectionRefusedError:
        return "", "connection refused"
    except OSError as exc:
        return "", exc.strerror or str(exc)


def _await_dump(sock: socket.socket, addr: tuple, file: str, old: Optional[int],
                timeout: float) -> str:
    """Wait for a stats file newer than ``old``; '' or an error text.

    The reply is read while waiting: a refused request or a ``??`` answer ends
    the wait at once instead of after the whole timeout.
    """
    where = "%s:%d" % addr
    deadline = time.monotonic() + timeout
    answer = ""
    while True:
        text, problem = _reply(sock)
        if problem:
            return f"dump request to {where} failed: {problem}"
        answer = text or answer
        if answer and not answer.startswith("OK"):
            return f"dump request to {where} refused: {answer.strip()[:40]!r}"
        ctime = file_ctime(file)
        if ctime is not None and ctime > (old or 0):
            return _check_promise(answer or _reply(sock)[0], ctime)
        if time.monotonic() >= deadline:
            return f"'{file}' timeout: no update within {timeout:g} seconds after 'dump' to {where}"
        time.sleep(POLL)


def _check_promise(answer: str, ctime: int) -> str:
    """The daemon's ``OK <epoch>`` promises a file not older than epoch."""
    m = re.match(r"OK\s*(\d+)", answer)
    if m and int(m.group(1)) > ctime:
        return f"statistics update error OK {m.group(1)} > file {ctime}"
    return ""


def rqst_dump(addr: Address, file: str, age: float, timeout: float) -> str:
    """Ask the daemon at ``addr`` for a dump and wait for a newer ``file``.

    ``addr``: ``'host:port'``, a bare port, or ``(ip, port)``; false means
    dumps are disabled and nothing is done.  The request is sent only if the
    file is older than ``age`` seconds, or always when ``age`` is 0.  Returns ''
    on success, else an error text (timeout, refused, bad address).
    """
    if not addr:
        return ""
    try:
        target = parse_update(addr)
    except ReportError as exc:
        return str(exc)
    directory = dir_of(file)
    if not readable_dir(directory):
        return f"stats directory missing or not readable: '{directory}'"
    old = presync(file) or 0
    if age and old + age >= time.time():
        return ""
    try:
        sock = _send_dump(target)
    except OSError as exc:
        return f"could not send dump request to {target[0]}:{target[1]}: {exc.strerror or exc}"
    try:
        return _await_dump(sock, target, file, old, timeout or DEFAULT_UPDTO)
    finally:
        sock.close()
