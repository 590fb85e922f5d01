"""Opening a live capture: failures a user can act on, not a misleading bpf error."""

import os
import subprocess

import pytest

from tests.conftest import NC_SNIFFER, other_users_dir, write_config

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to set up the cases")]


@pytest.fixture
def opendir():
    """A work directory user nobody may write (pytest's tmp_path is root's only),
    sticky as the daemon demands of a directory every user may write."""
    with other_users_dir("ncs-capture-", 0o1777) as path:
        yield path


@pytest.fixture
def netns():
    """A network namespace of our own holding a veth pair that is down."""
    name = f"ncscap{os.getpid()}"
    dev = f"vd{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "add", dev, "type", "veth",
                        "peer", "name", dev + "p"], check=True)
        subprocess.run(["ip", "netns", "exec", name, "ip", "addr", "add", "10.250.0.1/24",
                        "dev", dev], check=True)
        yield name, dev
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def start(conf: str, prefix=()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, NC_SNIFFER, "-c", conf, "start"], capture_output=True,
                          text=True, timeout=60)


def test_not_root_says_so(opendir):
    conf = write_config(opendir, bpf="host 127.0.0.1")
    os.chmod(conf, 0o644)
    result = start(conf, ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"])
    assert result.returncode == 2, result.stderr
    assert result.stderr == "nc.sniffer: cannot capture on 'lo': needs root or CAP_NET_RAW\n"


def test_no_such_device(opendir):
    conf = write_config(opendir, bpf="host 127.0.0.1", interface="nosuch0")
    result = start(conf)
    assert result.returncode == 2, result.stderr
    assert result.stderr == "nc.sniffer: no such device 'nosuch0'\n"


def test_interface_down(opendir, netns):
    name, dev = netns
    conf = write_config(opendir, bpf="host 10.250.0.1")
    result = start(conf, ["ip", "netns", "exec", name])
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"nc.sniffer: interface '{dev}' is down\n"
    assert not os.path.exists(os.path.join(opendir, "nc.sniffer.pid"))


def test_capture_length_for_connection_tracking():
    """Issue 13 (SPEC 10.1): tracking captures link, IP options / IPv6 extension
    headers and 14 TCP bytes whatever the snaplen; without it, as before."""
    from ncsniffer import capture
    assert capture.capture_length(38) == 64 and capture.capture_length(1500) == 1500
    assert capture.capture_length(38, connections=True) == 22 + 40 + 64 + 14
    assert capture.capture_length(1500, connections=True) == 1500


@pytest.mark.parametrize("connections,caplen", [(False, 64), (True, 140)])
def test_live_batch_has_microseconds_and_the_capture_length(connections, caplen):
    """Issue 13: a live batch carries each packet's microseconds (hdr.getts()[1])."""
    import socket
    import time

    from ncsniffer import capture
    from tests.daemonutil import free_port
    port = free_port()
    cap = capture.open_live("lo", 38, False, f"udp and dst port {port}", connections)
    try:
        before = time.time()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(3):
                s.sendto(bytes(300), ("127.0.0.1", port))
        got, deadline = None, time.monotonic() + 5
        while got is None and time.monotonic() < deadline:
            got = cap.read_batch(10)
            time.sleep(0.05)
        after = time.time()
    finally:
        cap.close()
    assert got is not None and set(got.caplen.tolist()) == {caplen}
    times = got.sec + got.micros() / 1e6
    assert before - 0.01 <= times.min() and times.max() <= after + 0.01
    assert set(got.wirelen.tolist()) == {14 + 20 + 8 + 300}
