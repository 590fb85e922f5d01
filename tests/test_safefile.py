"""Files in directories others may write: no symlink, FIFO or reused name (issue 11.14)."""

import os

import pytest

from ncsniffer import safefile
from ncsniffer.errors import NcSnifferError


@pytest.fixture
def mine(tmp_path):
    path = tmp_path / "mine"
    path.write_text("the test's own file\n")
    return path


def test_open_regular_refuses_a_symlink_and_a_fifo(tmp_path, mine):
    link, fifo = str(tmp_path / "link"), str(tmp_path / "fifo")
    os.symlink(mine, link)
    os.mkfifo(fifo)
    with pytest.raises(safefile.UnsafeFileError, match="is a symbolic link; remove it"):
        safefile.open_regular(link, os.O_WRONLY | os.O_APPEND)
    with pytest.raises(safefile.UnsafeFileError, match="is not a regular file; remove it"):
        safefile.open_regular(fifo)          # O_NONBLOCK: no wait for a writer
    assert mine.read_text() == "the test's own file\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_chown_regular_never_changes_a_symlinks_target(tmp_path, mine):
    link = str(tmp_path / "x.stats")
    os.symlink(mine, link)
    with pytest.raises(safefile.UnsafeFileError):
        safefile.chown_regular(link, 65534, 65534)
    assert os.stat(mine).st_uid == os.geteuid()


def test_create_new_replaces_a_planted_name(tmp_path, mine):
    tmp = safefile.tmp_name(str(tmp_path / "x.stats"))
    assert tmp == f"{tmp_path}/x.stats.{os.getpid()}.tmp"
    os.symlink(mine, tmp)
    os.close(safefile.create_new(tmp))
    assert not os.path.islink(tmp) and mine.read_text() == "the test's own file\n"


def test_check_directory(tmp_path):
    os.chmod(tmp_path, 0o777)
    with pytest.raises(NcSnifferError, match="is writable by every user; chmod o-w"):
        safefile.check_directory(str(tmp_path), "pid directory")
    os.chmod(tmp_path, 0o1777)
    safefile.check_directory(str(tmp_path), "pid directory")
    os.chmod(tmp_path, 0o775)
    safefile.check_directory(str(tmp_path), "pid directory")


def test_remove_stale_tmp_keeps_live_writers(tmp_path):
    path = str(tmp_path / "n.stats")
    for name in ("n.stats.tmp", "n.stats.11.tmp", "n.stats.22.tmp", "n.stats.x.tmp",
                 "other.stats.11.tmp"):
        (tmp_path / name).write_text("")
    removed = safefile.remove_stale_tmp(path, alive=lambda pid: pid == 22)
    assert sorted(os.path.basename(p) for p in removed) == ["n.stats.11.tmp", "n.stats.tmp"]
    assert sorted(os.listdir(tmp_path)) == ["n.stats.22.tmp", "n.stats.x.tmp",
                                            "other.stats.11.tmp"]


def test_write_atomic_takes_text_and_bytes_pieces(tmp_path):
    """Text is written in UTF-8, bytes as they are, in order; no temporary file stays."""
    path = tmp_path / "f.stats"
    path.write_text("old\n")
    big = b"x" * (3 * safefile.WRITE_BUFFER + 5)
    safefile.write_atomic(str(path), ["\n# h\u00e9\n", b"{\n", big, "", b"}\n"])
    assert path.read_bytes() == "\n# h\u00e9\n".encode() + b"{\n" + big + b"}\n"
    assert os.listdir(tmp_path) == ["f.stats"]
