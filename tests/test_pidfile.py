"""The pid file: its format, and telling the daemon from strangers (issue 11.16)."""

import os
import subprocess
import sys

import pytest

from ncsniffer import pidfile
from ncsniffer.errors import PidFileError
from tests.conftest import run_cli, stop_process, write_config

PY = "/opt/ncsniffer/.venv/bin/python"


@pytest.mark.parametrize("cmdline,name", [
    ([PY, "/opt/ncsniffer/.venv/bin/nc.sniffer", "-c", "/etc/x.conf", "start"], "nc.sniffer"),
    ([PY, "-u", "/usr/sbin/nc.sniffer1", "-d", "start"], "nc.sniffer1"),
    (["/usr/bin/perl", "/usr/sbin/nc.sniffer2.pl", "start"], "nc.sniffer2"),
    (["/usr/sbin/nc.sniffer"], "nc.sniffer"),
    ([PY, "/home/me/nc.sniffer7.py", "start"], "nc.sniffer7"),
    ([PY, "/opt/bin/nc.sniffer", "--name", "edge", "start"], "edge"),
])
def test_is_ours_knows_the_daemons_command_lines(cmdline, name):
    assert pidfile.is_ours(cmdline, name)


@pytest.mark.parametrize("cmdline", [
    ["vim", "/src/ncsniffer/ncsniffer/pidfile.py"],
    [PY, "-m", "pytest", "/src/ncsniffer/tests"],
    ["less", "/var/run/nc.sniffer/nc.sniffer.pid"],
    [PY, "/usr/sbin/nc.sniffer1", "start"],          # another instance
    [PY, "-c", "import time; time.sleep(9)", "ncsniffer"],
    [],                                               # a kernel thread
])
def test_is_ours_refuses_strangers(cmdline):
    assert not pidfile.is_ours(cmdline, "nc.sniffer")


def test_first_line_stays_the_bare_pid(tmp_path):
    path = str(tmp_path / "x.pid")
    pidfile.write_pid(path, os.getpid())
    lines = open(path).read().splitlines()
    assert lines[0] == str(os.getpid()) and lines[1].startswith("starttime ")
    assert pidfile.read_pid(path) == os.getpid()
    with open(path, "w") as fh:
        fh.write("4242\n")                         # an older version's pid file
    assert pidfile.read_record(path) == pidfile.PidRecord(4242)


@pytest.fixture
def stranger():
    """A live process with 'ncsniffer' in its arguments that is not the daemon."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             "ncsniffer", "nc.sniffer"])
    yield proc
    stop_process(proc)


def test_start_time_tells_the_writer_from_a_reused_pid(tmp_path, stranger):
    path = str(tmp_path / "nc.sniffer.pid")
    pidfile.write_pid(path, stranger.pid)            # as if it had written it
    assert pidfile.running_pid(path, "nc.sniffer") == stranger.pid
    text = open(path).read().replace("starttime ", "starttime 1")
    with open(path, "w") as fh:
        fh.write(text)                               # the same pid, started at another time
    assert pidfile.running_pid(path, "nc.sniffer") is None


@pytest.mark.integration
def test_a_stranger_is_never_signalled(workdir, stranger):
    conf = write_config(workdir, bpf="host 127.0.0.1")
    with open(os.path.join(workdir, "nc.sniffer.pid"), "w") as fh:
        fh.write(f"{stranger.pid}\n")
    assert run_cli("-c", conf, "status").returncode == 3
    assert run_cli("-c", conf, "dump").stderr.strip() == "nc.sniffer not running"
    assert run_cli("-c", conf, "stop").stderr.strip() == "nc.sniffer: not running"
    assert stranger.poll() is None                   # SIGUSR1 or SIGTERM would have ended it


@pytest.mark.integration
def test_a_kernel_thread_is_not_the_daemon(workdir):
    kthreadd = 2
    assert open(f"/proc/{kthreadd}/cmdline").read() == ""
    conf = write_config(workdir, bpf="host 127.0.0.1")
    with open(os.path.join(workdir, "nc.sniffer.pid"), "w") as fh:
        fh.write(f"{kthreadd}\n")
    r = run_cli("-c", conf, "status")
    assert r.returncode == 3 and r.stderr.strip() == "nc.sniffer not running"


@pytest.mark.integration
@pytest.mark.parametrize("verb", ["status", "dump", "stop", "start"])
def test_a_fifo_as_pid_file_is_an_error_not_a_hang(workdir, verb):
    conf = write_config(workdir, bpf="host 127.0.0.1")
    fifo = os.path.join(workdir, "nc.sniffer.pid")
    os.mkfifo(fifo)
    r = run_cli("-c", conf, verb, timeout=20)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"nc.sniffer: cannot read pid file '{fifo}': "
                                f"'{fifo}' is not a regular file; remove it")


def test_a_symlink_as_pid_file_is_refused(tmp_path):
    mine = tmp_path / "mine"
    mine.write_text("1\n")
    link = str(tmp_path / "nc.sniffer.pid")
    os.symlink(mine, link)
    with pytest.raises(PidFileError, match="is a symbolic link"):
        pidfile.read_pid(link)


def test_planted_symlink_as_temporary_pid_file_is_not_followed(tmp_path):
    path = str(tmp_path / "nc.sniffer.pid")
    mine = tmp_path / "mine"
    mine.write_text("the test's own file\n")
    os.symlink(mine, f"{path}.{os.getpid()}.tmp")
    pidfile.write_pid(path, os.getpid())
    assert mine.read_text() == "the test's own file\n"
    assert pidfile.read_pid(path) == os.getpid()
