"""systemd's notify protocol: the Notifier, and a real foreground daemon talking to a socket
bound the way systemd binds NOTIFY_SOCKET."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from ncsniffer.notify import Notifier
from tests.conftest import NC_SNIFFER, plain_read, stop_process, write_config
from tests.daemonutil import free_port

WATCHDOG_USEC = 3_000_000


@pytest.fixture
def notify_socket(tmp_path):
    """An AF_UNIX datagram socket like systemd's; yields (path, socket)."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield path, sock
    finally:
        sock.close()


def receive(sock: socket.socket, until: str, timeout: float = 15.0) -> list[str]:
    """Datagrams received until one holds the line ``until``."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            got.append(sock.recv(4096).decode())
        except socket.timeout:
            break
        if until in got[-1].splitlines():
            return got
    raise AssertionError(f"no {until} within {timeout}s; got {got}")


def test_silent_without_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and not n.watchdog
    n.ready("x"), n.ping(), n.stopping()          # nothing to send to, no error


def notifier(monkeypatch, **environ: str) -> Notifier:
    for key in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    return Notifier()


def test_watchdog_only_when_asked(notify_socket, monkeypatch):
    path, sock = notify_socket
    sock.settimeout(5)
    assert notifier(monkeypatch, NOTIFY_SOCKET=path).enabled
    assert not notifier(monkeypatch, NOTIFY_SOCKET=path).watchdog
    assert not notifier(monkeypatch, NOTIFY_SOCKET=path, WATCHDOG_USEC="0").watchdog
    assert not notifier(monkeypatch, NOTIFY_SOCKET=path, WATCHDOG_USEC="9",
                        WATCHDOG_PID=str(os.getpid() + 1)).watchdog
    n = notifier(monkeypatch, NOTIFY_SOCKET=path, WATCHDOG_USEC="9", WATCHDOG_PID=str(os.getpid()))
    n.ping()
    n.ready("up")
    assert sock.recv(100) == b"WATCHDOG=1"
    assert sock.recv(100).decode().splitlines()[:2] == ["READY=1", "STATUS=up"]


def run_notified_daemon(program: str, workdir: str, sock_path: str, sock: socket.socket) -> dict:
    """Start ``program --foreground start`` as systemd would; collect what it tells, stop it.

    Returns the datagrams (in order), the stats file's records and the daemon's stderr.
    """
    conf = write_config(workdir, bpf=f"host 127.0.0.1 and udp port {free_port()}")
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC=str(WATCHDOG_USEC))
    proc = subprocess.Popen([program, "-c", conf, "--foreground", "start"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        ready = receive(sock, "READY=1")
        pid_file = os.path.join(workdir, "nc.sniffer.pid")
        pid_then = int(open(pid_file).readline())
        pings = receive(sock, "WATCHDOG=1", timeout=5)
        pings += receive(sock, "WATCHDOG=1", timeout=5)
        proc.send_signal(signal.SIGTERM)
        stopping = receive(sock, "STOPPING=1")
        err = proc.communicate(timeout=15)[1]
        stats = os.path.join(workdir, "nc.sniffer.stats")
        return {"ready": ready, "pings": pings, "stopping": stopping, "pid": proc.pid,
                "pid_then": pid_then, "code": proc.returncode, "stderr": err,
                "stats": plain_read(stats)[0] if os.path.exists(stats) else None,
                "pid_file_left": os.path.exists(pid_file)}
    finally:
        stop_process(proc)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root")
def test_foreground_daemon_ready_watchdog_stopping(workdir, notify_socket):
    """--foreground: READY=1 once the capture is open and the pid file written, WATCHDOG=1
    every tick, STOPPING=1 at SIGTERM; the stats file is written, the log goes to stderr."""
    got = run_notified_daemon(NC_SNIFFER, workdir, *notify_socket)
    ready = got["ready"][-1].splitlines()
    assert "READY=1" in ready and f"MAINPID={got['pid']}" in ready
    assert "STATUS=capturing on lo" in ready
    assert got["pid_then"] == got["pid"]          # the pid file was there at READY=1
    assert got["pings"].count("WATCHDOG=1") >= 2
    assert got["code"] == 0 and not got["pid_file_left"]
    assert got["stats"] is not None and "# device:\tlo\tnon-promiscuous" in got["stats"]
    assert "nc.sniffer: started on lo" in got["stderr"]


@pytest.mark.integration
def test_foreground_option_in_usage():
    r = subprocess.run([NC_SNIFFER, "--help"], capture_output=True, text=True)
    assert "-f, --foreground" in r.stdout
