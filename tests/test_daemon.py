"""SPEC 6: the real daemon on lo — packets, signals, UDP dump requests, pid files."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import NC_SNIFFER, ROOT, plain_read, run_cli, other_users_dir, stop_process, write_config
from tests.daemonutil import LiveDaemon, free_port, mtime_ns, tmp_files, wait_for
from tests.netutil import RawSender, loopback_source

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root")]


@pytest.fixture
def sender():
    s = RawSender()
    yield s
    s.close()


def gone(pid: int) -> bool:
    """Exited: no /proc entry, or a zombie waiting for init to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def udp_request(message: bytes, port: int, source: str = "127.0.0.1", timeout: float = 2.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((source, 0))
    s.settimeout(timeout)
    try:
        s.sendto(message, ("127.0.0.1", port))
        return s.recvfrom(512)[0]
    except socket.timeout:
        return None
    finally:
        s.close()


def test_exact_bytes_packets_and_times(workdir, sender):
    with LiveDaemon(workdir) as d:
        t0 = int(time.time())
        sent = {}
        for i in range(30):
            src = f"127.0.0.{2 + i % 3}"
            sent.setdefault(src, []).append(sender.send(src, d.dport, b"p" * (i * 7)))
        sender.send("127.0.0.9", d.dport + 1, b"filtered out by the bpf port")
        got = d.dump()
        t1 = int(time.time())
    assert set(got) == set(sent)
    for src, lengths in sent.items():
        rec = got[src]
        assert (rec["B"], rec["C"], rec["R"], rec["W"], rec["T"], rec["N"]) == \
            (sum(lengths), len(lengths), 0, 0, 0, [])
        assert t0 - 1 <= rec["S"] <= rec["E"] <= t1


def test_outgoing_packets_count_under_the_peer(workdir, sender):
    with LiveDaemon(workdir) as d:
        n = sender.send("127.0.0.1", d.dport, b"out", dst="127.0.0.77")
        got = d.dump()
    assert got == {} or list(got) == ["127.0.0.77"]
    if got:
        assert got["127.0.0.77"]["B"] == n


def test_status_start_twice_stop(workdir):
    d = LiveDaemon(workdir)
    r = d.cli("status")
    assert r.returncode == 3 and r.stderr.strip() == "nc.sniffer not running"
    d.start()
    try:
        pid = d.pid
        r = d.cli("status")
        assert r.returncode == 0 and r.stderr.strip() == f"{pid} nc.sniffer is running"
        r = d.cli("start")
        assert r.returncode == 0 and r.stderr.strip() == "already running"
        assert d.pid == pid
    finally:
        r = d.stop()
    assert r.returncode == 0
    assert not os.path.exists(d.pidfile)
    assert gone(pid)                                   # stop waited for the exit
    assert os.path.exists(d.stats) and tmp_files(d.stats) == []
    r = d.cli("stop")
    assert r.stderr.strip() == "nc.sniffer: not running"
    r = d.cli("dump")
    assert r.stderr.strip() == "nc.sniffer not running"


def test_restart_gives_a_new_process(workdir):
    d = LiveDaemon(workdir).start()
    try:
        old = d.pid
        assert d.cli("restart").returncode == 0
        assert d.pid != old and gone(old)
    finally:
        d.stop()


def test_udp_dump_listener(workdir, sender):
    port = free_port()
    with LiveDaemon(workdir, port=port) as d:
        sender.send("127.0.0.2", d.dport, b"x")
        time.sleep(0.3)
        before = mtime_ns(d.stats)
        t = int(time.time())
        reply = udp_request(b"dump please", port)
        assert reply is not None and reply.startswith(b"OK ")
        assert t <= int(reply.split()[1]) <= t + 2
        wait_for(lambda: mtime_ns(d.stats) > before)
        assert "127.0.0.2" in plain_read(d.stats)[1]
        assert udp_request(b"hello", port) == b"??"
        # a sender not in 'allowed' gets nothing, and no dump happens
        before = mtime_ns(d.stats)
        assert udp_request(b"dump", port, source="127.0.0.9", timeout=1.0) is None
        time.sleep(0.5)
        assert mtime_ns(d.stats) == before


def test_request_flood_does_not_stop_counting(workdir, sender):
    port = free_port()
    with LiveDaemon(workdir, port=port) as d:
        flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flood.bind(("127.0.0.1", 0))
        flood.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 20
        for i in range(10000):
            if time.monotonic() > deadline:
                break
            try:
                flood.sendto(b"dump" if i % 2 else b"junk", ("127.0.0.1", port))
            except BlockingIOError:
                time.sleep(0.001)
            if i % 100 == 0:
                sender.send("127.0.0.5", d.dport, b"during the flood")
                sent += 1
        flood.close()
        got = d.dump()
    assert got["127.0.0.5"]["C"] == sent


def test_sighup_dumps_then_resets(workdir, sender):
    with LiveDaemon(workdir) as d:
        sender.send("127.0.0.2", d.dport, b"before")
        time.sleep(0.3)
        before = mtime_ns(d.stats)
        os.kill(d.pid, signal.SIGHUP)
        wait_for(lambda: mtime_ns(d.stats) > before)
        assert list(plain_read(d.stats)[1]) == ["127.0.0.2"]
        sender.send("127.0.0.3", d.dport, b"after")
        got = d.dump()
    assert list(got) == ["127.0.0.3"]


def test_sigterm_final_dump_and_pid_file_gone(workdir, sender):
    d = LiveDaemon(workdir).start()
    pid = d.pid
    sender.send("127.0.0.4", d.dport, b"last words")
    time.sleep(0.3)
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: gone(pid))
    assert not os.path.exists(d.pidfile)
    assert "127.0.0.4" in plain_read(d.stats)[1]
    assert tmp_files(d.stats) == []


def test_stop_kills_a_daemon_that_ignores_term(workdir):
    """A process calling itself nc.sniffer that ignores SIGTERM: SIGKILL after 15 s."""
    fake = os.path.join(workdir, "nc.sniffer")
    with open(fake, "w") as fh:
        fh.write("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                 "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, fake])
    try:
        time.sleep(0.3)
        conf = write_config(workdir, bpf="host 127.0.0.1")
        with open(os.path.join(workdir, "nc.sniffer.pid"), "w") as fh:
            fh.write(f"{proc.pid}\n")
        began = time.monotonic()
        r = run_cli("-c", conf, "stop")
        took = time.monotonic() - began
        assert r.returncode == 0
        assert proc.wait(timeout=5) == -signal.SIGKILL
        assert 14 <= took <= 25
    finally:
        proc.kill()
        proc.wait()


def test_stale_pid_files(workdir, sender):
    d = LiveDaemon(workdir)
    dead = subprocess.Popen(["true"])
    dead.wait()
    for stale in (dead.pid, 1):                # a dead pid; a live stranger (init)
        with open(d.pidfile, "w") as fh:
            fh.write(f"{stale}\n")
        assert d.cli("status").returncode == 3
        assert d.cli("stop").stderr.strip() == "nc.sniffer: not running"
        assert os.path.exists("/proc/1")
        d.start()
        assert d.pid != stale
        sender.send("127.0.0.2", d.dport, b"x")
        assert "127.0.0.2" in d.dump()
        d.stop()


def fill(d: LiveDaemon, sender, peers: int) -> dict:
    """One packet from each of ``peers`` loopback sources; the daemon's records then."""
    for i in range(peers):
        sender.send(loopback_source(i), d.dport)
    return d.dump()


def test_kill_9_during_a_dump_keeps_previous_file(workdir, sender):
    with LiveDaemon(workdir) as d:
        got = fill(d, sender, 60000)
        assert len(got) >= 55000
        good = open(d.stats).read()
        os.kill(d.pid, signal.SIGUSR1)
        # the dump child writes FILE.PID.tmp; kill it (and anything dumping) mid-way
        wait_for(lambda: tmp_files(d.stats), timeout=5, step=0.002)
        children = subprocess.run(["pgrep", "-P", str(d.pid)], capture_output=True, text=True).stdout.split()
        for child in children:
            os.kill(int(child), signal.SIGKILL)
        time.sleep(0.3)
        assert open(d.stats).read() == good
        assert len(plain_read(d.stats)[1]) == len(got)


def test_capture_goes_on_during_a_big_dump(workdir, sender):
    with LiveDaemon(workdir) as d:
        got = fill(d, sender, 100000)
        assert len(got) >= 99000
        before = mtime_ns(d.stats)
        os.kill(d.pid, signal.SIGUSR1)
        sent = 0
        deadline = time.monotonic() + 10
        while mtime_ns(d.stats) == before and time.monotonic() < deadline:
            sender.send("127.0.0.3", d.dport, b"during dump")
            sent += 1
            time.sleep(0.0005)
        for _ in range(200):
            sender.send("127.0.0.3", d.dport, b"during dump")
            sent += 1
        got = d.dump()
        assert got["127.0.0.3"]["C"] == sent
    log = open(os.path.join(workdir, "nc.sniffer.log")).read() if os.path.exists(
        os.path.join(workdir, "nc.sniffer.log")) else ""
    assert "dropped 0," in log.splitlines()[-1] if log else True


def test_foreground_dumps_to_stderr(workdir, sender):
    dport = free_port()
    conf = write_config(workdir, bpf=f"host 127.0.0.1 and udp port {dport}")
    proc = subprocess.Popen([NC_SNIFFER, "-c", conf, "-d", "start"], stderr=subprocess.PIPE,
                            text=True)
    try:
        time.sleep(1.0)
        sender.send("127.0.0.6", dport, b"fg")
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=10)[1]
    finally:
        proc.kill()
    assert '"127.0.0.6": {"B": ' in err and "# device:\tlo\tnon-promiscuous" in err
    assert not os.path.exists(os.path.join(workdir, "nc.sniffer.stats"))


ORIGINAL_LAYOUT = """#!/usr/bin/perl
#
# nc.sniffer.pl
#
use strict;
#use diagnostics;
use Net::Connection::Sniffer;

my $config = {

# specify the directory for the pid file for this daemon.
# [required]
#
	piddir	=>  '{DIR}',

# specify the directory for the statistics file for this
# daemon.
# [required]
#
	sniffer	=>  '{DIR}',

# BPF filter statement. See examples below.
# [required]
#
	bpf	=> 'host 127.0.0.1 and udp port {DPORT}',

#	snaplen	=> 38,
#	match	=> 'somestring',
#	nomatch	=> 'some.other.string',
#	payload	=> 44,

	port	=> {PORT},
	host	=> 'INADDR_LOOPBACK',
	allowed	=> ['127.0.0.1',],
};

gather($config);
"""


def test_starts_from_an_unmodified_perl_config(workdir, sender):
    dport, port = free_port(), free_port()
    path = os.path.join(workdir, "nc.sniffer.pl")
    with open(path, "w") as fh:
        fh.write(ORIGINAL_LAYOUT.replace("{DIR}", workdir).replace("{DPORT}", str(dport))
                 .replace("{PORT}", str(port)))
    r = run_cli("-c", path, "start")
    assert r.returncode == 0, r.stderr
    try:
        sender.send("127.0.0.2", dport, b"perl")
        time.sleep(0.3)
        assert udp_request(b"dump", port).startswith(b"OK ")
        stats = os.path.join(workdir, "nc.sniffer.stats")
        wait_for(lambda: os.path.exists(stats))
        wait_for(lambda: "127.0.0.2" in plain_read(stats)[1])
    finally:
        run_cli("-c", path, "stop")


def test_gather_api_from_a_users_script(workdir, sender):
    dport = free_port()
    script = os.path.join(workdir, "nc.sniffer7.py")
    with open(os.path.join(ROOT, "samples", "nc.sniffer.py.sample")) as fh:
        text = fh.read()
    text = text.replace("'/var/run/nc.sniffer'", repr(workdir))
    text = text.replace("'host myhost.example.com and tcp port 80'", repr(f"host 127.0.0.1 and udp port {dport}"))
    with open(script, "w") as fh:
        fh.write(text)
    r = subprocess.run([sys.executable, script, "start"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    try:
        assert os.path.exists(os.path.join(workdir, "nc.sniffer7.pid"))
        sender.send("127.0.0.2", dport, b"api")
        time.sleep(0.3)
        assert subprocess.run([sys.executable, script, "dump"], timeout=60).returncode == 0
        stats = os.path.join(workdir, "nc.sniffer7.stats")
        wait_for(lambda: os.path.exists(stats) and "127.0.0.2" in plain_read(stats)[1])
    finally:
        subprocess.run([sys.executable, script, "stop"], timeout=60)


def test_drop_privileges(sender):
    import shutil
    import tempfile
    workdir = tempfile.mkdtemp(prefix="ncs-user-")   # pytest's own tmp root is 0700
    try:
        os.chmod(workdir, 0o1777)         # sticky: a world-writable directory is refused (11.14)
        with LiveDaemon(workdir, user="nobody", group="nogroup") as d:
            status = open(f"/proc/{d.pid}/status").read()
            assert "\nUid:\t65534\t65534\t65534\t65534\n" in status
            sender.send("127.0.0.2", d.dport, b"x")
            assert "127.0.0.2" in d.dump()
        assert not os.path.exists(os.path.join(workdir, "nc.sniffer.pid"))
    finally:
        shutil.rmtree(workdir)


def test_foreground_daemon_holds_its_pid_file(workdir):
    """-d (as systemd runs it): status sees it, a second start refuses (issue 11.8)."""
    conf = write_config(workdir, bpf=f"host 127.0.0.1 and udp port {free_port()}")
    pidf = os.path.join(workdir, "nc.sniffer.pid")
    proc = subprocess.Popen([NC_SNIFFER, "-c", conf, "-d", "start"], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.exists(pidf) or proc.poll() is not None)
        assert int(open(pidf).readline()) == proc.pid
        r = run_cli("-c", conf, "status")
        assert r.returncode == 0 and r.stderr.strip() == f"{proc.pid} nc.sniffer is running"
        r = run_cli("-c", conf, "-d", "start", timeout=30)
        assert r.returncode == 0 and r.stderr.strip() == "already running"
        assert run_cli("-c", conf, "stop").returncode == 0
        assert proc.wait(timeout=10) == 0
        assert not os.path.exists(pidf)
    finally:
        stop_process(proc)


def test_relative_directories_survive_daemonizing(workdir, sender):
    """A relative piddir/sniffer (as in samples/demo.conf) is the start directory's (11.9)."""
    os.mkdir(os.path.join(workdir, "reldir"))
    d = LiveDaemon(workdir, piddir="reldir", sniffer="reldir")
    d.pidfile = os.path.join(workdir, "reldir", "nc.sniffer.pid")
    d.stats = os.path.join(workdir, "reldir", "nc.sniffer.stats")
    r = d.cli("start", cwd=workdir)
    assert r.returncode == 0, r.stderr
    try:
        assert d.cli("status", cwd=workdir).returncode == 0
        sender.send("127.0.0.2", d.dport, b"rel")
        time.sleep(0.3)
        assert d.cli("dump", cwd=workdir).returncode == 0
        wait_for(lambda: os.path.exists(d.stats) and "127.0.0.2" in plain_read(d.stats)[1])
    finally:
        d.cli("stop", cwd=workdir)


@pytest.fixture
def shared_dir():
    """A directory the daemon user may write, sticky as the README says (like /tmp)."""
    with other_users_dir("ncs-shared-", 0o1777) as path:
        yield path


def own_file(directory: str) -> tuple[str, bytes]:
    """A file of the test's own, outside the shared directory, root's and mode 0644."""
    path = os.path.join(os.path.dirname(directory), os.path.basename(directory) + ".mine")
    with open(path, "wb") as fh:
        fh.write(b"the test's own file\n")
    return path, b"the test's own file\n"


def test_planted_log_symlink_is_not_appended_to(shared_dir):
    """No /dev/log: the fallback log in piddir must not follow a symlink (11.14)."""
    from ncsniffer import daemon
    from ncsniffer.errors import NcSnifferError
    mine, text = own_file(shared_dir)
    try:
        log = os.path.join(shared_dir, "nc.sniffer.log")
        os.symlink(mine, log)
        with pytest.raises(NcSnifferError, match="is a symbolic link"):
            daemon.log_file_handler(log)
        assert open(mine, "rb").read() == text
    finally:
        os.unlink(mine)


def test_planted_stats_symlink_is_not_chowned(shared_dir):
    """drop_privileges hands the stats file to 'user' by descriptor, not by name (11.14)."""
    mine, text = own_file(shared_dir)
    try:
        os.symlink(mine, os.path.join(shared_dir, "nc.sniffer.stats"))
        d = LiveDaemon(shared_dir, user="nobody", group="nogroup")
        r = d.cli("start")
        if r.returncode == 0:
            d.stop()
        st = os.stat(mine)
        assert (st.st_uid, st.st_gid) == (0, 0) and open(mine, "rb").read() == text
        assert r.returncode == 2 and "is a symbolic link; remove it" in r.stderr
        assert not os.path.exists(d.pidfile)
    finally:
        os.unlink(mine)


def test_world_writable_directories_are_refused(shared_dir):
    os.chmod(shared_dir, 0o777)
    d = LiveDaemon(shared_dir)
    r = d.cli("start")
    if r.returncode == 0:
        d.stop()
    assert r.returncode == 2
    assert r.stderr.strip() == (f"nc.sniffer: pid directory '{shared_dir}' is writable by "
                                f"every user; chmod o-w (or make it sticky, chmod +t)")


@pytest.mark.slow
def test_kill_9_and_immediate_restart_keep_the_stats_file_whole(workdir, sender):
    """systemd's restart, the watchdog's cron: the orphaned dump child must not write
    on (it dies with its parent) and its temporary file is cleared (issue 11.15)."""
    d = LiveDaemon(workdir).start()
    children = []
    try:
        assert len(fill(d, sender, 100000)) >= 95000
        os.kill(d.pid, signal.SIGUSR1)
        wait_for(lambda: tmp_files(d.stats), timeout=5, step=0.002)
        children = subprocess.run(["pgrep", "-P", str(d.pid)], capture_output=True,
                                  text=True).stdout.split()
        assert children, "the dump child finished before the test could catch it"
        for child in children:
            os.kill(int(child), signal.SIGSTOP)      # a slow disk: the child is mid-write
        old = d.pid
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: gone(old))
        d.start()                                    # at once
        orphans = [int(c) for c in children if not gone(int(c))]
        assert tmp_files(d.stats) == []              # the dead writer's leftover is cleared
        sender.send("127.0.0.2", d.dport, b"after the restart")
        got = d.dump()
        for child in orphans:                        # (the old code's orphan writes on)
            os.kill(child, signal.SIGCONT)
            wait_for(lambda: gone(child))
        assert orphans == []
        assert plain_read(d.stats)[1] == got == {"127.0.0.2": got["127.0.0.2"]}
    finally:
        for child in children:
            if not gone(int(child)):
                os.kill(int(child), signal.SIGKILL)
        d.stop()


class _NoCapture:
    """Enough of a capture for the dump machinery (no packets)."""

    linktype = 1

    def stats(self):
        return (0, 0, 0)

    def read_batch(self, count):
        return None


def hang_on_fifo(path: str):
    """A dump that never finishes, as on a hung disk: opening a FIFO nobody reads."""
    def write_dump(current=None):
        with open(path, "w"):
            pass
    return write_dump


class Alarm:
    """Fail instead of hanging forever if the event loop blocks."""

    def __init__(self, seconds: int):
        self.seconds = seconds

    def _raise(self, signum, frame):
        raise TimeoutError(f"blocked for {self.seconds} s")

    def __enter__(self):
        self.previous = signal.signal(signal.SIGALRM, self._raise)
        signal.alarm(self.seconds)

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.previous)


@pytest.fixture
def loop_daemon(workdir, monkeypatch, caplog):
    """An in-process Daemon (no capture) whose dump child really forks (issue 11.19a)."""
    from ncsniffer import config, daemon
    from ncsniffer.clock import WallClock
    from ncsniffer.sniffer import Sniffer
    monkeypatch.setattr(daemon, "DUMP_MIN_SECONDS", 0.5, raising=False)
    settings = config.validate({"piddir": workdir, "sniffer": workdir, "bpf": "host 127.0.0.1",
                                "resolve": False}, "nc.sniffer", offline=True)
    d = daemon.Daemon(settings, _NoCapture(), None, Sniffer(settings, 1, WallClock(), "lo"),
                      None)
    caplog.set_level("INFO", logger="ncsniffer")
    yield d
    if d.dump_child is not None and not gone(d.dump_child):
        os.kill(d.dump_child, signal.SIGKILL)
        os.waitpid(d.dump_child, 0)


def test_a_hung_dump_is_killed_and_never_blocks_the_loop(loop_daemon, workdir, caplog):
    d = loop_daemon
    fifo = os.path.join(workdir, "hung")
    os.mkfifo(fifo)
    d.write_dump = hang_on_fifo(fifo)
    d.dump_wanted = True
    d._start_dump_if_wanted()
    child = d.dump_child
    assert child is not None
    d.flags.add(signal.SIGHUP)
    began = time.monotonic()
    with Alarm(3):
        d._handle_flags()                        # a SIGHUP while the dump hangs
    assert time.monotonic() - began < 0.5
    d.write_dump = lambda current=None: None     # the next dump succeeds
    with Alarm(5):                               # the loop's turns, until the HUP dump is done
        wait_for(lambda: d._tick(int(time.time())) or "SIGHUP: stats" in caplog.text,
                 timeout=4, step=0.2)
    assert gone(child)
    text = caplog.text
    assert "dump process killed after 0.5 s (it had not finished)" in text
    assert "SIGHUP: stats written, counters reset" in text


@pytest.mark.slow
def test_sighup_on_a_full_disk_says_the_stats_were_not_written(workdir, sender):
    if os.path.exists("/dev/log"):
        pytest.skip("the daemon logs to syslog here; the test reads PIDDIR/NAME.log")
    small = os.path.join(workdir, "small")
    os.mkdir(small)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", small]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        d = LiveDaemon(workdir, sniffer=small)
        d.stats = os.path.join(small, "nc.sniffer.stats")
        with d:
            for i in range(3000):                # ~300 kB of records: more than 64k
                sender.send(loopback_source(i), d.dport)
            time.sleep(0.5)
            os.kill(d.pid, signal.SIGHUP)
            logfile = os.path.join(workdir, "nc.sniffer.log")
            line = wait_for(lambda: [x for x in open(logfile).read().splitlines()
                                     if "SIGHUP" in x])[-1]
        assert line.endswith("SIGHUP: stats not written (the dump failed, exit status 1), "
                             "counters reset"), line
        assert "No space left on device" in open(logfile).read()
        assert tmp_files(d.stats) == []
    finally:
        subprocess.run(["umount", small])


def test_second_daemon_on_the_same_dump_port_refuses_to_start(tmp_path):
    """Issue 11.7: SO_REUSEADDR let a second daemon bind the port and take the
    first one's dump requests; it must refuse to start."""
    port = free_port()
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    with LiveDaemon(str(one), port=port):
        second = LiveDaemon(str(two), port=port)
        try:
            result = second.cli("start")
            assert result.returncode == 2, result.stderr
            assert result.stderr == f"nc.sniffer: dump port 127.0.0.1:{port} already in use\n"
            assert not os.path.exists(second.pidfile)
        finally:
            second.stop()
        assert udp_request(b"dump", port).startswith(b"OK ")


def dump_right_after_traffic(d: LiveDaemon, sender, request, rounds: int = 5) -> list[int]:
    """Per round: packets from new sources, then ``request()`` within 10 ms of the
    last one; the number of those sources missing from the dump it causes."""
    missing = []
    for r in range(rounds):
        sources = [loopback_source(r * 100 + i) for i in range(40)]
        before = mtime_ns(d.stats)
        for src in sources:
            sender.send(src, d.dport, b"late")
        last = time.monotonic()
        request()
        assert time.monotonic() - last < 0.010, "the request left more than 10 ms late"
        wait_for(lambda: mtime_ns(d.stats) > before)
        got = plain_read(d.stats)[1]
        missing.append(sum(src not in got for src in sources))
    return missing


def test_udp_dump_includes_the_last_packets(workdir, sender):
    """Issue 11.10: packets still in the kernel's ring block (TPACKET_V3 hands a
    block over after up to 100 ms) were missing from a dump requested at once."""
    port = free_port()
    asker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with LiveDaemon(workdir, port=port) as d:
            udp_request(b"dump", port)         # the listener is up
            missing = dump_right_after_traffic(
                d, sender, lambda: asker.sendto(b"dump", ("127.0.0.1", port)))
    finally:
        asker.close()
    assert missing == [0] * len(missing)


def test_signal_dump_includes_the_last_packets(workdir, sender):
    with LiveDaemon(workdir) as d:
        pid = d.pid
        missing = dump_right_after_traffic(d, sender, lambda: os.kill(pid, signal.SIGUSR1))
    assert missing == [0] * len(missing)


def test_allowed_name_with_several_addresses(workdir):
    """Issue 11.19b: every address of a name in 'allowed' may ask for a dump."""
    from tests.conftest import with_hosts_file
    name = f"ncs-asker-{os.getpid()}"
    prefix = with_hosts_file(workdir, {name: ["127.0.0.5", "127.0.0.6"]})
    port = free_port()
    d = LiveDaemon(workdir, port=port, allowed=[name])
    try:
        result = subprocess.run([*prefix, NC_SNIFFER, "-c", d.conf, "start"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert udp_request(b"dump", port, source="127.0.0.5").startswith(b"OK ")
        assert udp_request(b"dump", port, source="127.0.0.6").startswith(b"OK ")
        assert udp_request(b"dump", port, source="127.0.0.7", timeout=1.0) is None
    finally:
        d.stop()


def test_max_hosts_with_names_on_survives_evictions(workdir, sender):
    """Issue 11.13: the live daemon died (IndexError) once evictions started with
    name lookups on; queries go to a dead loopback port here."""
    port = free_port()
    with LiveDaemon(workdir, port=port, max_hosts=2000, resolve=True,
                    nameserver=f"127.0.0.1:{free_port()}") as d:
        for i in range(3000):
            sender.send(loopback_source(i), d.dport, b"peer")
        got = d.dump()
        header = plain_read(d.stats)[0]
        assert d.cli("status").returncode == 0
    assert len(got) == 2000 and "# evicted:\t1000" in header
    assert all(loopback_source(i) in got for i in range(1000, 3000))
