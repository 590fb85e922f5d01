"""Reports against real processes: a second locker, the real daemon, lighttpd with SSI.

Each test starts its processes itself, on loopback and free ports, and stops
them in ``finally`` blocks (or fixtures) even when an assertion fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

from ncsniffer import report

from tests.conftest import NC_SNIFFER, ROOT, hold_lock, is_root, stop_process, write_config

pytestmark = pytest.mark.integration

LIGHTTPD = "/usr/sbin/lighttpd"
VENV_CGI = os.path.join(os.path.dirname(sys.executable), "nc.sniffer.cgi")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ctime(path: str) -> float:
    return os.stat(path).st_ctime


# --------------------------------------------------------------------------- a second locker

def test_second_locker_waits_then_times_out(tmp_path):
    target = str(tmp_path / "cache.0.tmp")
    proc = hold_lock("report.get_lock", target, 30)
    try:
        with open(target + ".lock") as fh:
            assert fh.read().strip() == str(proc.pid)
        started = time.monotonic()
        with pytest.raises(report.LockTimeout):
            report.get_lock(target, 1)
        assert 0.9 < time.monotonic() - started < 3
    finally:
        proc.kill()
        proc.wait(10)
    with report.get_lock(target, 1):               # the dead holder's lock is gone
        pass


def test_second_locker_gets_lock_when_released(tmp_path):
    target = str(tmp_path / "cache.1.tmp")
    proc = hold_lock("report.get_lock", target, 0.7)
    try:
        started = time.monotonic()
        with report.get_lock(target, 10):
            waited = time.monotonic() - started
        assert 0.3 < waited < 5
    finally:
        proc.kill()
        proc.wait(10)


# --------------------------------------------------------------------------- the real daemon

@pytest.fixture
def daemon(tmp_path):
    """A live nc.sniffer on lo, counting UDP to a free port, dump listener on another."""
    if not is_root():
        pytest.skip("live capture needs root")
    traffic, listen = free_port(), free_port()
    work = tmp_path / "daemon"
    work.mkdir()
    conf = write_config(str(work), bpf=f"host 127.0.0.1 and udp port {traffic}", port=listen,
                        resolve=False)
    run = subprocess.run([NC_SNIFFER, "-c", conf, "start"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    try:
        yield {"stats": str(work / "nc.sniffer.stats"), "update": f"127.0.0.1:{listen}",
               "traffic": traffic, "dir": str(work)}
    finally:
        subprocess.run([NC_SNIFFER, "-c", conf, "stop"], capture_output=True, timeout=60)


def send_traffic(port: int, count: int = 20) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(count):
            s.sendto(b"x" * 100, ("127.0.0.1", port))


def test_rqst_dump_real_daemon(daemon):
    stats = daemon["stats"]
    send_traffic(daemon["traffic"])
    assert report.rqst_dump(daemon["update"], stats, 0, 15) == ""
    first = ctime(stats)
    assert report.rqst_dump(daemon["update"], stats, 0, 15) == ""
    assert ctime(stats) > first
    # younger than age: the daemon is not asked, the file stays as it is
    second = ctime(stats)
    assert report.rqst_dump(daemon["update"], stats, 300, 15) == ""
    assert ctime(stats) == second
    text = report.report_text(stats, False)
    assert "\n127.0.0.1\t\n" in text and "users\t\t= 1\n" in text


# --------------------------------------------------------------------------- lighttpd

PAGE = ('<html><body><h1>peers</h1><pre>\n<!--#exec cmd="./nc.sniffer.cgi 0" -->\n</pre>'
        '<pre>\n<!--#exec cmd="./nc.sniffer.cgi 1" -->\n</pre></body></html>\n')


def install_cgi(docroot: str) -> None:
    """What an operator does: link the installed script into the docroot.

    Without a (re)installed venv script, an equivalent one with this Python's
    shebang stands in.
    """
    target = os.path.join(docroot, "nc.sniffer.cgi")
    if os.path.exists(VENV_CGI):
        os.symlink(VENV_CGI, target)
        return
    with open(os.path.join(ROOT, "scripts", "nc.sniffer.cgi")) as fh:
        body = fh.read().split("\n", 1)[1]
    with open(target, "w") as fh:
        fh.write(f"#!{sys.executable}\n{body}")
    os.chmod(target, 0o755)


def lighttpd_conf(base: str, docroot: str, port: int) -> str:
    path = os.path.join(base, "lighttpd.conf")
    with open(path, "w") as fh:
        fh.write(textwrap.dedent(f"""\
            server.document-root = "{docroot}"
            server.bind          = "127.0.0.1"
            server.port          = {port}
            server.modules       = ("mod_ssi", "mod_cgi")
            server.errorlog      = "{base}/error.log"
            ssi.extension        = (".shtml")
            cgi.assign           = (".cgi" => "")
            index-file.names     = ("index.shtml")
            mimetype.assign      = (".shtml" => "text/html; charset=utf-8")
            """))
    return path


@pytest.fixture
def lighttpd(tmp_path):
    """lighttpd serving a docroot with the SSI page; it runs SSI commands in its
    own working directory, so it is started from the docroot."""
    if not os.access(LIGHTTPD, os.X_OK):
        pytest.skip("lighttpd is not installed (tools/ensure-test-system installs it)")
    base = tmp_path / "web"
    docroot = base / "htdocs"
    docroot.mkdir(parents=True)
    (docroot / "index.shtml").write_text(PAGE)
    install_cgi(str(docroot))
    port = free_port(socket.SOCK_STREAM)
    conf = lighttpd_conf(str(base), str(docroot), port)
    proc = subprocess.Popen([LIGHTTPD, "-D", "-f", conf], cwd=str(docroot),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                assert proc.poll() is None, "lighttpd exited"
                assert time.monotonic() < deadline, "lighttpd did not listen"
                time.sleep(0.05)
        yield {"url": f"http://127.0.0.1:{port}/index.shtml", "docroot": str(docroot),
               "base": str(base)}
    finally:
        stop_process(proc)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as resp:
        assert resp.status == 200
        return resp.read().decode("utf-8")


def test_ssi_page_with_cache_and_daemon(lighttpd, daemon):
    cache_dir = os.path.join(lighttpd["base"], "cache")
    os.mkdir(cache_dir)
    cache = os.path.join(cache_dir, "sniffer.cache")
    with open(os.path.join(lighttpd["docroot"], "nc.sniffer.cgi.conf"), "w") as fh:
        fh.write(f"{{'stats': {daemon['stats']!r}, 'cache': {cache!r},\n"
                 f" 'update': {daemon['update']!r}, 'refresh': 300, 'updto': 15}}\n")
    send_traffic(daemon["traffic"])
    page = fetch(lighttpd["url"])
    assert "Composite report, CIDR/24 ordered by BANDWIDTH" in page
    assert "Composite report, SUB DOMAIN ordered by BANDWIDTH" in page
    assert "\n127.0.0.1\t\n" in page and page.count("users\t\t= 1\n") == 2
    assert page.startswith("<html><body><h1>peers</h1><pre>\n\n# ncsniffer version")
    stats_ctime = ctime(daemon["stats"])
    cache_ctimes = [ctime(cache + ".0"), ctime(cache + ".1")]
    with open(cache + ".0") as fh:
        assert fh.read() in page
    time.sleep(1.1)                                  # a new dump would show in the ctime
    assert fetch(lighttpd["url"]) == page
    assert ctime(daemon["stats"]) == stats_ctime
    assert [ctime(cache + ".0"), ctime(cache + ".1")] == cache_ctimes


def test_ssi_page_error_line(lighttpd, tmp_path):
    with open(os.path.join(lighttpd["docroot"], "nc.sniffer.cgi.conf"), "w") as fh:
        fh.write(f"{{'stats': {str(tmp_path / 'missing.stats')!r}}}\n")
    page = fetch(lighttpd["url"])
    lines = [line for line in page.splitlines() if "missing.stats" in line]
    assert len(lines) == 2 and lines[0] == lines[1]
    assert lines[0].endswith("missing.stats: No such file or directory")


def test_installed_script_terminal_mode():
    """The script as installed (or scripts/ run with this Python) prints a report."""
    stats = os.path.join(ROOT, "tests", "data", "report", "mixed.stats")
    cmd = [VENV_CGI] if os.path.exists(VENV_CGI) else [sys.executable,
                                                        os.path.join(ROOT, "scripts", "nc.sniffer.cgi")]
    run = subprocess.run(cmd + ["--stats", stats, "1"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "TZ": "UTC"})
    assert run.returncode == 0, run.stderr
    with open(os.path.join(ROOT, "tests", "data", "report", "mixed.report.1")) as fh:
        assert run.stdout == fh.read()


# --------------------------------------------------------------------------- crafted files (11.12, 11.18)

from tests import hostile  # noqa: E402

CHILD_MEMORY = 512 << 20          # a crafted file of a few hundred KB must not cost more


# Runs argv[2:] as its own child and writes that child's peak RSS (ru_maxrss, KiB)
# to the descriptor argv[1].  The child is forked from this small process, so its figure is its own:
# a process forked straight from pytest starts with pytest's whole RSS.
PEAK_LAUNCHER = """
import os, sys
fd, argv = int(sys.argv[1]), sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.close(fd)
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
os.write(fd, str(usage.ru_maxrss).encode())
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run_cgi(args: list, env: dict) -> tuple:
    """nc.sniffer.cgi as a process: (status, stdout, stderr, seconds, its own peak RSS)."""
    import signal
    import tempfile
    import threading
    cmd = [VENV_CGI] if os.path.exists(VENV_CGI) else [
        sys.executable, os.path.join(ROOT, "scripts", "nc.sniffer.cgi")]
    started = time.monotonic()
    peak_r, peak_w = os.pipe()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen([sys.executable, "-c", PEAK_LAUNCHER, str(peak_w),
                                     *cmd, *args],
                                    stdout=out, stderr=err, pass_fds=(peak_w,),
                                    start_new_session=True,
                                    env={**os.environ, "TZ": "UTC", **env})
        finally:
            os.close(peak_w)
        timer = threading.Timer(60, os.killpg, (proc.pid, signal.SIGKILL))   # bounded time
        timer.start()
        try:
            proc.wait()
        finally:
            timer.cancel()
        with os.fdopen(peak_r, "rb") as fh:
            peak_kib = int(fh.read() or 0)
        out.seek(0)
        err.seek(0)
        return (proc.returncode, out.read().decode("utf-8", "replace"),
                err.read().decode("utf-8", "replace"), time.monotonic() - started,
                peak_kib * 1024)


@pytest.mark.parametrize("kind,fmt", hostile.BAD_CASES)
def test_cgi_process_crafted_file_terminal_and_ssi(tmp_path, kind, fmt):
    path = hostile.write(tmp_path / f"{kind}.{fmt}.stats", kind, fmt)
    status, out, err, took, peak = run_cgi(["--stats", path, "0"], {})
    assert status == 1 and out == "", (out, err)
    assert err.count("\n") == 1 and err.startswith(f"nc.sniffer.cgi: {path}: not a readable")
    assert took < 30 and peak < CHILD_MEMORY
    conf = tmp_path / "web.conf"
    conf.write_text(repr({"stats": path}))
    status, out, err, took, peak = run_cgi(["1"], {"NCSNIFFER_CGI_CONF": str(conf)})
    assert status == 1 and err == "", err
    assert out.count("\n") == 1 and out.startswith(f"{path}: not a readable stats file: ")
    assert "<" not in out and took < 30 and peak < CHILD_MEMORY
    assert not os.path.exists("/tmp/ncs-hostile-ran")


@pytest.mark.parametrize("fmt", hostile.FORMATS)
def test_cgi_process_odd_names(tmp_path, fmt):
    path = hostile.write(tmp_path / "odd.stats", "odd_names", fmt)
    status, out, err, _, _ = run_cgi(["--stats", path, "1"], {})
    assert status == 0 and err == ""
    assert "<script>alert(1)</script>.evil.org" in out        # a terminal shows it as text
    assert not any(c in out for c in "\x1b\x07\x9b\x85\x7f\u202e")
    conf = tmp_path / "web.conf"
    conf.write_text(repr({"stats": path}))
    status, out, err, _, _ = run_cgi(["0"], {"NCSNIFFER_CGI_CONF": str(conf)})
    assert status == 0 and "&lt;script&gt;" in out and "<script>" not in out
    assert "\x1b" not in out
