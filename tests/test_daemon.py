"""SPEC 6: the real daemon on lo — packets, signals, UDP dump requests, pid files."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import NC_SNIFFER, ROOT, plain_read, run_cli, write_config
from tests.daemonutil import LiveDaemon, free_port, mtime_ns, wait_for
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
    assert os.path.exists(d.stats) and not os.path.exists(d.stats + ".tmp")
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
    assert not os.path.exists(d.stats + ".tmp")


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
        # the dump child writes FILE.tmp; kill it (and anything dumping) mid-way
        wait_for(lambda: os.path.exists(d.stats + ".tmp"), timeout=5, step=0.002)
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
        os.chmod(workdir, 0o777)
        with LiveDaemon(workdir, user="nobody", group="nogroup") as d:
            status = open(f"/proc/{d.pid}/status").read()
            assert "\nUid:\t65534\t65534\t65534\t65534\n" in status
            sender.send("127.0.0.2", d.dport, b"x")
            assert "127.0.0.2" in d.dump()
        assert not os.path.exists(os.path.join(workdir, "nc.sniffer.pid"))
    finally:
        shutil.rmtree(workdir)


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
