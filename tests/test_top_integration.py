"""nc.sniffer top with a real daemon on lo: --once numbers, errors, the view in tmux."""

import codecs
import importlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest

from ncsniffer import cli
from tests.conftest import NC_SNIFFER, run_cli, stop_process, write_config
from tests.daemonutil import LiveDaemon, free_port, mtime_ns, wait_for
from tests.netutil import RawSender
from tests import test_report

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root")]

BUSY, QUIET = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def sender():
    s = RawSender()
    yield s
    s.close()


def row_of(lines, ip):
    for line in lines:
        if line.split()[:1] == [ip]:
            return line.split()
    raise AssertionError(f"{ip} not in\n" + "\n".join(lines))


def number(text: str) -> float:
    scale = {"k": 1e3, "M": 1e6}.get(text[-1], 1)
    return float(text.rstrip("kM")) * scale


def once_with_traffic(d, sender, interval="3"):
    """Run ``top --once``; send a known burst between its two dumps; its output lines."""
    before = mtime_ns(d.stats)
    proc = subprocess.Popen([NC_SNIFFER, "-c", d.conf, "top", "--once", "--interval", interval],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: mtime_ns(d.stats) > before, timeout=10)    # its first dump is out
        sent = {BUSY: [sender.send(BUSY, d.dport, b"x" * 200) for _ in range(40)],
                QUIET: [sender.send(QUIET, d.dport, b"y" * 10) for _ in range(5)]}
        out, err = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    assert proc.returncode == 0, err
    return out, sent


def check_numbers(out, sent):
    lines = out.splitlines()
    assert "\x1b" not in out and len(lines) <= 24 and all(len(line) <= 80 for line in lines)
    span = float(re.search(r"last ([\d.]+) s:", lines[1]).group(1))
    busy, quiet = row_of(lines, BUSY), row_of(lines, QUIET)
    assert [busy[0], quiet[0]] == [r.split()[0] for r in lines[4:6]]     # busiest first
    for row, lengths in ((busy, sent[BUSY]), (quiet, sent[QUIET])):
        assert number(row[1]) == pytest.approx(sum(lengths) / span, rel=0.02)
        assert number(row[2]) == pytest.approx(len(lengths) / span, rel=0.05)
        assert row[3:5] == ["0", "0"]           # no hourly rate in the first minutes


def test_once_over_udp_dump_requests_shows_the_busiest_peer(workdir, sender):
    with LiveDaemon(workdir, port=free_port()) as d:
        sender.send(BUSY, d.dport, b"before")       # BUSY's B/C grow, QUIET is new
        assert BUSY in d.dump()
        out, sent = once_with_traffic(d, sender)
    check_numbers(out, sent)
    assert out.splitlines()[0].startswith("nc.sniffer on lo")


def test_once_by_sigusr1_without_a_dump_port(workdir, sender):
    with LiveDaemon(workdir) as d:
        d.dump()                        # the stats file is there and settled before top starts
        out, sent = once_with_traffic(d, sender, interval="2")
    check_numbers(out, sent)


def test_not_running_is_one_line_and_exit_2(workdir):
    conf = write_config(workdir, bpf="host 127.0.0.1")
    r = run_cli("-c", conf, "top", "--once")
    assert r.returncode == 2 and r.stdout == ""
    pid_file = os.path.join(workdir, "nc.sniffer.pid")
    assert r.stderr == f"nc.sniffer: nc.sniffer not running (pid file '{pid_file}')\n"


def test_usage_error_is_exit_1(workdir):
    conf = write_config(workdir, bpf="host 127.0.0.1")
    r = run_cli("-c", conf, "top", "--interval", "0")
    assert r.returncode == 1 and r.stderr.startswith("top: --interval must be at least")


def as_nobody(argv):
    """``nc.sniffer ARGV`` in a forked child that became nobody: (exit code, stdout, stderr).

    In-process: the venv's interpreter lives where nobody may not go, so what the
    child needs of the standard library is loaded first."""
    importlib.import_module("ncsniffer.top")
    for codec in ("ascii", "utf-8", "latin-1", "idna"):
        codecs.lookup(codec)

    def call() -> str:
        out, err = io.StringIO(), io.StringIO()
        try:
            code = cli.main(argv, cli.Env(stdout=out, stderr=err, program="nc.sniffer"))
        except BaseException as exc:
            code, err = 99, io.StringIO(repr(exc))
        return json.dumps([code, out.getvalue(), err.getvalue()])
    return tuple(json.loads(test_report._in_child_as_nobody(call)))


public_dir = test_report.public_dir       # a directory nobody may enter


def test_signal_not_allowed_is_one_line_and_exit_2(public_dir):
    with LiveDaemon(public_dir) as d:
        code, out, err = as_nobody(["-c", d.conf, "top", "--once"])
        pid = d.pid
    assert (code, out) == (2, ""), err
    assert err == (f"nc.sniffer: not allowed to signal nc.sniffer (pid {pid}): run as root or "
                   "the daemon's user, or configure a dump 'port'\n")


def test_unreadable_stats_directory_is_one_line_and_exit_2(public_dir):
    hidden = os.path.join(public_dir, "stats")
    os.mkdir(hidden, 0o700)
    with LiveDaemon(public_dir, port=free_port(), sniffer=hidden):
        code, out, err = as_nobody(["-c", os.path.join(public_dir, "nc.sniffer.conf"),
                                    "top", "--once"])
    assert (code, out) == (2, ""), err
    assert err == f"nc.sniffer: stats directory missing or not readable: '{hidden}/'\n"


# --------------------------------------------------------------------------- tmux

class Tmux:
    """One tmux server of our own (its socket in the test's directory), killed afterwards."""

    def __init__(self, directory: str):
        self.socket = os.path.join(directory, "tmux.sock")

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top")

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=10)


def traffic(sender, dport, stop: threading.Event, seconds: float = 30) -> None:
    """About 50 packets a second from BUSY, 5 from QUIET, until stopped (at most ``seconds``)."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < deadline:
        for _ in range(10):
            sender.send(BUSY, dport, b"z" * 300)
        sender.send(QUIET, dport, b"q")
        stop.wait(0.2)


NO_CURSES = (f"{sys.executable} -c 'import sys; sys.modules[\"curses\"] = None; "
             f"from ncsniffer.cli import main; sys.exit(main())' --name nc.sniffer")


@pytest.fixture
def view(request, workdir, sender):
    """A daemon with traffic and a 80x24 tmux session running ``top --interval 1`` in it
    (the program: the fixture's param); yields (tmux, daemon, ``stty -a`` file after top)."""
    program = getattr(request, "param", NC_SNIFFER)
    tmux, stop = Tmux(workdir), threading.Event()
    state = os.path.join(workdir, "stty.after")
    with LiveDaemon(workdir, port=free_port()) as d:
        feeder = threading.Thread(target=traffic, args=(sender, d.dport, stop))
        feeder.start()
        try:
            command = (f"{program} -c {d.conf} top --interval 1; echo exit=$?; "
                       f"stty -a > {state}; sleep 60")
            tmux("new-session", "-d", "-s", "top", "-x", "80", "-y", "24", command)
            wait_for(lambda: re.search(rf"^{re.escape(BUSY)} .*\d", tmux.screen(), re.M)
                     and "last" in tmux.screen(), timeout=20)
            yield tmux, d, state
        finally:
            stop.set()
            feeder.join()
            tmux.kill()


def ended_cleanly(tmux, state) -> None:
    """top exited 0, its screen is gone and the terminal is in cooked mode again."""
    wait_for(lambda: "exit=" in tmux.screen() and os.path.exists(state), timeout=10)
    after = tmux.screen()
    assert "exit=0" in after
    assert BUSY not in after                        # the alternate screen is gone
    wait_for(lambda: os.path.getsize(state) > 0, timeout=5)
    with open(state) as fh:
        modes = fh.read().split()
    assert "icanon" in modes and "echo" in modes


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
@pytest.mark.parametrize("view", [NC_SNIFFER, NO_CURSES], ids=["curses", "ansi"], indirect=True)
def test_curses_view_in_an_80x24_tmux(view):
    tmux, _, state = view
    screen = tmux.screen().splitlines()
    assert len(screen) == 24 and all(len(line) <= 80 for line in screen)
    assert screen[0].startswith("nc.sniffer on lo")
    assert "sort: bytes/s" in screen[2] and screen[3].endswith("pkt/min")   # the last column
    assert screen[4].split()[0] == BUSY and any(QUIET in line for line in screen)
    tmux("send-keys", "-t", "top", "p")
    wait_for(lambda: "sort: packets/s" in tmux.screen(), timeout=10)
    tmux("send-keys", "-t", "top", "q")
    ended_cleanly(tmux, state)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_ctrl_c_restores_the_terminal(view):
    tmux, _, state = view
    tmux("send-keys", "-t", "top", "C-c")
    ended_cleanly(tmux, state)
