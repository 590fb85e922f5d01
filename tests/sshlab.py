"""Source hosts for the coalescer, for real: a network namespace per host, each with
a veth pair on a private /30, a real sshd letting in a generated client key, and an
ssh client configuration that names the hosts.

Shared by tests/test_coalesce_ssh.py and tests/test_fleet.py.  Addresses are
10.OCTET.x.y, only inside namespaces made here; names carry the test run's pid so
parallel runs rarely collide.  ``ssh_lab`` tears everything down even on failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import Iterator, Sequence

import pytest

from tests.conftest import stop_process

SSHD = "/usr/sbin/sshd"
DUMP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "scripts", "nc.sniffer.dump")
TAG = os.getpid() % 100000
NET = 4 * (os.getpid() % 60)          # third octet base: parallel runs rarely collide
SSHD_CONFIG = ("Port 22\nListenAddress {addr}\nHostKey {host_key}\nPidFile {home}/sshd.pid\n"
               "AuthorizedKeysFile {base}/authorized_keys\n"
               "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
               "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
               "UseDNS no\nLogLevel ERROR\n")


def need(condition: bool, why: str) -> None:
    if not condition:
        pytest.skip(why)


def run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          check=check)


def wait_port(address: str, port: int, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {address}:{port} after {seconds} s")


def remote_dump(stats: str, update: str, age: int) -> list[str]:
    """A source's remote command: nc.sniffer.dump from this checkout, by the venv's python
    (the namespaces share our file system, so the host runs what we test)."""
    return [sys.executable, DUMP, "--stats", stats, "--update", update, "--age", str(age),
            "--updto", "10"]


def need_tools() -> None:
    """Skip unless we are root and sshd, ssh, rsync, ip and ssh-keygen are there."""
    need(os.geteuid() == 0, "needs root (network namespaces, sshd)")
    for tool in (SSHD, shutil.which("ssh"), shutil.which("rsync"), shutil.which("ip"),
                 shutil.which("ssh-keygen")):
        need(bool(tool) and os.path.exists(tool), "needs openssh-server, openssh-client, "
             "rsync and iproute2 (tools/ensure-test-system installs them)")


class Lab:
    """The namespaces, their sshd processes and files; ``close`` undoes everything.

    ``prefix`` names the namespaces and links and ``octet`` picks the addresses,
    so that two labs never share either.
    """

    def __init__(self, base: str, prefix: str = "ncco", octet: int = 213):
        self.base = base
        self.prefix, self.octet = prefix, octet
        self.namespaces: list[str] = []
        self.links: list[str] = []
        self.procs: dict[str, subprocess.Popen] = {}
        self.addr: dict[str, str] = {}
        self.netns: dict[str, str] = {}
        self.made_run_sshd = False

    # ---- set-up
    def keys(self) -> None:
        self.client_key = os.path.join(self.base, "client_key")
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.client_key)
        self.host_key = os.path.join(self.base, "host_key")
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.host_key)
        shutil.copy(self.client_key + ".pub", os.path.join(self.base, "authorized_keys"))
        if not os.path.isdir("/run/sshd"):
            os.makedirs("/run/sshd", mode=0o755)
            self.made_run_sshd = True

    def host(self, index: int, name: str) -> None:
        """Namespace, veth pair and sshd for host ``name``; its home is BASE/NAME."""
        ns = f"{self.prefix}{TAG}-{index}"
        outside, inside = f"{self.prefix}{TAG}h{index}", f"{self.prefix}{TAG}n{index}"
        net = f"10.{self.octet}.{NET + index}"
        run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        self.netns[name] = ns
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        self.links.append(outside)
        run("ip", "link", "set", inside, "netns", ns)
        run("ip", "addr", "add", f"{net}.1/30", "dev", outside)
        run("ip", "link", "set", outside, "up")
        run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", inside)
        run("ip", "netns", "exec", ns, "ip", "link", "set", inside, "up")
        run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        self.addr[name] = f"{net}.2"
        home = self.home(name)
        os.makedirs(home)
        with open(os.path.join(home, "sshd_config"), "w") as fh:
            fh.write(SSHD_CONFIG.format(addr=self.addr[name], host_key=self.host_key,
                                        home=home, base=self.base))
        self.start_sshd(name)

    def home(self, name: str) -> str:
        return os.path.join(self.base, name)

    def start_sshd(self, name: str) -> None:
        home = self.home(name)
        log = open(os.path.join(home, "sshd.log"), "a")
        self.procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", self.netns[name], SSHD, "-D", "-e", "-f",
             f"{home}/sshd_config"], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        wait_port(self.addr[name], 22)

    def stop_sshd(self, name: str) -> None:
        stop_process(self.procs.pop(name))

    def ssh_config(self) -> str:
        path = os.path.join(self.base, "ssh_config")
        with open(path, "w") as fh:
            for name, addr in self.addr.items():
                fh.write(f"Host {name}\n  HostName {addr}\n")
            fh.write(f"Host *\n  User root\n  IdentityFile {self.client_key}\n"
                     "  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
                     "  UserKnownHostsFile /dev/null\n  GlobalKnownHostsFile /dev/null\n"
                     "  LogLevel ERROR\n")
        return path

    # ---- tear-down
    def close(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            try:
                proc.kill()
                proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            finally:
                if proc.stdout:
                    proc.stdout.close()
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        for link in self.links:        # normally gone with its namespace peer
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)
        if self.made_run_sshd:
            try:
                os.rmdir("/run/sshd")
            except OSError:
                pass


@contextlib.contextmanager
def ssh_lab(base: str, hosts: Sequence[str], prefix: str = "ncco",
            octet: int = 213) -> Iterator[Lab]:
    """A Lab with keys, one sshd host per name and ``lab.ssh`` (the ssh_config
    path); skips without root or the tools, and closes even on failure."""
    need_tools()
    os.makedirs(base, mode=0o755, exist_ok=True)
    os.chmod(base, 0o755)
    lab = Lab(base, prefix, octet)
    try:
        lab.keys()
        for index, name in enumerate(hosts, 1):
            lab.host(index, name)
        lab.ssh = lab.ssh_config()
        yield lab
    finally:
        lab.close()
