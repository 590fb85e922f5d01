"""Exclusive locks on files that hold the owner's pid (the web report's and the coalescer's).

An flock dies with its process, so a crashed holder's lock is free at once; the
pid in the file is there for people and messages.  Two kinds share the code:

* a *permanent* lock file (the web report's ``FILE.lock``, the original's
  ``get_lock``) stays on disk and is created with exactly the configured mode;
* a *removable* one (the coalescer's ``CACHE.1.lock``) is unlinked by its holder
  before unlocking, so a waiter re-checks that it locked the file still named so.

Opening errors are left as ``OSError``: each caller words them its own way.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from typing import IO, Callable, Optional, TypeVar

from ncsniffer.errors import LockTimeout, ReportError

DEFAULT_LOCK_TIMEOUT = 15        # get_lock's wait, seconds
DEFAULT_UMASK = 0o117            # get_lock's files: rw for owner and group
REMOVABLE_MODE = 0o660           # the coalescer's lock file, before the process umask
POLL = 0.05                      # get_lock: seconds between tries
LOCK_WAIT = 120.0                # take_lock: the original coalescer's 2 minutes
LOCK_POLL = 0.1                  # take_lock: seconds between tries
_BUSY = (errno.EAGAIN, errno.EACCES)

T = TypeVar("T")


class FileLock:
    """An flock held on ``path`` through ``fd``; ``release()`` or a ``with`` ends it."""

    def __init__(self, path: str, fd: int, removable: bool):
        self.path, self.fd, self.removable = path, fd, removable

    def release(self) -> None:
        """A removable file is unlinked while still held (waiters re-check the inode)."""
        if self.fd < 0:
            return
        if self.removable:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def open_exact(path: str, mode: int) -> int:
    """Open read/write; a file we create gets exactly ``mode`` whatever the process umask."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return os.open(path, os.O_RDWR)
    try:
        os.fchmod(fd, mode)
    except OSError:
        pass
    return fd


def open_lock_file(path: str, removable: bool, mode: int = REMOVABLE_MODE) -> int:
    """A permanent lock file gets exactly ``mode``; a removable one ``mode`` less the umask."""
    if removable:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    return open_exact(path, mode)


def _flock_now(fd: int) -> bool:
    """One try at an exclusive flock: False if someone else holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in _BUSY:
            raise
        return False
    return True


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def lock_fd(fd: int, path: str, removable: bool) -> Optional[FileLock]:
    """One try to lock the open ``fd`` of ``path`` and write our pid; None if busy.

    A removable file may have been released and unlinked while we opened it: then
    the fd is no longer ``path`` and the try fails.  The fd stays ours either way.
    """
    if not _flock_now(fd):
        return None
    if removable and not _same_file(fd, path):
        return None
    os.ftruncate(fd, 0)
    os.write(fd, b"%d\n" % os.getpid())
    return FileLock(path, fd, removable)


def retry(attempt: Callable[[], Optional[T]], wait: float, poll: float) -> Optional[T]:
    """Call ``attempt`` until it gives a lock or ``wait`` seconds have passed (then None)."""
    deadline = time.monotonic() + wait
    while True:
        got = attempt()
        if got is not None:
            return got
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll)


# --------------------------------------------------------------------------- removable (coalescer)

def try_lock(path: str) -> Optional[FileLock]:
    """Take the removable lock ``path`` if nobody holds it; write our pid into it."""
    fd = open_lock_file(path, removable=True)
    try:
        held = lock_fd(fd, path, removable=True)
    except BaseException:
        os.close(fd)
        raise
    if held is None:
        os.close(fd)
    return held


def take_lock(path: str, wait: float = LOCK_WAIT, poll: float = LOCK_POLL) -> Optional[FileLock]:
    """Wait up to ``wait`` seconds for the removable lock; None if its holder is still busy."""
    return retry(lambda: try_lock(path), wait, poll)


def lock_holder(path: str) -> Optional[int]:
    """The pid of the live process holding the lock, -1 if unreadable, None if free."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            text = os.read(fd, 32).decode("ascii", errors="replace").strip()
            return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- permanent (web report)

class Lock:
    """The original's ``get_lock``: ``FILE.lock`` held, and ``FILE`` open read/write.

    Use as a context manager or call ``release()``; both close the two files.
    """

    def __init__(self, path: str, held: FileLock, handle: IO[str]):
        self.path = path
        self.lock_path = held.path
        self._held = held
        self.handle = handle

    def release(self) -> None:
        """Close the file, then drop the lock."""
        if self.handle is not None and not self.handle.closed:
            self.handle.close()
        self._held.release()

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def get_lock(file: str, timeout: float = DEFAULT_LOCK_TIMEOUT, umask: int = DEFAULT_UMASK) -> Lock:
    """Lock ``file.lock`` exclusively (waiting up to ``timeout`` s), then open ``file``.

    ``file`` is opened read/write and created if missing, with permissions
    ``0o666 & ~umask``; nothing is truncated.  The lock file holds our pid, so
    a person can see who holds it.  Raises ``LockTimeout`` if another process
    keeps the lock, ``ReportError`` if a file cannot be opened.
    """
    timeout = DEFAULT_LOCK_TIMEOUT if timeout is None else timeout
    mode = 0o666 & ~(DEFAULT_UMASK if umask is None else umask)
    lock_path = file + ".lock"
    try:
        fd = open_lock_file(lock_path, removable=False, mode=mode)
    except OSError as exc:
        raise ReportError(f"could not open lock file '{lock_path}': {exc.strerror}") from exc
    try:
        held = retry(lambda: lock_fd(fd, lock_path, removable=False), timeout, POLL)
        if held is None:
            raise LockTimeout(f"can not lock '{file}' within {timeout:g} seconds")
        handle = open(open_exact(file, mode), "r+", encoding="utf-8")
    except OSError as exc:
        os.close(fd)
        raise ReportError(f"could not open '{file}' after lock: {exc.strerror}") from exc
    except BaseException:
        os.close(fd)
        raise
    return Lock(file, held, handle)
