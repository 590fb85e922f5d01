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
        wait_listening(proc, port, "lighttpd", str(base))
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
from tests.conftest import PEAK_LAUNCHER  # noqa: E402

CHILD_MEMORY = 512 << 20          # a crafted file of a few hundred KB must not cost more


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


# --------------------------------------------------------------------------- the README's recipes

import contextlib  # noqa: E402
import json  # noqa: E402
import pwd  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from typing import Optional  # noqa: E402

APACHE2 = "/usr/sbin/apache2"
CHROMIUM = "/usr/bin/chromium"
WEB_USER = "www-data"
# the recipe's lines that install and (re)load the system's server: the test
# runs its own server instead, with Debian's module files (see *_conf below)
SERVER_STEPS = ("apt-get ", "lighty-enable-mod ", "a2enmod ", "a2enconf ", "service ")


def readme_block(name: str) -> str:
    """The ```sh block after ``<!-- test: NAME -->`` in the README."""
    with open(os.path.join(ROOT, "README.md")) as fh:
        text = fh.read()
    m = re.search(r"<!-- test: %s -->\n```sh\n(.*?)```\n" % re.escape(name), text, re.S)
    assert m, f"README has no block {name}"
    return m.group(1)


def recipe_script(names: list, paths: dict) -> str:
    """The README's recipe blocks as one script, temporary paths for the system's."""
    lines = [line for name in names for line in readme_block(name).splitlines(keepends=True)
             if not line.startswith(SERVER_STEPS)]
    script = "".join(lines)
    for old in sorted(paths, key=len, reverse=True):
        script = script.replace(old, paths[old])
    return script


def substitute(text: str, changes: list) -> str:
    """Regex replacements in a Debian config file; each one must apply."""
    for pattern, repl in changes:
        text, count = re.subn(pattern, repl, text, flags=re.M)
        assert count, f"{pattern!r} not in the Debian file"
    return text


def debian_lighttpd_conf(base: str, port: int) -> str:
    """Debian's lighttpd.conf with `lighty-enable-mod ssi cgi`, on a temporary root and port."""
    enabled = os.path.join(base, "lighttpd-enabled")
    os.mkdir(enabled)
    for mod in ("10-ssi.conf", "10-cgi.conf"):
        with open(os.path.join("/etc/lighttpd/conf-available", mod)) as fh:
            text = fh.read().replace("/usr/lib/cgi-bin/", base + "/cgi-bin/")
        with open(os.path.join(enabled, mod), "w") as fh:
            fh.write(text)
    os.mkdir(os.path.join(base, "uploads"))
    web = pwd.getpwnam(WEB_USER)
    with open(os.path.join(base, "error.log"), "w"):
        pass                                       # as Debian's /var/log/lighttpd: the
    os.chown(os.path.join(base, "error.log"), web.pw_uid, web.pw_gid)   # server's own
    with open("/etc/lighttpd/lighttpd.conf") as fh:
        text = substitute(fh.read(), [
            (r"^server\.document-root\s*=.*$", f'server.document-root = "{base}/htdocs"'),
            (r"^server\.upload-dirs\s*=.*$", f'server.upload-dirs = ( "{base}/uploads" )'),
            (r"^server\.errorlog\s*=.*$", f'server.errorlog = "{base}/error.log"'),
            (r"^server\.pid-file\s*=.*$", f'server.pid-file = "{base}/lighttpd.pid"'),
            (r"^server\.port\s*=.*$", f'server.port = {port}\nserver.bind = "127.0.0.1"'),
            (r"^include_shell \"/usr/share/lighttpd/use-ipv6.pl.*$", ""),
            (r"^include \"/etc/lighttpd/conf-enabled/\*\.conf\"$", f'include "{enabled}/*.conf"'),
        ])
    path = os.path.join(base, "lighttpd.conf")
    with open(path, "w") as fh:
        fh.write(text)
    return path


def debian_apache2_conf(base: str, port: int) -> str:
    """Debian's enabled modules plus `a2enmod include cgi` (cgid), Debian's
    serve-cgi-bin.conf and the recipe's conf, on a temporary root and port."""
    run = os.path.join(base, "apache-run")
    os.mkdir(run)
    with open("/etc/apache2/conf-available/serve-cgi-bin.conf") as fh:
        cgi_bin = fh.read().replace("/usr/lib/cgi-bin", base + "/cgi-bin")
    with open(os.path.join(base, "serve-cgi-bin.conf"), "w") as fh:
        fh.write(cgi_bin)
    path = os.path.join(base, "apache2.conf")
    with open(path, "w") as fh:
        fh.write(textwrap.dedent(f"""\
            ServerRoot "/etc/apache2"
            DefaultRuntimeDir "{run}"
            PidFile "{run}/apache2.pid"
            Mutex file:{run} default
            User {WEB_USER}
            Group {WEB_USER}
            ErrorLog "{base}/error.log"
            LogLevel warn
            Listen 127.0.0.1:{port}
            ServerName 127.0.0.1
            IncludeOptional mods-enabled/*.load
            IncludeOptional mods-enabled/*.conf
            Include mods-available/include.load
            Include mods-available/cgid.load
            ScriptSock "{run}/cgisock"
            DocumentRoot "{base}/htdocs"
            <Directory />
                Options FollowSymLinks
                AllowOverride None
                Require all denied
            </Directory>
            <Directory "{base}/htdocs">
                Options Indexes FollowSymLinks
                AllowOverride None
                Require all granted
            </Directory>
            Include "{base}/serve-cgi-bin.conf"
            Include "{base}/apache-conf/nc.sniffer.conf"
            """))
    return path


SERVERS = {"lighttpd": (LIGHTTPD, debian_lighttpd_conf, lambda conf: ["-D", "-f", conf]),
           "apache2": (APACHE2, debian_apache2_conf, lambda conf: ["-f", conf, "-DFOREGROUND"])}


def wait_listening(proc: subprocess.Popen, port: int, what: str, base: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                text = "".join(open(os.path.join(base, log)).read() for log in
                               ("server.out", "error.log") if os.path.exists(os.path.join(base, log)))
                pytest.fail(f"{what} did not listen: {text[-2000:]}")
            time.sleep(0.05)


def web_user_cgi(directory: str) -> str:
    """``make install``'s script, for this checkout: on /usr/bin/python3, as the
    installed venv is, because the test venv's Python may live where www-data
    cannot go (a pyenv under /root)."""
    with open(os.path.join(ROOT, "scripts", "nc.sniffer.cgi")) as fh:
        body = fh.read().split("\n", 1)[1]
    path = os.path.join(directory, "nc.sniffer.cgi")
    with open(path, "w") as fh:
        fh.write(f"#!/usr/bin/python3\nimport sys\nsys.path.insert(0, {ROOT!r})\n{body}")
    os.chmod(path, 0o755)
    return path


@contextlib.contextmanager
def recipe_server(kind: str, stats: str, update: Optional[str]):
    """Run the README's recipe for ``kind`` on temporary paths, serve it, clean up."""
    binary, make_conf, argv = SERVERS[kind]
    if not is_root():
        pytest.skip("the recipes run as root, the server as www-data")
    if not os.access(binary, os.X_OK):
        pytest.skip(f"{kind} is not installed (tools/ensure-test-system installs it)")
    base = tempfile.mkdtemp(prefix=f"ncs-{kind}-")
    os.chmod(base, 0o755)                          # the web user walks through it
    proc = None
    try:
        for sub in ("bin", "cgi-bin", "htdocs", "apache-conf"):
            os.mkdir(os.path.join(base, sub))
        script = recipe_script(["recipe-common", f"recipe-{kind}"], {
            "/usr/local/bin/nc.sniffer.cgi": web_user_cgi(base + "/bin"),
            "/usr/lib/cgi-bin": base + "/cgi-bin",
            "/var/www/html": base + "/htdocs",
            "/var/cache/ncsniffer": base + "/cache",
            "/etc/apache2/conf-available": base + "/apache-conf",
            "/run/nc.sniffer/nc.sniffer.stats": stats,
            "'127.0.0.1:10004'": repr(update)})
        run = subprocess.run(["sh", "-e", "-c", script], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr
        port = free_port(socket.SOCK_STREAM)
        conf = make_conf(base, port)
        with open(os.path.join(base, "server.out"), "w") as log:
            proc = subprocess.Popen([binary, *argv(conf)], cwd="/", stdout=log, stderr=log)
        wait_listening(proc, port, kind, base)
        yield {"url": f"http://127.0.0.1:{port}", "base": base}
    finally:
        if proc is not None:
            stop_process(proc)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def public_daemon():
    """A live daemon whose stats directory the web user can read (not under tmp_path)."""
    if not is_root():
        pytest.skip("live capture needs root")
    work = tempfile.mkdtemp(prefix="ncs-daemon-")
    os.chmod(work, 0o755)
    traffic, listen = free_port(), free_port()
    conf = write_config(work, bpf=f"host 127.0.0.1 and udp port {traffic}", port=listen,
                        resolve=False)
    try:
        run = subprocess.run([NC_SNIFFER, "-c", conf, "start"], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr
        yield {"stats": os.path.join(work, "nc.sniffer.stats"), "update": f"127.0.0.1:{listen}",
               "traffic": traffic}
    finally:
        subprocess.run([NC_SNIFFER, "-c", conf, "stop"], capture_output=True, timeout=60)
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lighttpd", "apache2"])
def test_readme_recipe_on_a_real_server(kind, public_daemon):
    send_traffic(public_daemon["traffic"])
    with recipe_server(kind, public_daemon["stats"], public_daemon["update"]) as web:
        page = fetch(web["url"] + "/peers.shtml")
        assert '<div class="ncsniffer">' in page and "<svg" in page and "<rect " in page
        assert "Composite report, SUB DOMAIN ordered by BANDWIDTH" in page
        assert "127.0.0.1" in page and "<!--#exec" not in page
        whole = fetch(web["url"] + "/cgi-bin/nc.sniffer.cgi?format=html&type=0")
        assert whole.startswith("<!DOCTYPE html>") and "127.0.0.0/24" in whole
        doc = json.loads(fetch(web["url"] + "/cgi-bin/nc.sniffer.cgi?format=json&type=1"))
        assert doc["report"] == "domain" and doc["totals"]["users"] == 1
        web_uid = pwd.getpwnam(WEB_USER).pw_uid
        cache = os.path.join(web["base"], "cache")
        for name in ("report.0.fragment", "report.1", "report.0.html", "report.1.json"):
            assert os.stat(os.path.join(cache, name)).st_uid == web_uid, name   # not root


BAR = re.compile(r'<rect [^>]*height="([\d.]+)" data-value="([\d.]+)"')


def chromium(*args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on a loopback URL, with a throw-away profile, nothing fetched besides."""
    profile = tempfile.mkdtemp(prefix="ncs-chromium-")
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
def test_html_chart_in_headless_chromium(tmp_path):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip("chromium is not installed (tools/ensure-test-system installs it)")
    public = tempfile.mkdtemp(prefix="ncs-stats-")
    os.chmod(public, 0o755)
    try:
        stats = os.path.join(public, "mixed.stats")
        shutil.copy(os.path.join(ROOT, "tests", "data", "report", "mixed.stats"), stats)
        os.chmod(stats, 0o644)
        with recipe_server("lighttpd", stats, None) as web:   # a settled file, no daemon
            url = web["url"] + "/cgi-bin/nc.sniffer.cgi?format=html&type=0"
            page = fetch(url)
            assert page.startswith("<!DOCTYPE html>") and "<svg" in page, page[:300]
            assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", page, re.I)
            shot = tmp_path / "report.png"
            run = chromium(f"--screenshot={shot}", "--window-size=1200,900", url)
            assert shot.stat().st_size > 2000, run.stderr[-2000:]
            dom = chromium("--dump-dom", url).stdout
    finally:
        shutil.rmtree(public, ignore_errors=True)
    keep = os.environ.get("NCSNIFFER_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    bars = [(float(h), float(v)) for h, v in BAR.findall(dom)]
    assert dom.count("<rect ") == len(bars) == 10 + 10     # the top 10 peers, the top 10 of 14 /24 groups
    tallest = max(v for _, v in bars[:10])
    for height, value in bars[:10]:
        assert abs(height - 200 * value / tallest) < 0.01
    assert bars[0][0] == 200.0 and bars[10][0] == 200.0


def test_readme_coalesce_key_is_made_for_the_web_user():
    """The README's key recipe, as written (paths aside): the key belongs to www-data."""
    if not is_root():
        pytest.skip("the recipe runs as root")
    etc = tempfile.mkdtemp(prefix="ncs-etc-")
    os.chmod(etc, 0o755)                             # as /etc/nc.sniffer
    try:
        script = recipe_script(["recipe-coalesce-key"], {"/etc/nc.sniffer": etc})
        run = subprocess.run(["sh", "-e", "-c", script], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr
        key = os.path.join(etc, "coalesce", "key")
        web = pwd.getpwnam(WEB_USER)
        assert os.stat(key).st_uid == web.pw_uid and os.stat(key).st_mode & 0o077 == 0
        check = subprocess.run(["runuser", "-u", WEB_USER, "--", "ssh-keygen", "-y", "-f", key],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0 and check.stdout.startswith("ssh-ed25519 "), check.stderr
    finally:
        shutil.rmtree(etc, ignore_errors=True)
