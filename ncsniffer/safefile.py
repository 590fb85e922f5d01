"""Files in directories other users may write: never follow a planted symlink.

The daemon runs as root in a pid and a stats directory that the README lets
the daemon's user write.  Whoever can write there could plant a symlink or a
FIFO under a name the daemon uses; every open here refuses both, temporary
files are always new (``O_EXCL``) and named after their writer's pid, and
ownership changes go through the descriptor.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from typing import Iterable

from ncsniffer.errors import NcSnifferError

NOFOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC   # no symlink, no FIFO wait
NEW_FILE_MODE = 0o666                                        # the umask applies
WRITE_BUFFER = 1 << 16        # bytes a file's small pieces (the header) gather in


class UnsafeFileError(NcSnifferError, OSError):
    """A file or directory is a symlink, not a regular file, or open to everyone."""

    def __str__(self) -> str:
        return str(self.strerror)


def open_regular(path: str, flags: int = os.O_RDONLY, mode: int = NEW_FILE_MODE) -> int:
    """A descriptor on the regular file ``path``; a symlink, FIFO or device is refused."""
    try:
        fd = os.open(path, flags | NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(errno.ELOOP, f"'{path}' is a symbolic link; remove it") from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeFileError(errno.EINVAL, f"'{path}' is not a regular file; remove it")
    os.set_blocking(fd, True)
    return fd


def tmp_name(path: str, pid: int | None = None) -> str:
    """``FILE.PID.tmp``: each writer has its own temporary file."""
    return f"{path}.{os.getpid() if pid is None else pid}.tmp"


def create_new(path: str) -> int:
    """Create ``path`` afresh (``O_EXCL``); a leftover of that name (a dead writer's
    file with our reused pid, or something planted) is unlinked, never opened."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW
    try:
        return os.open(path, flags, NEW_FILE_MODE)
    except FileExistsError:
        os.unlink(path)           # removes a symlink itself, not what it points to
        return os.open(path, flags, NEW_FILE_MODE)


def write_atomic(path: str, pieces: Iterable[str | bytes], tmp: str | None = None) -> None:
    """Write ``FILE.PID.tmp`` (the pieces: text, in UTF-8, or bytes as they are),
    fsync, rename over ``FILE``; on failure remove the temporary file and raise
    OSError (the previous ``FILE`` stays as it was)."""
    tmp = tmp or tmp_name(path)
    fd = create_new(tmp)
    try:
        with open(fd, "wb", WRITE_BUFFER) as fh:
            for piece in pieces:
                fh.write(piece if type(piece) is bytes else piece.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_directory(os.path.dirname(os.path.abspath(path)))


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_directory(directory: str) -> None:
    """Make the rename durable; a directory that cannot be synced is no error."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def chown_regular(path: str, uid: int, gid: int) -> None:
    """chown a regular file by descriptor (a symlink planted there is refused)."""
    fd = open_regular(path)
    try:
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def check_directory(path: str, what: str) -> None:
    """Refuse a directory any user may write unless it is sticky (like /tmp)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UnsafeFileError(exc.errno, f"{what} '{path}': {exc.strerror}") from exc
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise UnsafeFileError(errno.EPERM, f"{what} '{path}' is writable by every user; "
                              f"chmod o-w (or make it sticky, chmod +t)")


def remove_stale_tmp(path: str, alive) -> list[str]:
    """Remove ``FILE.PID.tmp`` (and an old-style ``FILE.tmp``) left by writers that
    are gone; ``alive(pid)`` tells which are not.  Returns what was removed."""
    directory, base = os.path.split(os.path.abspath(path))
    pattern = re.compile(re.escape(base) + r"(?:\.(\d+))?\.tmp")
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for entry in names:
        m = pattern.fullmatch(entry)
        if m and not (m.group(1) and alive(int(m.group(1)))):
            full = os.path.join(directory, entry)
            try:
                os.unlink(full)
                removed.append(full)
            except OSError:
                pass
    return removed
