"""Opening a live capture: failures a user can act on, not a misleading bpf error."""

import os
import shutil
import subprocess
import tempfile

import pytest

from tests.conftest import NC_SNIFFER, write_config

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to set up the cases")]


@pytest.fixture
def opendir():
    """A work directory user nobody may write (pytest's tmp_path is root's only),
    sticky as the daemon demands of a directory every user may write."""
    path = tempfile.mkdtemp(prefix="ncs-capture-")
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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
