"""Reports (SPEC 8.1-8.4): grouping, exact report text, file-time helpers, web config, CGI.

Nothing here starts a process or a server; the daemon's UDP side is played by a
thread (``FakeDaemon``).  The real daemon and lighttpd are in
``test_report_integration.py``.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time

import pytest

from ncsniffer import report
from ncsniffer.errors import DumpFileError, NcSnifferError
from tests.conftest import other_users_dir

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "report")


def data(name: str) -> str:
    return os.path.join(DATA, name)


def expected(name: str) -> str:
    with open(data(name), encoding="utf-8") as fh:
        return fh.read()


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    """my_time shows local time: pin it so the expected files hold everywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def rec(R=0, W=0, E=0, N=()):
    return {"B": 0, "C": 0, "E": E, "N": list(N), "R": R, "S": 0, "T": 0, "W": W}


# --------------------------------------------------------------------------- grouping

def test_my_time_layout():
    assert report.my_time(1145923334) == "apr 25 00:02:14"
    assert report.my_time(0) == "jan 01 00:00:00"
    assert report.my_time(1136073600 + 4 * 86400 + 3723.9) == "jan 05 01:02:03"
    assert report.my_time(1e300) == "?"


@pytest.mark.parametrize("name, key", [
    ("www.example.com", "moc.elpmaxe"),
    ("WWW.Example.COM", "moc.elpmaxe"),
    ("host.example.com.au", "ua.moc.elpmaxe"),
    # the original's pattern wants a 3-letter middle part: co.uk names group as 'ku.oc'
    ("www.example.co.uk", "ku.oc"),
    (":ns.dialtoneinternet.net", "ten.tenretnienotlaid"),
    ("localhost", "tsohlacol"),
    ("a-b.c_d.org", "gro.d_c"),
])
def test_domain_key(name, key):
    assert report.domain_key(name) == key


def test_by_cidr24_keeps_last_group_and_sums():
    records = {
        "10.0.0.9": rec(1, 10, 5), "10.0.0.10": rec(2, 20, 7), "10.0.1.1": rec(4, 40, 3),
        "10.0.1.200": rec(8, 80, 9), "10.0.1.3": rec(16, 160, 1),
    }
    groups, rate, bw = report.by_cidr24(records)
    assert [(g.A, g.R, g.W, g.E) for g in groups] == [
        (["10.0.0.9", "10.0.0.10"], 3, 30, 7),
        (["10.0.1.1", "10.0.1.3", "10.0.1.200"], 28, 280, 9),
    ]
    assert (rate, bw) == (31, 310)
    assert report.network_text(groups[1].key) == "10.0.1.0/24"


def test_by_cidr24_ipv6_by_64():
    records = {"2001:db8::1": rec(1), "2001:db8::ffff:1": rec(1), "2001:db8:0:1::1": rec(1),
               "10.0.0.1": rec(1)}
    groups, _, _ = report.by_cidr24(records)
    assert [g.A for g in groups] == [["10.0.0.1"], ["2001:db8::1", "2001:db8::ffff:1"],
                                     ["2001:db8:0:1::1"]]
    assert report.network_text(groups[1].key) == "2001:db8::/64"


def test_by_name_merges_every_group_of_a_domain():
    records = {
        "10.0.0.1": rec(1, 100, 5, ["a.example.com"]),
        "10.0.1.1": rec(2, 200, 6, ["b.other.org"]),
        "10.0.2.1": rec(4, 400, 4, ["c.example.com"]),     # same key, not adjacent
        "10.0.3.1": rec(8, 800, 1, []),                    # no name: never merged
        "10.0.4.1": rec(16, 1600, 2, []),
    }
    groups, rate, bw = report.by_name(records)
    merged = {g.key: g for g in groups}
    assert merged["moc.elpmaxe"].A == ["10.0.0.1", "10.0.2.1"]
    assert (merged["moc.elpmaxe"].R, merged["moc.elpmaxe"].W, merged["moc.elpmaxe"].E) == (5, 500, 5)
    assert len(groups) == 4
    assert (rate, bw) == (31, 3100)


def test_by_name_first_ip_is_first_members():
    records = {"10.0.0.1": rec(N=["www.x.co.uk"]), "9.0.0.1": rec(N=["mail.y.co.uk"])}
    (group,), _, _ = report.by_name(records)
    assert group.A == ["9.0.0.1", "10.0.0.1"]
    records = {"10.0.0.1": rec(N=["mail.x.co.uk"]), "9.0.0.1": rec(N=["www.y.co.uk"])}
    (group,), _, _ = report.by_name(records)
    assert group.A == ["10.0.0.1", "9.0.0.1"]


# --------------------------------------------------------------------------- exact report text

@pytest.mark.parametrize("stats", ["mixed.stats", "mixed.perl.stats", "mixed.json.stats"])
@pytest.mark.parametrize("kind", [0, 1])
def test_report_text_all_formats(stats, kind):
    out = io.StringIO()
    assert report.report(out, data(stats), bool(kind)) is None
    assert out.getvalue() == expected(f"mixed.report.{kind}")


@pytest.mark.parametrize("base", ["perl_original", "empty"])
@pytest.mark.parametrize("kind", [0, 1])
def test_report_text(base, kind):
    out = io.StringIO()
    report.report(out, data(f"{base}.stats"), kind)
    assert out.getvalue() == expected(f"{base}.report.{kind}")


def test_read_stf_shape():
    stats = report.read_stf(data("perl_original.stats"))
    assert stats.records["10.1.2.40"]["N"] == ["o'brien.example.com", "second.example.com"]
    assert stats.header[0] == "# Net::Connection::Sniffer version 0.36"


HOSTILE = {
    "python_call": '\n# x\n{\n"10.0.0.1": __import__("os").system("touch {flag}"),\n}\n',
    "bare_call": '__import__("os").system("touch {flag}")\n',
    "perl_backticks": "\n# x\n{\n  my $dump = {\n\t'1.2.3.4'\t=> { B => `touch {flag}` },\n  };\n}\n",
    "perl_code": '{\n  system("touch {flag}"); my $dump = {};\n}\n',
    "truncated": '\n# x\n{\n"10.0.0.1": {"B": 1, "C": 1, "E": 1, "N": [], "R": 1, "S": 1, "T": 1, "W": 1},\n',
    "infinite": '\n# x\n{\n"10.0.0.1": {"B": 1, "W": 1e999},\n}\n',
    "not_an_ip": '\n# x\n{\n"x; rm -rf /": {"B": 1},\n}\n',
    "empty": "",
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_files_one_line_naming_the_file(tmp_path, kind):
    flag = tmp_path / "PWNED"
    path = tmp_path / f"{kind}.stats"
    path.write_text(HOSTILE[kind].replace("{flag}", str(flag)))
    with pytest.raises(DumpFileError) as info:
        report.report(io.StringIO(), str(path), False)
    assert str(path) in str(info.value)
    out, err = io.StringIO(), io.StringIO()
    assert report.cgi_main(["--stats", str(path), "0"], out=out, err=err) == 1
    assert out.getvalue() == ""
    assert err.getvalue().count("\n") == 1 and str(path) in err.getvalue()
    assert not flag.exists()


def test_perl_interpolation_is_never_run(tmp_path):
    """Perl would run ``@{[ ... ]}`` inside a double-quoted string; we only ever read text."""
    flag = tmp_path / "PWNED"
    path = tmp_path / "interp.stats"
    path.write_text('\n{\n  my $dump = { "1.2.3.4" => { N => ["@{[ system(\'touch %s\') ]}"] } };\n}\n'
                    % flag)
    try:
        text = report.report_text(str(path), False)
    except DumpFileError as exc:
        assert str(path) in str(exc)
    else:
        assert "1.2.3.4\t@{[ system(" in text
    assert not flag.exists()


def test_huge_file_refused_without_reading(tmp_path):
    path = tmp_path / "huge.stats"
    with open(path, "wb") as fh:
        fh.truncate(1 << 30)
    started = time.monotonic()
    with pytest.raises(DumpFileError, match="huge.stats"):
        report.read_stf(str(path))
    assert time.monotonic() - started < 1


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DumpFileError, match="nothere.stats"):
        report.report(io.StringIO(), str(tmp_path / "nothere.stats"), True)


# --------------------------------------------------------------------------- file times

@pytest.mark.integration
def test_presync_missing_and_old(tmp_path):
    path = tmp_path / "f"
    assert report.presync(str(path)) is None
    path.write_text("x")
    started = time.time()
    ctime = report.presync(str(path))
    assert ctime == int(os.stat(path).st_ctime)
    assert int(time.time()) > ctime          # waited into the next second if needed
    assert time.time() - started < 1.6
    assert report.presync(str(path)) == ctime


def test_presync_future_ctime(monkeypatch, tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    now = time.time()
    monkeypatch.setattr(report.time, "time", lambda: now - 100)
    assert report.presync(str(path)) is None


@pytest.mark.integration
def test_sync_update_and_timeout(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    old = report.presync(str(path))
    started = time.monotonic()
    assert report.sync(str(path), old, 0.3) is None
    assert 0.25 < time.monotonic() - started < 1.5
    timer = threading.Timer(0.2, lambda: path.write_text("y"))
    timer.start()
    try:
        assert report.sync(str(path), old, 5) > old
    finally:
        timer.cancel()
    assert report.wait_newer(str(path), old + 1000, 0.1)[1].endswith("not updated within 0.1 seconds")


@pytest.mark.integration
def test_sync_waits_for_creation_and_fails_fast_without_directory(tmp_path):
    path = tmp_path / "new"
    timer = threading.Timer(0.2, lambda: path.write_text("y"))
    timer.start()
    try:
        assert report.sync(str(path), 0, 5) is not None
    finally:
        timer.cancel()
    started = time.monotonic()
    assert report.sync(str(tmp_path / "no" / "file"), 0, 10) is None
    assert time.monotonic() - started < 0.5


def test_chkcache(tmp_path, monkeypatch):
    path = tmp_path / "c"
    assert report.chkcache(str(path)) is None
    path.write_text("x")
    ctime = int(os.stat(path).st_ctime)
    assert report.chkcache(str(path), 300) == ctime
    now = time.time()
    monkeypatch.setattr(report.time, "time", lambda: now + 301)
    assert report.chkcache(str(path), 300) is None
    assert report.chkcache(str(path), 400) == ctime
    assert report.chkcache(str(path)) is None            # default 300


@pytest.mark.slow
def test_get_lock_in_process(tmp_path):
    target = str(tmp_path / "cache.0.tmp")
    with report.get_lock(target, 1) as lock:
        assert os.path.exists(target)
        assert oct(os.stat(target).st_mode & 0o777) == oct(0o660)
        with open(target + ".lock") as fh:
            assert fh.read().strip() == str(os.getpid())
        lock.handle.write("hello")
        started = time.monotonic()
        with pytest.raises(report.LockTimeout, match="cache.0.tmp"):
            report.get_lock(target, 0.3)
        assert 0.25 < time.monotonic() - started < 1.5
    with report.get_lock(target, 0.3) as again:
        assert again.handle.read() == "hello"
    with pytest.raises(NcSnifferError, match="could not open lock file"):
        report.get_lock(str(tmp_path / "nodir" / "x"), 0.1)


# --------------------------------------------------------------------------- web configuration

def _in_child_as_nobody(fn):
    """Run fn in a forked child without root (permission checks are no-ops for root)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            os.write(w, str(fn()).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        result = fh.read()
    os.waitpid(pid, 0)
    return result


@pytest.fixture
def public_dir():
    """A directory an unprivileged child can enter (pytest's tmp_path is 0700)."""
    with other_users_dir("ncsniffer-report-", 0o755) as path:
        yield path


def test_chk_wconf_messages(tmp_path):
    d = str(tmp_path)
    assert report.chk_wconf({}) == "required statistics file specification missing"
    assert report.chk_wconf({"stats": f"{d}/no/x.stats"}) == \
        f"stats directory missing or not readable: '{d}/no/'"
    assert report.chk_wconf({"stats": f"{d}/x", "cache": f"{d}/no/c"}) == \
        f"cache directory not writable: '{d}/no/'"
    assert report.chk_wconf({"stats": f"{d}/x", "updto": "1O"}) == \
        "invalid characters in update timeout: '1O'"
    assert report.chk_wconf({"stats": f"{d}/x", "updto": -5}) == \
        "invalid characters in update timeout: '-5'"
    assert report.chk_wconf({"stats": f"{d}/x", "refresh": "5m"}) == \
        "invalid characters in refresh: '5m'"
    assert report.chk_wconf({"stats": f"{d}/x", "update": "no_such_host.invalid:10004"}) == \
        "invalid characters in host address: 'no_such_host.invalid'"
    assert report.chk_wconf({"stats": f"{d}/x", "update": "[::g]:10004"}) == \
        "invalid characters in host address: '::g'"
    assert report.chk_wconf({"stats": f"{d}/x", "update": "port 10004"}) == \
        "invalid update specification 'port 10004'"
    assert report.chk_wconf({"stats": f"{d}/x", "umask": "117"}) == "invalid umask '117'"


def test_chk_wconf_permission_messages(public_dir):
    closed = os.path.join(public_dir, "closed")
    os.mkdir(closed, 0o700)
    readonly = os.path.join(public_dir, "ro")
    os.mkdir(readonly, 0o755)
    cache = os.path.join(public_dir, "cache")
    with open(cache, "w"):
        pass
    os.chmod(cache, 0o644)
    assert _in_child_as_nobody(lambda: report.chk_wconf({"stats": f"{closed}/x"})) == \
        f"stats directory missing or not readable: '{closed}/'"
    assert _in_child_as_nobody(lambda: report.chk_wconf(
        {"stats": f"{public_dir}/x", "cache": f"{readonly}/c"})) == \
        f"cache directory not writable: '{readonly}/'"
    os.chmod(public_dir, 0o777)
    assert _in_child_as_nobody(lambda: report.chk_wconf(
        {"stats": f"{public_dir}/x", "cache": cache})) == \
        f"invalid permissions on '{cache}': not writable"


def test_chk_wconf_defaults_and_update_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conf = {"stats": "x.stats"}                       # no directory part: './'
    assert report.chk_wconf(conf) == ""
    assert conf == {"stats": "x.stats", "updto": 15, "refresh": 300}
    conf = {"stats": "x", "updto": "20", "refresh": 60, "update": 10004}
    assert report.chk_wconf(conf) == ""
    assert conf["update"] == ("127.0.0.1", 10004) and conf["updto"] == 20
    for spec, want in [("10004", ("127.0.0.1", 10004)), ("localhost:99", ("127.0.0.1", 99)),
                       ("127.0.0.2:7", ("127.0.0.2", 7)), ("[::1]:10004", ("::1", 10004))]:
        conf = {"stats": "x", "update": spec}
        assert report.chk_wconf(conf) == "" and conf["update"] == want
    conf = {"stats": "x", "update": None, "updto": 0, "refresh": ""}
    assert report.chk_wconf(conf) == "" and conf["updto"] == 15 and conf["refresh"] == 300


# --------------------------------------------------------------------------- dump requests

class FakeDaemon:
    """The daemon's UDP side: replies ``OK <now>`` to ``dump`` and rewrites the stats file."""

    def __init__(self, stats: str, source: str, reply: bytes | None = None, write: bool = True):
        self.stats, self.source, self.reply, self.write = stats, source, reply, write
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                msg, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            self.requests += 1
            self.sock.sendto(self.reply or b"OK %d" % int(time.time()), peer)
            if self.write and msg.startswith(b"dump"):
                shutil.copyfile(self.source, self.stats + ".tmp")
                os.replace(self.stats + ".tmp", self.stats)

    def __enter__(self) -> "FakeDaemon":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def stats(tmp_path):
    path = str(tmp_path / "nc.sniffer.stats")
    shutil.copyfile(data("mixed.stats"), path)
    return path


@pytest.mark.integration
def test_rqst_dump_updates_file(stats):
    with FakeDaemon(stats, data("mixed.stats")) as fake:
        before = report.presync(stats)
        assert report.rqst_dump(f"127.0.0.1:{fake.port}", stats, 0, 5) == ""
        assert fake.requests == 1
        assert int(os.stat(stats).st_ctime) > before
        # younger than age: no request
        assert report.rqst_dump(("127.0.0.1", fake.port), stats, 300, 5) == ""
        assert fake.requests == 1


def test_rqst_dump_disabled_does_nothing(stats):
    assert report.rqst_dump(None, stats, 0, 1) == ""
    assert report.rqst_dump("", stats, 0, 1) == ""


@pytest.mark.integration
def test_rqst_dump_timeout(stats):
    with FakeDaemon(stats, data("mixed.stats"), write=False) as fake:
        started = time.monotonic()
        error = report.rqst_dump(str(fake.port), stats, 0, 1)
        assert "timeout" in error and stats in error
        assert time.monotonic() - started < 3.5


@pytest.mark.integration
def test_rqst_dump_refused_fast(stats):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()                                        # nobody listens there now
    started = time.monotonic()
    error = report.rqst_dump(f"127.0.0.1:{port}", stats, 0, 10)
    assert error == f"dump request to 127.0.0.1:{port} failed: connection refused"
    assert time.monotonic() - started < 3


@pytest.mark.integration
def test_rqst_dump_question_marks(stats):
    with FakeDaemon(stats, data("mixed.stats"), reply=b"??", write=False) as fake:
        assert "refused: '??'" in report.rqst_dump(str(fake.port), stats, 0, 5)


def test_rqst_dump_bad_address_and_directory(stats, tmp_path):
    assert report.rqst_dump("nonsense", stats, 0, 1) == "invalid update specification 'nonsense'"
    assert "stats directory missing" in report.rqst_dump("1", str(tmp_path / "no" / "f"), 0, 1)


# --------------------------------------------------------------------------- the web report

@pytest.mark.integration
def test_web_report_cache_cycle(stats, tmp_path):
    cache = str(tmp_path / "sniffer.cache")
    with FakeDaemon(stats, data("mixed.stats")) as fake:
        conf = {"stats": stats, "cache": cache, "update": str(fake.port), "refresh": 300, "updto": 5}
        out = io.StringIO()
        assert report.web_report(dict(conf), False, out, escape=False) == ""
        assert out.getvalue() == expected("mixed.report.0")
        assert fake.requests == 1
        assert not os.path.exists(cache + ".0.tmp")
        with open(cache + ".0") as fh:
            assert fh.read() == expected("mixed.report.0")
        out = io.StringIO()
        assert report.web_report(dict(conf), False, out, escape=False) == ""
        assert out.getvalue() == expected("mixed.report.0") and fake.requests == 1
        out = io.StringIO()
        report.web_report(dict(conf), True, out, escape=False)
        assert out.getvalue() == expected("mixed.report.1") and fake.requests == 2


@pytest.mark.integration
def test_web_report_stale_cache_is_rebuilt(stats, tmp_path, monkeypatch):
    cache = str(tmp_path / "sniffer.cache")
    with open(cache + ".0", "w") as fh:
        fh.write("old report\n")
    with FakeDaemon(stats, data("mixed.stats")) as fake:
        conf = {"stats": stats, "cache": cache, "update": str(fake.port), "refresh": 1, "updto": 5}
        time.sleep(2.1)
        out = io.StringIO()
        report.web_report(conf, False, out, escape=False)
        assert out.getvalue() == expected("mixed.report.0") and fake.requests == 1


def test_web_report_without_cache_or_update(stats):
    out = io.StringIO()
    assert report.web_report({"stats": stats}, True, out, escape=False) == ""
    assert out.getvalue() == expected("mixed.report.1")


@pytest.mark.integration
def test_web_report_without_cache_asks_only_when_old(stats):
    with FakeDaemon(stats, data("mixed.stats")) as fake:
        out = io.StringIO()
        report.web_report({"stats": stats, "update": str(fake.port)}, False, out, escape=False)
        assert fake.requests == 0 and out.getvalue() == expected("mixed.report.0")
        report.web_report({"stats": stats, "update": str(fake.port), "refresh": 1}, False,
                          io.StringIO())
        # the file was just copied: 1 s may or may not have passed; 0 s never is 'young'
        assert fake.requests in (0, 1)


def test_web_report_escapes_html(tmp_path):
    path = tmp_path / "x.stats"
    path.write_text('\n# bpf:\t\thost a&b\n{\n"10.0.0.1": {"N": ["<script>x</script>.evil.org"], '
                    '"W": 7200, "R": 60, "E": 0, "B": 0, "C": 0, "S": 0, "T": 0},\n}\n')
    out = io.StringIO()
    report.web_report({"stats": str(path)}, False, out)
    assert "&lt;script&gt;x&lt;/script&gt;.evil.org" in out.getvalue()
    assert "host a&amp;b" in out.getvalue() and "<script>" not in out.getvalue()


def test_web_report_error_is_one_line(tmp_path):
    out = io.StringIO()
    error = report.web_report({"stats": str(tmp_path / "missing.stats")}, False, out)
    assert error and out.getvalue() == error + "\n" and "missing.stats" in error
    out = io.StringIO()
    report.web_report({}, False, out)
    assert out.getvalue() == "required statistics file specification missing\n"


@pytest.mark.integration
def test_web_report_dump_failure_is_one_line(stats, tmp_path):
    out = io.StringIO()
    with FakeDaemon(stats, data("mixed.stats"), write=False) as fake:
        conf = {"stats": stats, "cache": str(tmp_path / "c"), "update": str(fake.port), "updto": 1}
        assert "timeout" in report.web_report(conf, False, out)
    assert out.getvalue().count("\n") == 1


# --------------------------------------------------------------------------- command line

def test_cgi_terminal_mode(stats):
    out, err = io.StringIO(), io.StringIO()
    assert report.cgi_main(["--stats", stats, "1"], out=out, err=err) == 0
    assert out.getvalue() == expected("mixed.report.1") and err.getvalue() == ""
    out = io.StringIO()
    assert report.cgi_main(["--stats", stats], out=out, err=err) == 0
    assert out.getvalue() == expected("mixed.report.0")


@pytest.mark.integration
def test_cgi_terminal_mode_with_update(stats):
    with FakeDaemon(stats, data("mixed.stats")) as fake:
        out, err = io.StringIO(), io.StringIO()
        assert report.cgi_main(["--stats", stats, "--update", f"127.0.0.1:{fake.port}", "0"],
                               out=out, err=err) == 0
        assert fake.requests == 1 and out.getvalue() == expected("mixed.report.0")


def test_cgi_usage_and_errors(stats):
    out, err = io.StringIO(), io.StringIO()
    assert report.cgi_main(["-h"], out=out, err=err) == 0
    assert "--stats FILE" in out.getvalue() and "<!--#exec" in out.getvalue()
    out = io.StringIO()
    assert report.cgi_main(["--stats", stats, "--bogus"], out=out, err=err) == 1
    assert err.getvalue() == "nc.sniffer.cgi: unrecognized arguments: --bogus\n"


def test_cgi_web_mode_config_lookup(stats, tmp_path):
    docroot = tmp_path / "www"
    docroot.mkdir()
    program = str(docroot / "nc.sniffer.cgi")
    out = io.StringIO()
    assert report.cgi_main(["0"], out=out, environ={}, program=program) == 1
    assert out.getvalue().startswith("no configuration: set NCSNIFFER_CGI_CONF")
    (docroot / "nc.sniffer.cgi.conf").write_text(f"# next to the script\n{{'stats': {stats!r}}}\n")
    out = io.StringIO()
    assert report.cgi_main(["1"], out=out, environ={}, program=program) == 0
    assert out.getvalue() == expected("mixed.report.1")
    other = tmp_path / "other.conf"
    other.write_text("{'stats': '/nonexistent/dir/x.stats'}")
    out = io.StringIO()
    assert report.cgi_main([], out=out, environ={"NCSNIFFER_CGI_CONF": str(other)},
                           program=program) == 1
    assert out.getvalue() == "stats directory missing or not readable: '/nonexistent/dir/'\n"


def test_cgi_reads_perl_sample_config(stats, tmp_path):
    conf = tmp_path / "nc.sniffer.cgi.pl"
    conf.write_text("#!/usr/bin/perl\nuse Net::Connection::Sniffer::Report qw(web_report);\n"
                    f"my $wconf = {{\n  # comment\n\tstats\t=> '{stats}',\n\trefresh => 300,\n}};\n"
                    "web_report($wconf);\n")
    out = io.StringIO()
    assert report.cgi_main(["-c", str(conf), "0"], out=out, environ={}) == 0
    assert out.getvalue() == expected("mixed.report.0")


def test_cgi_config_is_never_executed(tmp_path):
    flag = tmp_path / "PWNED"
    conf = tmp_path / "bad.conf"
    conf.write_text(f"__import__('os').system('touch {flag}')")
    out = io.StringIO()
    assert report.cgi_main(["-c", str(conf)], out=out, environ={}) == 1
    assert "only plain values" in out.getvalue() and not flag.exists()


def test_sample_config_reads():
    conf = report.load_wconf(os.path.join(DATA, "..", "..", "..", "samples", "nc.sniffer.cgi.sample"))
    assert sorted(conf) == ["cache", "refresh", "stats", "update", "updto"]
    assert conf["update"] == "127.0.0.1:10004"


# --------------------------------------------------------------------------- crafted files (11.12, 11.18)

from tests import hostile  # noqa: E402

CONTROLS = [chr(i) for i in range(32) if chr(i) not in "\t\n"] + \
    [chr(i) for i in range(0x7f, 0xa0)] + ["\u202e"]


def shows_no_controls(text: str) -> bool:
    return not any(c in text for c in CONTROLS)


@pytest.mark.slow
@pytest.mark.parametrize("kind,fmt", hostile.BAD_CASES)
def test_crafted_files_one_line_in_every_reader(tmp_path, kind, fmt):
    path = hostile.write(tmp_path / f"{kind}.{fmt}.stats", kind, fmt)
    with pytest.raises(DumpFileError, match="not a readable stats file"):
        report.read_stf(path)
    out = io.StringIO()
    with pytest.raises(DumpFileError) as info:
        report.report(out, path, True)
    assert str(path) in str(info.value) and out.getvalue() == ""
    out, err = io.StringIO(), io.StringIO()
    assert report.cgi_main(["--stats", path, "1"], out=out, err=err) == 1
    assert out.getvalue() == "" and err.getvalue().count("\n") == 1
    assert err.getvalue().startswith(f"nc.sniffer.cgi: {path}: not a readable stats file: ")
    assert shows_no_controls(err.getvalue())
    out = io.StringIO()
    error = report.web_report({"stats": path}, False, out)
    assert out.getvalue() == html_line(error) and path in error
    assert not os.path.exists("/tmp/ncs-hostile-ran")


def html_line(text: str) -> str:
    import html
    return html.escape(text, quote=False) + "\n"


@pytest.mark.parametrize("fmt", hostile.FORMATS)
def test_terminal_report_strips_control_characters(tmp_path, fmt):
    path = hostile.write(tmp_path / "odd.stats", "odd_names", fmt)
    (tmp_path / "odd.stats").write_text((tmp_path / "odd.stats").read_text()
                                        .replace("# device:\teth0", "# device:\teth0\x1b[2J\x07"))
    out, err = io.StringIO(), io.StringIO()
    assert report.cgi_main(["--stats", path, "0"], out=out, err=err) == 0, err.getvalue()
    text = out.getvalue()
    assert shows_no_controls(text), repr(text)
    assert "# device:\teth0\tnon-promiscuous\n" in text
    assert "\n1.2.3.4\t<script>alert(1)</script>.evil.org\n\t\tred.evil.org\n" \
           "\t\tlinerate= 999999 connections per minute\n\t\tc1control.evil.org\n" \
           "\t\trtlgro.live\n" in text
    assert "\nrate\t\t= 999999" not in text                     # no forged report line


@pytest.mark.parametrize("fmt", hostile.FORMATS)
def test_web_report_escapes_and_strips(tmp_path, fmt):
    path = hostile.write(tmp_path / "odd.stats", "odd_names", fmt)
    out = io.StringIO()
    assert report.web_report({"stats": path}, False, out) == ""
    page = out.getvalue()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.evil.org" in page and "<script>" not in page
    assert shows_no_controls(page) and "\t\tred.evil.org\n" in page


def test_scoped_and_infinite_records_never_reach_the_report(tmp_path):
    """Before: a scoped IPv6 key crashed ip_order (OSError), a Perl 1e999 int() (OverflowError)."""
    for kind, fmt in (("scoped_ipv6", "python"), ("infinite", "perl"), ("huge_int", "json")):
        path = hostile.write(tmp_path / f"{kind}.stats", kind, fmt)
        with pytest.raises(DumpFileError):
            report.report_text(path, False)


# --------------------------------------------------------------------------- K (10.3)

@pytest.mark.parametrize("fmt", ["python", "perl", "json"])
@pytest.mark.parametrize("kind", [0, 1])
def test_report_of_a_file_with_k_is_unchanged(tmp_path, fmt, kind):
    """K is read from every layout and leaves the report as it was."""
    from ncsniffer import dumpfile
    stats = dumpfile.read_stats(data("mixed.stats"))
    one = {**dumpfile.K_ZERO, "udp": 1, "out": 1, "active": 1}
    rows = dumpfile.rows_from_dicts({ip: dict(r, K=one) for ip, r in stats.records.items()})
    path = str(tmp_path / f"k.{fmt}")
    if fmt == "json":
        with open(data("mixed.json.stats"), encoding="utf-8") as fh:
            head = fh.read().split(', "records": {')[0]
        text = head + ', "records": {\n' + "".join(dumpfile._json_document(
            dumpfile.Header(0, 0, 0, 0, 0, "", False, ""), rows)).split(', "records": {\n')[1]
    else:
        text = "\n" + "\n".join(stats.header) + "\n" + "".join(dumpfile.render_body(rows, fmt))
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    assert all(r["K"] == one for r in report.read_stf(path).records.values())
    out = io.StringIO()
    report.report(out, path, bool(kind))
    assert out.getvalue() == expected(f"mixed.report.{kind}")
