"""Coalescing for real: three network namespaces, a real sshd in each, real ssh and rsync.

Each namespace ("host", made by tests/sshlab.py) gets a veth pair with a private
/30 (10.213.x.y, only inside the namespaces made here), an sshd with a generated
host key that lets in our generated client key, and a stats file: alpha's in our
Python format (its "daemon" is a UDP stand-in that rewrites the file on 'dump'),
beta's in the Perl daemon's exact layout, gamma's in JSON.  The coalescer CGI runs as a
real process and its report is compared with the expected file exactly.
Everything is torn down in ``finally`` blocks, even when a test fails.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time

import pytest

from ncsniffer import dumpfile
from tests.sshlab import TAG, Lab, remote_dump, ssh_lab

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data", "coalesce")
PYTHON = sys.executable
CGI = os.path.join(ROOT, "scripts", "nc.sniffer.coalesce.cgi")
HOSTS = ("alpha", "beta", "gamma")

RESPONDER = r"""
import os, socket, sys, time
port, stats, source, log = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", port))
print("ready", flush=True)
deadline = time.monotonic() + 900          # never outlive a test run by much
s.settimeout(1)
while time.monotonic() < deadline:
    try:
        data, peer = s.recvfrom(256)
    except socket.timeout:
        continue
    with open(source) as src, open(stats + ".tmp", "w") as dst:
        dst.write(src.read())
    os.replace(stats + ".tmp", stats)
    with open(log, "a") as fh:
        fh.write("dump\n")
    s.sendto(b"OK %d" % int(time.time()), peer)
"""


def responder(lab: Lab, port: int, stats: str, log: str) -> None:
    """alpha's "daemon": rewrites its stats file on a dump request, logging each one."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.netns["alpha"], PYTHON, "-c", RESPONDER, str(port), stats,
         os.path.join(DATA, "alpha.stats"), log], stdout=subprocess.PIPE, text=True)
    lab.procs["responder"] = proc
    assert proc.stdout.readline().strip() == "ready"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with ssh_lab(str(tmp_path_factory.mktemp("coalesce-lab")), HOSTS) as lab:
        for name in HOSTS:
            shutil.copy(os.path.join(DATA, f"{name}.stats"),
                        os.path.join(lab.home(name), "nc.sniffer.stats"))
        lab.port = 20000 + TAG % 20000
        lab.dump_log = os.path.join(lab.home("alpha"), "dumps.log")
        open(lab.dump_log, "w").close()
        responder(lab, lab.port, os.path.join(lab.home("alpha"), "nc.sniffer.stats"),
                  lab.dump_log)
        yield lab


def coalesce_conf(lab: Lab, cache_dir: str, **extra) -> str:
    os.makedirs(cache_dir, exist_ok=True)
    src = {}
    for name in HOSTS:
        stats = os.path.join(lab.home(name), "nc.sniffer.stats")
        src[name] = {"exec": remote_dump(stats, f"127.0.0.1:{lab.port}",
                                         0 if name == "alpha" else 300), "fetch": stats}
    conf = {"cache": os.path.join(cache_dir, "sniffer.cache"), "src": src,
            "ssh": ["ssh", "-F", lab.ssh], "timeout": 20, "refresh": 300}
    conf.update(extra)
    path = os.path.join(cache_dir, "coalesce.conf")
    with open(path, "w") as fh:
        fh.write(repr(conf) + "\n")
    return path


def edit_conf(path: str, change) -> None:
    """Rewrite a config file written by coalesce_conf after ``change(settings)``."""
    with open(path) as fh:
        settings = ast.literal_eval(fh.read())
    change(settings)
    with open(path, "w") as fh:
        fh.write(repr(settings) + "\n")


def start_cgi(conf: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, TZ="UTC")
    return subprocess.Popen([PYTHON, CGI, "-c", conf, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def cgi(conf: str, *args: str, timeout: float = 120) -> tuple[int, str]:
    proc = start_cgi(conf, *args)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert err == "", err
    return proc.returncode, out


def dumps(lab: Lab) -> int:
    with open(lab.dump_log) as fh:
        return len(fh.readlines())


def expected(name: str) -> str:
    with open(os.path.join(DATA, name), encoding="utf-8") as fh:
        return fh.read()


def test_three_hosts_over_real_ssh_and_rsync(lab, tmp_path):
    before = dumps(lab)
    started = time.monotonic()
    status, out = cgi(coalesce_conf(lab, str(tmp_path)))
    assert (status, out) == (0, expected("expected.report.1"))
    assert time.monotonic() - started < 30
    assert dumps(lab) == before + 1                        # alpha's daemon was asked once
    merged = dumpfile.read_stats(str(tmp_path / "composite.stats"))
    assert merged.records == dumpfile.read_stats(
        os.path.join(DATA, "expected.composite.stats")).records
    for name in HOSTS:                                     # rsync copied each file as is
        with open(os.path.join(lab.base, name, "nc.sniffer.stats")) as a, \
                open(tmp_path / f"{name}.stats") as b:
            assert a.read() == b.read()
    assert cgi(coalesce_conf(lab, str(tmp_path)), "0") == (0, expected("expected.report.0"))


def test_a_stopped_host_is_named_and_its_last_stats_used(lab, tmp_path):
    conf = coalesce_conf(lab, str(tmp_path), refresh=1)
    assert cgi(conf) == (0, expected("expected.report.1"))
    lab.stop_sshd("gamma")
    try:
        time.sleep(2.1)                                    # let the cache expire
        status, out = cgi(conf)
        fresh_dir = tmp_path / "fresh"
        _, first_time = cgi(coalesce_conf(lab, str(fresh_dir)))
    finally:
        lab.start_sshd("gamma")
    assert status == 0
    lines = out.splitlines(keepends=True)
    failed = [x for x in lines if x.startswith("# host:\tgamma\t")]
    assert len(failed) == 1
    assert failed[0].startswith("# host:\tgamma\tFAILED (ssh exit 255: ")
    assert "Connection refused" in failed[0]
    assert failed[0].endswith("), its last stats file is used\n")
    assert "# failed hosts:\tgamma\n" in lines
    # apart from naming the failure, the report is the complete one
    repaired = "".join("# host:\tgamma\n" if x is failed[0] else x for x in lines
                       if x != "# failed hosts:\tgamma\n")
    assert repaired == expected("expected.report.1")
    # a host never fetched before: named, and the others still reported
    assert "# host:\tgamma\tFAILED (ssh exit 255: " in first_time
    assert "), no stats file\n" in first_time
    assert "users\t\t= 6\n" in first_time                  # alpha + beta: 6 distinct IPs


def test_a_hanging_host_times_out(lab, tmp_path):
    conf = coalesce_conf(lab, str(tmp_path), timeout=3)
    edit_conf(conf, lambda c: c["src"]["beta"].update(exec=["sleep", "60"]))
    started = time.monotonic()
    status, out = cgi(conf)
    assert status == 0 and time.monotonic() - started < 15
    assert "# host:\tbeta\tFAILED (ssh timed out after 3 s), no stats file\n" in out
    assert "# host:\talpha\n" in out and "# host:\tgamma\n" in out


def test_nothing_is_injected(lab, tmp_path):
    markers = [tmp_path / f"pwned{i}" for i in range(6)]
    conf = coalesce_conf(lab, str(tmp_path / "a"))
    for bad in (f"alpha;touch {markers[0]}", f"$(touch {markers[1]})", f"`touch {markers[1]}`",
                f"-oProxyCommand=touch {markers[1]}"):
        edit_conf(conf, lambda c: c.update(src={bad: {"exec": "true", "fetch": "/x"}}))
        status, out = cgi(conf)
        assert status == 1 and out.startswith("invalid source host name ")
    edit_conf(conf, lambda c: c.update(src={
        "alpha": {"exec": ["echo", f"$(touch {markers[2]})", f"; touch {markers[3]}",
                           f"`touch {markers[4]}`"],
                  "fetch": f"/nonexistent/$(touch {markers[5]});touch {markers[5]}"}}))
    status, out = cgi(conf)
    assert status == 0 and "# host:\talpha\tFAILED (rsync exit 23: " in out
    time.sleep(0.5)
    assert [m.name for m in markers if m.exists()] == []


def test_two_coalescers_started_together(lab, tmp_path):
    conf = coalesce_conf(lab, str(tmp_path))
    # a build that surely lasts until the second coalescer has started
    edit_conf(conf, lambda c: c["src"]["beta"].update(exec=["sleep", "1.5"]))
    before = dumps(lab)
    procs = [start_cgi(conf), start_cgi(conf)]
    try:
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    for (out, err), proc in zip(results, procs):
        assert (proc.returncode, err, out) == (0, "", expected("expected.report.1"))
    assert dumps(lab) == before + 1                        # one built, the other waited
    assert not os.path.exists(tmp_path / "sniffer.cache.1.lock")
