"""`make install` / `make uninstall`: staged into a temporary root (DESTDIR) and checked
file by file, then for real on this machine, running the installed programs."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile

import pytest

from tests.conftest import ROOT, other_users_dir, plain_read, write_config
from tests.test_notify import notify_socket, run_notified_daemon  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="make install runs as root"),
              pytest.mark.skipif(not os.path.exists("/usr/bin/python3"),
                                 reason="the install's venv is built on /usr/bin/python3")]

PROGRAMS = ["chkIFrunning", "nc.sniffer", "nc.sniffer.cgi", "nc.sniffer.coalesce.cgi",
            "nc.sniffer.dump"]
PREFIX = "/opt/ncsniffer"
# every file the install puts outside the venv, and the venv's own ones of ours
OUTSIDE_VENV = sorted(
    [f"usr/local/bin/{p}" for p in PROGRAMS] + [
        "etc/nc.sniffer/nc.sniffer.conf",
        "usr/local/lib/systemd/system/nc.sniffer.service",
        "usr/local/lib/tmpfiles.d/nc.sniffer.conf",
        "usr/local/share/man/man5/nc.sniffer.conf.5",
        "usr/local/share/man/man8/nc.sniffer.8"])
SHARED = ["nc.sniffer.cgi.sample", "nc.sniffer.coalesce.cgi.sample", "nc.sniffer.conf.sample"]
MAKE_TIMEOUT = 900
WEB_PATH = "/usr/local/bin:/usr/bin:/bin"      # what a web server gives its CGI programs


def make(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run(["make", "-s", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=MAKE_TIMEOUT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def files_under(root: str, skip: str = "") -> list[str]:
    """Files and links below ``root`` (relative), leaving out the ``skip`` subtree."""
    found = []
    for top, dirs, names in os.walk(root):
        rel = os.path.relpath(top, root)
        if skip and (rel == skip or rel.startswith(skip + "/")):
            dirs[:] = []
            continue
        found += [os.path.normpath(os.path.join(rel, n)) for n in names]
        found += [os.path.normpath(os.path.join(rel, d)) for d in dirs
                  if os.path.islink(os.path.join(top, d))]
    return sorted(found)


def man_warnings(page: str) -> tuple[str, str]:
    r = subprocess.run(["man", "--warnings", "-l", page], capture_output=True, text=True,
                       env=dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8", MANPAGER="cat"))
    return r.stdout, r.stderr


# --------------------------------------------------------------------------- DESTDIR

@pytest.fixture(scope="module")
def staged():
    root = tempfile.mkdtemp(prefix="ncsniffer-destdir.")
    run_existed = os.path.exists("/run/nc.sniffer")
    try:
        make("install", f"DESTDIR={root}")
        yield root, run_existed
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_destdir_install_puts_every_file(staged):
    root, run_existed = staged
    assert files_under(root, skip="opt") == OUTSIDE_VENV
    for p in PROGRAMS:
        assert os.readlink(f"{root}/usr/local/bin/{p}") == f"{PREFIX}/bin/{p}"
        script = f"{root}{PREFIX}/bin/{p}"
        assert os.access(script, os.X_OK)
        assert open(script).readline() == f"#!{PREFIX}/bin/python\n"   # the final path
    assert sorted(os.listdir(f"{root}{PREFIX}/share/ncsniffer")) == SHARED
    with open(f"{root}/etc/nc.sniffer/nc.sniffer.conf") as a, \
            open(os.path.join(ROOT, "samples", "nc.sniffer.conf.sample")) as b:
        assert a.read() == b.read()
    assert not run_existed and not os.path.exists("/run/nc.sniffer") or run_existed


def test_destdir_files_name_no_staging_path_and_all_may_read(staged):
    root, _ = staged
    for rel in files_under(root):
        path = os.path.join(root, rel)
        if os.path.islink(path):
            continue
        mode = os.stat(path).st_mode
        assert mode & stat.S_IROTH, f"{rel} is not world-readable"
        with open(path, "rb") as fh:
            assert root.encode() not in fh.read(), f"{rel} names the staging root"
    for top, dirs, _ in os.walk(root):
        for d in dirs:
            assert os.stat(os.path.join(top, d)).st_mode & stat.S_IXOTH, f"{top}/{d}"


def test_destdir_venv_is_on_the_system_python(staged):
    root, _ = staged
    venv = root + PREFIX
    assert "home = /usr/bin\n" in open(f"{venv}/pyvenv.cfg").read()
    assert os.path.realpath(f"{venv}/bin/python") == os.path.realpath("/usr/bin/python3")
    r = subprocess.run([f"{venv}/bin/python", "-c",
                        "import ncsniffer, pcapy, sdnotify, numpy; print(ncsniffer.__file__)"],
                       capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{venv}/lib/python3")      # installed, not this checkout


def test_destdir_unit_is_notify_with_watchdog_and_reload_dumps(staged):
    root, _ = staged
    unit = open(f"{root}/usr/local/lib/systemd/system/nc.sniffer.service").read().splitlines()
    conf = "-c /etc/nc.sniffer/nc.sniffer.conf"
    for line in ["Type=notify", f"ExecStart=/usr/local/bin/nc.sniffer {conf} --foreground start",
                 f"ExecReload=/usr/local/bin/nc.sniffer {conf} dump", "WatchdogSec=30",
                 "Restart=on-failure", "RuntimeDirectory=nc.sniffer"]:
        assert line in unit
    caps = next(x for x in unit if x.startswith("CapabilityBoundingSet=")).split("=")[1].split()
    assert {"CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_KILL"} <= set(caps)
    tmpfiles = open(f"{root}/usr/local/lib/tmpfiles.d/nc.sniffer.conf").read()
    assert "d /run/nc.sniffer 0755 root root -\n" in tmpfiles


def test_destdir_man_pages_render_without_warnings(staged):
    root, _ = staged
    for page, title in [("man8/nc.sniffer.8", "nc.sniffer(8)"),
                        ("man5/nc.sniffer.conf.5", "nc.sniffer.conf(5)")]:
        out, err = man_warnings(f"{root}/usr/local/share/man/{page}")
        assert err == "" and out.startswith(title), err


def test_destdir_install_again_keeps_an_edited_config_then_uninstall(staged):
    root, _ = staged
    conf = f"{root}/etc/nc.sniffer/nc.sniffer.conf"
    with open(conf, "a") as fh:
        fh.write("# edited\n")
    make("install", f"DESTDIR={root}")
    assert open(conf).read().endswith("# edited\n")
    assert files_under(root, skip="opt") == OUTSIDE_VENV
    r = make("uninstall", f"DESTDIR={root}")
    assert f"kept {root}/etc/nc.sniffer" in r.stdout
    assert files_under(root) == ["etc/nc.sniffer/nc.sniffer.conf"]


# --------------------------------------------------------------------------- for real

@pytest.fixture(scope="module")
def installed():
    """`make install` on this machine; `make uninstall` however the tests end."""
    for path in (PREFIX, "/etc/nc.sniffer", "/usr/local/bin/nc.sniffer"):
        if os.path.lexists(path):
            pytest.skip(f"{path} exists: not replacing an installation on this machine")
    ensure_user("www-data")
    try:
        yield make("install")
    finally:
        subprocess.run(["make", "-s", "uninstall"], cwd=ROOT, capture_output=True,
                       timeout=MAKE_TIMEOUT)


def ensure_user(user: str) -> None:
    """www-data exists on Debian; made if missing (a system user without a shell)."""
    if subprocess.run(["id", user], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", user], check=True)


@pytest.fixture
def web_dir():
    """A directory the web user can read (pytest's tmp_path is root's alone)."""
    with other_users_dir("ncsniffer-web.", 0o755) as path:
        yield path


def as_web_user(*argv: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("runuser") or "/usr/sbin/runuser", "-u", "www-data", "--", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": WEB_PATH, "LC_ALL": "C.UTF-8"})


def test_installed_replays_the_sample_and_the_web_user_reports_it(installed, web_dir):
    assert "install: done" in installed.stdout
    conf = write_config(web_dir, bpf="host 192.0.2.10 or dst host 2001:db8::10")
    r = subprocess.run(["/usr/local/bin/nc.sniffer", "-c", conf, "-q", "-r",
                        os.path.join(ROOT, "samples", "sample.pcap"), "start"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    stats = os.path.join(web_dir, "nc.sniffer.stats")
    assert plain_read(stats)[1]                       # peers counted
    os.chmod(stats, 0o644)
    page = as_web_user("/usr/local/bin/nc.sniffer.cgi", "--stats", stats, "0")
    assert page.returncode == 0, page.stdout + page.stderr
    assert "Permission denied" not in page.stderr and page.stdout.strip()


def test_installed_coalesce_sample_imports_the_installed_package(installed, web_dir):
    """Run as a script by the web user, the sample finds ncsniffer (issue 15: it died
    with ModuleNotFoundError).  A bad argument makes it answer without any ssh."""
    script = os.path.join(web_dir, "nc.sniffer.coalesce.cgi")
    shutil.copy(f"{PREFIX}/share/ncsniffer/nc.sniffer.coalesce.cgi.sample", script)
    os.chmod(script, 0o755)
    r = as_web_user("./nc.sniffer.coalesce.cgi", "0", "extra", cwd=web_dir)
    assert "ModuleNotFoundError" not in r.stderr, r.stderr
    assert r.returncode == 1 and "unrecognized arguments: extra" in r.stdout


def test_installed_daemon_tells_readiness_and_pings_the_watchdog(installed, web_dir,
                                                                 notify_socket):  # noqa: F811
    got = run_notified_daemon("/usr/local/bin/nc.sniffer", web_dir, *notify_socket)
    assert "READY=1" in got["ready"][-1].splitlines() and "WATCHDOG=1" in got["pings"]
    assert "STOPPING=1" in got["stopping"][-1].splitlines() and got["code"] == 0


def test_installed_unit_verifies_and_man_finds_the_pages(installed):
    if not shutil.which("systemd-analyze"):
        pytest.skip("no systemd-analyze (Debian package systemd)")
    r = subprocess.run(["systemd-analyze", "verify",
                        "/usr/local/lib/systemd/system/nc.sniffer.service"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    r = subprocess.run(["man", "-w", "nc.sniffer.conf"], capture_output=True, text=True)
    assert os.path.realpath(r.stdout.strip()) == "/usr/local/share/man/man5/nc.sniffer.conf.5"
    assert os.path.isdir("/run/nc.sniffer")


def test_uninstall_removes_everything(installed):
    r = make("uninstall")
    assert "uninstall: done" in r.stdout and "kept" not in r.stdout
    for rel in OUTSIDE_VENV + ["opt/ncsniffer", "etc/nc.sniffer", "run/nc.sniffer"]:
        assert not os.path.lexists("/" + rel), rel

