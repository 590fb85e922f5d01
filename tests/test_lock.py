"""The one lock module: a permanent lock file stays, a removable one goes on release."""

from __future__ import annotations

import os
import time

from ncsniffer import lock


def test_permanent_lock_file_stays_and_keeps_its_exact_mode(tmp_path):
    path = str(tmp_path / "x.lock")
    old = os.umask(0o077)
    try:
        fd = lock.open_lock_file(path, removable=False, mode=0o640)
    finally:
        os.umask(old)
    held = lock.lock_fd(fd, path, removable=False)
    assert held is not None and open(path).read() == f"{os.getpid()}\n"
    assert os.stat(path).st_mode & 0o777 == 0o640
    held.release()
    held.release()                                   # a second release does nothing
    assert os.path.exists(path)


def test_removable_lock_file_is_unlinked_and_a_stale_fd_fails(tmp_path):
    path = str(tmp_path / "c.1.lock")
    first = lock.try_lock(path)
    assert first is not None and lock.lock_holder(path) == os.getpid()
    stale = lock.open_lock_file(path, removable=True)   # opened before the release
    first.release()
    assert not os.path.exists(path)
    try:
        assert lock.lock_fd(stale, path, removable=True) is None   # not the file named so
    finally:
        os.close(stale)
    assert lock.lock_holder(path) is None


def test_retry_gives_up_after_the_wait():
    started = time.monotonic()
    assert lock.retry(lambda: None, 0.2, 0.05) is None
    assert 0.2 <= time.monotonic() - started < 2
    assert lock.retry(lambda: "got", 0, 0.05) == "got"
