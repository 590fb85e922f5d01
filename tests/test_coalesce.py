"""Coalescing without a network: config checks, argument lists, the merge, the
composite files, the lock, and nc.sniffer.dump against a UDP stand-in on loopback."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from ncsniffer import coalesce, dumpfile
from ncsniffer.coalesce import CoalesceError
from tests.conftest import hold_lock

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "coalesce")
HOSTS = ("alpha", "beta", "gamma")


@pytest.fixture
def utc():
    """Reports show local time: pin it so expected files compare exactly."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def config(tmp_path, **extra) -> dict:
    conf = {"cache": str(tmp_path / "sniffer.cache"),
            "src": {h: {"exec": "nc.sniffer.dump", "fetch": f"/var/run/{h}.stats"}
                    for h in HOSTS}}
    conf.update(extra)
    return conf


def fetched(tmp_path, hosts=HOSTS) -> None:
    """Put the test hosts' stats files where rsync would have left them."""
    for h in hosts:
        shutil.copy(os.path.join(DATA, f"{h}.stats"), tmp_path / f"{h}.stats")


def expected(name: str) -> str:
    with open(os.path.join(DATA, name), encoding="utf-8") as fh:
        return fh.read()


# --------------------------------------------------------------------------- host names

@pytest.mark.parametrize("name,ssh,rsync", [
    ("web1", "web1", "web1"),
    ("web1.example.com", "web1.example.com", "web1.example.com"),
    ("nobody@10.0.0.7", "nobody@10.0.0.7", "nobody@10.0.0.7"),
    ("[2001:db8::1]", "2001:db8::1", "[2001:db8::1]"),
    ("sniff@[2001:db8::1]", "sniff@2001:db8::1", "sniff@[2001:db8::1]"),
])
def test_good_host_names(name, ssh, rsync):
    assert coalesce.check_host(name) == (ssh, rsync)


@pytest.mark.parametrize("name", [
    "host;touch /tmp/pwned", "$(touch /tmp/pwned)", "`id`", "-oProxyCommand=touch x",
    "a b", "host|id", "host&id", "host\nid", "", "@host", "user@", "[not:v6:zz]",
    "x" * 300, "h'q", 'h"q', "host:22", "../etc",
])
def test_bad_host_names(name):
    with pytest.raises(CoalesceError, match="invalid source host name"):
        coalesce.check_host(name)


def test_local_copy_names_stay_in_the_cache_dir():
    assert coalesce.local_copy_name("sniff@[2001:db8::1]") == "sniff@_2001_db8__1_.stats"
    assert "/" not in coalesce.local_copy_name("a.b")


# --------------------------------------------------------------------------- configuration

def test_config_defaults(tmp_path):
    cfg = coalesce.rem_wchk(config(tmp_path))
    assert [s.name for s in cfg.sources] == list(HOSTS)
    assert cfg.sources[0].local == str(tmp_path / "alpha.stats")
    assert cfg.sources[0].command == ("nc.sniffer.dump",)
    assert (cfg.updto, cfg.refresh, cfg.timeout) == (15, 300, coalesce.FETCH_TIMEOUT)
    assert cfg.ssh == ["ssh"] and cfg.rsync == ["rsync"]
    assert cfg.composite == str(tmp_path / "composite.stats")
    assert cfg.cache_file() == str(tmp_path / "sniffer.cache.1")
    assert cfg.stats is None and cfg.update is None


@pytest.mark.parametrize("change,message", [
    ({"cache": None}, "missing cache file entry"),
    ({"cache": "/nonexistent/dir/cache"}, "cache directory not writable: '/nonexistent/dir/'"),
    ({"src": {"bad;name": {"fetch": "x"}}}, "invalid source host name"),
    ({"src": {"h": {"exec": "x", "fetch": 5}}}, "'fetch' (the remote stats file) is invalid"),
    ({"src": {"h": "just a string"}}, "needs {'exec'"),
    ({"src": ["h"]}, "'src' must map host names"),
    ({"src": {}}, "nothing to coalesce"),
    ({"refresh": "5m"}, "invalid characters in refresh: '5m'"),
    ({"updto": "x"}, "invalid characters in update timeout: 'x'"),
    ({"timeout": "-1"}, "invalid characters in timeout: '-1'"),
    ({"ssh": "ssh 'unclosed"}, "invalid ssh command"),
    ({"ssh": ["ssh", 3]}, "invalid ssh command"),
    ({"format": "xml"}, "invalid composite format 'xml'"),
    ({"src": {"composite": {"fetch": "f"}}}, "source 'composite' clashes with composite.stats"),
    ({"src": {"[::1]": {"fetch": "f"}, "_::1_": {"fetch": "f"}}}, "invalid source host name"),
    ({"src": {"[::1]": {"fetch": "f"}, "___1_": {"fetch": "f"}}},
     "source '___1_' clashes with source '[::1]'"),
    ({"src": {"localhost": {"fetch": "f"}}, "update": "1", "stats": "/tmp/s"},
     "source 'localhost' clashes with the local daemon"),
    ({"update": "10004"}, "required statistics file specification missing"),
    ({"update": "x y:z", "stats": "/tmp/s"}, "invalid update specification 'x y:z'"),
])
def test_config_errors(tmp_path, change, message):
    conf = config(tmp_path)
    conf.update(change)
    with pytest.raises(CoalesceError) as info:
        coalesce.rem_wchk(conf)
    assert message in str(info.value)


def test_local_daemon_settings(tmp_path):
    cfg = coalesce.rem_wchk(config(tmp_path, update="10004", stats=str(tmp_path / "s.stats"),
                                   updto="7"))
    assert cfg.update == ("127.0.0.1", 10004) and cfg.updto == 7
    assert cfg.stats == str(tmp_path / "s.stats")


def test_load_config_forms(tmp_path):
    literal = tmp_path / "a.conf"
    literal.write_text("# comment\n{'cache': '/x/c', 'src': {'h': {'fetch': 'f'}}}\n")
    script = tmp_path / "b.cgi"
    script.write_text("import sys\nCONFIG = {'cache': '/x/c', # here\n 'refresh': 60}\n"
                      "sys.exit(0)\n")
    perl = tmp_path / "c.cgi"
    perl.write_text("#!/usr/bin/perl\nuse Net::Connection::Sniffer::Report qw(rem_report);\n"
                    "my $wconf = {\n\tcache\t=> './tmp/sniffer.cache',\n"
                    "\tsrc\t=> {\n\t  'web1' => { exec => '/usr/local/bin/nc.sniffer.dump.pl',\n"
                    "\t\tfetch => '/var/run/nc.sniffer/nc.sniffer.stats' },\n\t},\n};\n"
                    "rem_report($wconf);\n")
    assert coalesce.load_config(str(literal))["src"] == {"h": {"fetch": "f"}}
    assert coalesce.load_config(str(script)) == {"cache": "/x/c", "refresh": 60}
    assert coalesce.load_config(str(perl))["src"]["web1"]["fetch"] == \
        "/var/run/nc.sniffer/nc.sniffer.stats"


def test_load_config_never_runs_code(tmp_path):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.conf"
    evil.write_text(f"CONFIG = {{'cache': open({str(marker)!r}, 'w').name}}\n")
    with pytest.raises(CoalesceError, match="only plain values"):
        coalesce.load_config(str(evil))
    assert not marker.exists()


def test_samples_are_valid_configs(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    conf = coalesce.load_config(os.path.join(root, "samples", "nc.sniffer.coalesce.cgi.sample"))
    assert {"cache", "src", "ssh", "rsync", "refresh", "timeout"} <= set(conf)
    for name in conf["src"]:
        coalesce.check_host(name)
    dump = coalesce.load_config(os.path.join(root, "samples", "nc.sniffer.dump.sample"))
    assert {"stats", "update", "age"} <= set(dump)


# --------------------------------------------------------------------------- argument lists

def test_ssh_and_rsync_argument_lists(tmp_path):
    conf = config(tmp_path, ssh="ssh -F '/etc/my ssh/config'", timeout=20)
    conf["src"] = {"web1": {"exec": ["nc.sniffer.dump", "-c", "$(touch /tmp/x); id"],
                            "fetch": "/var/run/n s.stats"}}
    cfg = coalesce.rem_wchk(conf)
    src = cfg.sources[0]
    assert coalesce.ssh_argv(cfg, src) == [
        "ssh", "-F", "/etc/my ssh/config", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
        "--", "web1", "nc.sniffer.dump -c '$(touch /tmp/x); id'"]
    assert coalesce.rsync_argv(cfg, src) == [
        "rsync", "-utz", "-s", "--timeout=20", "-e",
        "ssh -F '/etc/my ssh/config' -o BatchMode=yes -o ConnectTimeout=20",
        "--", "web1:/var/run/n s.stats", str(tmp_path / "web1.stats")]


class FakeRunner:
    """Stands in for run_bounded: records argv lists, answers from a script."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, argv, timeout):
        self.calls.append(argv[0])
        return self.answers.pop(0)


@pytest.mark.parametrize("answers,calls,result", [
    ([coalesce.Outcome(0), coalesce.Outcome(0)], ["ssh", "rsync"], ""),
    ([coalesce.Outcome(255, stderr="ssh: connect to host h port 22: Connection refused\n")],
     ["ssh"], "ssh exit 255: ssh: connect to host h port 22: Connection refused"),
    ([coalesce.Outcome(None, timed_out=True)], ["ssh"], "ssh timed out after 60 s"),
    ([coalesce.Outcome(1, stderr="nc.sniffer.dump: timeout\n"), coalesce.Outcome(0)],
     ["ssh", "rsync"], "ssh exit 1: nc.sniffer.dump: timeout"),
    ([coalesce.Outcome(0), coalesce.Outcome(23, stderr="rsync: no such file\n")],
     ["ssh", "rsync"], "rsync exit 23: rsync: no such file"),
])
def test_fetch_source_steps(tmp_path, answers, calls, result):
    cfg = coalesce.rem_wchk(config(tmp_path))
    runner = FakeRunner(answers)
    assert coalesce.fetch_source(cfg, cfg.sources[0], runner) == result
    assert runner.calls == calls


def test_fetch_without_exec_only_copies(tmp_path):
    conf = config(tmp_path)
    conf["src"] = {"h": {"fetch": "/f"}}
    cfg = coalesce.rem_wchk(conf)
    runner = FakeRunner([coalesce.Outcome(0)])
    assert coalesce.fetch_source(cfg, cfg.sources[0], runner) == ""
    assert runner.calls == ["rsync"]


@pytest.mark.integration
def test_rem_dump_runs_hosts_in_parallel(tmp_path):
    cfg = coalesce.rem_wchk(config(tmp_path))

    def slow(argv, timeout):
        time.sleep(0.5)
        return coalesce.Outcome(0)
    started = time.monotonic()
    assert coalesce.rem_dump(cfg, slow) == {h: "" for h in HOSTS}
    assert time.monotonic() - started < 2.0        # 3 hosts x 2 steps x 0.5 s in series = 3 s


def test_rem_dump_survives_a_crashing_host(tmp_path):
    cfg = coalesce.rem_wchk(config(tmp_path))

    def runner(argv, timeout):
        if "beta" in argv:
            raise RuntimeError("boom")
        return coalesce.Outcome(0)
    result = coalesce.rem_dump(cfg, runner)
    assert result["alpha"] == "" and result["gamma"] == ""
    assert "internal error: RuntimeError: boom" in result["beta"]


@pytest.mark.integration
def test_run_bounded_kills_the_whole_group():
    started = time.monotonic()
    outcome = coalesce.run_bounded(["sh", "-c", "sleep 30 & sleep 30"], 0.5)
    assert outcome.timed_out and not outcome.ok
    assert time.monotonic() - started < 5


def test_run_bounded_reports_status_and_missing_programs():
    assert coalesce.run_bounded(["sh", "-c", "echo oops >&2; exit 3"], 5).reason("x", 5) == \
        "x exit 3: oops"
    missing = coalesce.run_bounded(["/nonexistent/ssh"], 5)
    assert missing.returncode is None and "cannot run /nonexistent/ssh" in missing.stderr


# --------------------------------------------------------------------------- the merge

def rec(b=1, c=1, e=100, n=(), r=0, s=50, t=0, w=0) -> dict:
    return {"B": b, "C": c, "E": e, "N": list(n), "R": r, "S": s, "T": t, "W": w}


def test_merge_record_rules():
    a = rec(b=10, c=2, e=300, n=["x.example.com"], r=60, s=100, t=500, w=3600)
    b = rec(b=5, c=1, e=200, n=[":ns.example.net", "a.example.com", "x.example.com"],
            r=30, s=90, t=700, w=1800)
    assert coalesce.merge_record(a, b) == {
        "B": 15, "C": 3, "E": 300, "N": ["a.example.com", "x.example.com", ":ns.example.net"],
        "R": 90, "S": 90, "T": 700, "W": 5400}


def test_merge_keeps_inputs_and_single_records_unchanged():
    a = {"10.0.0.1": rec(n=["b", "a"])}
    b = {"10.0.0.2": rec(n=["z"])}
    merged = coalesce.merge_all((a, b))
    assert merged == {"10.0.0.1": rec(n=["b", "a"]), "10.0.0.2": rec(n=["z"])}
    merged["10.0.0.1"]["N"].append("c")
    assert a == {"10.0.0.1": rec(n=["b", "a"])}


def test_newest_e_not_c():
    """The original compared E with C; a big C must not become the epoch."""
    merged = coalesce.merge_all(({"10.0.0.1": rec(c=10**12, e=5)}, {"10.0.0.1": rec(c=1, e=7)}))
    assert merged["10.0.0.1"]["E"] == 7


IPS = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.1.1", "192.0.2.9", "2001:db8::1"])
NAMES = st.lists(st.sampled_from(["a.example.com", "B.example.com", ":ns.example.net",
                                  "x.example.org", "b.example.com"]), max_size=3)
COUNT = st.integers(min_value=0, max_value=10**12)
RECORD = st.builds(rec, b=COUNT, c=COUNT, e=COUNT, n=NAMES, r=COUNT, s=COUNT, t=COUNT, w=COUNT)
RECORDS = st.dictionaries(IPS, RECORD, max_size=5)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(RECORDS, RECORDS, RECORDS)
def test_merge_is_associative(a, b, c):
    def m(x, y):
        return coalesce.merge_all((x, y))
    assert m(m(a, b), c) == m(a, m(b, c))


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(RECORDS, RECORDS)
def test_merge_is_commutative(a, b):
    assert coalesce.merge_all((a, b)) == coalesce.merge_all((b, a))


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(st.lists(RECORDS, max_size=5), st.randoms(use_true_random=False))
def test_merge_all_is_order_free(parts, rnd):
    shuffled = list(parts)
    rnd.shuffle(shuffled)
    assert coalesce.merge_all(parts) == coalesce.merge_all(shuffled)
    assert coalesce.merge_all([]) == {}


def test_grand_totals_and_failures_in_the_header():
    parts = [coalesce.Part("a", ["# hits:\t\t10 per minute", "# bytes:\t7 per second"], {}),
             coalesce.Part("b", ["# hits:\t\t5 per minute", "# bytes:\t1 per second"], {},
                           failure="rsync timed out after 60 s"),
             coalesce.Part("c", [], {}, failure="ssh exit 255:\tgone\nreally", used=False)]
    assert coalesce.composite_header(parts, 4) == [
        "# ncsniffer composite of 3 hosts",
        "", "# host:\ta", "# hits:\t\t10 per minute", "# bytes:\t7 per second",
        "", "# host:\tb\tFAILED (rsync timed out after 60 s), its last stats file is used",
        "# hits:\t\t5 per minute", "# bytes:\t1 per second",
        "", "# host:\tc\tFAILED (ssh exit 255: gone really), no stats file",
        "", "# grand total all hosts", "# hits:\t\t15 per minute", "# bytes:\t8 per second",
        "# users:\t4", "# failed hosts:\tb c"]


# --------------------------------------------------------------------------- composite files

def test_rem_update_exact(tmp_path, utc):
    """Python, Perl (as the original writes it) and JSON stats merged, checked exactly."""
    fetched(tmp_path)
    parts = coalesce.rem_update(config(tmp_path), {})
    assert [p.name for p in parts] == list(HOSTS)
    assert (tmp_path / "composite.stats").read_text() == expected("expected.composite.stats")
    assert (tmp_path / "sniffer.cache.1").read_text() == expected("expected.report.1")
    assert (tmp_path / "sniffer.cache.0").read_text() == expected("expected.report.0")


def test_composite_in_perl_format_reads_back(tmp_path, utc):
    fetched(tmp_path)
    coalesce.rem_update(config(tmp_path, format="perl"), {})
    perl = dumpfile.read_stats(str(tmp_path / "composite.stats"))
    python = dumpfile.read_stats(os.path.join(DATA, "expected.composite.stats"))
    assert perl.format == "perl"
    assert perl.records == python.records and perl.header == python.header
    assert (tmp_path / "sniffer.cache.1").read_text() == expected("expected.report.1")


def test_missing_and_broken_hosts_are_named(tmp_path, utc):
    fetched(tmp_path, ("alpha",))
    (tmp_path / "gamma.stats").write_text("{'not': 'stats'}\n")
    coalesce.rem_update(config(tmp_path), {"beta": "ssh timed out after 60 s"})
    text = (tmp_path / "sniffer.cache.1").read_text()
    assert "# host:\tbeta\tFAILED (ssh timed out after 60 s), no stats file\n" in text
    assert "# host:\tgamma\tFAILED (" in text and "not a readable stats file" in text
    assert "# failed hosts:\tbeta gamma\n" in text
    assert "users\t\t= 4\n" in text                 # alpha's records only


# --------------------------------------------------------------------------- the lock

@pytest.mark.integration
def test_lock_holds_pid_and_is_exclusive(tmp_path):
    path = str(tmp_path / "c.1.lock")
    proc = hold_lock("coalesce.take_lock", path, 30)
    try:
        assert coalesce.lock_holder(path) == proc.pid
        assert open(path).read().strip() == str(proc.pid)
        assert coalesce.try_lock(path) is None
        started = time.monotonic()
        assert coalesce.take_lock(path, wait=0.5) is None
        assert coalesce.take_lock(path, wait=0.3) is None
        assert 0.5 <= time.monotonic() - started < 3
    finally:
        proc.kill()
        proc.wait(10)
    # its process is gone: the lock is free at once, and ours now
    assert coalesce.lock_holder(path) is None
    with coalesce.take_lock(path, wait=0) as lock:
        assert lock is not None and coalesce.lock_holder(path) == os.getpid()
    assert not os.path.exists(path)


def test_a_stale_lock_file_is_taken_over(tmp_path):
    path = tmp_path / "c.1.lock"
    dead = subprocess.Popen(["true"])
    dead.wait()
    path.write_text(f"{dead.pid}\n")
    assert coalesce.lock_holder(str(path)) is None
    lock = coalesce.take_lock(str(path), wait=0)
    assert lock is not None and path.read_text() == f"{os.getpid()}\n"
    lock.release()


@pytest.mark.integration
def test_waiter_gets_the_lock_when_the_holder_ends(tmp_path):
    path = str(tmp_path / "c.1.lock")
    proc = hold_lock("coalesce.take_lock", path, 0.7)
    try:
        started = time.monotonic()
        lock = coalesce.take_lock(path, wait=10)
        assert lock is not None and 0.3 < time.monotonic() - started < 5
        lock.release()
    finally:
        proc.wait(10)


@pytest.mark.slow
def test_busy_coalescer_after_the_wait_shows_the_old_report(tmp_path, utc):
    fetched(tmp_path)
    conf = config(tmp_path, refresh=1)
    coalesce.rem_update(conf, {})
    proc = hold_lock("coalesce.take_lock", str(tmp_path / "sniffer.cache.1.lock"), 30)
    try:
        time.sleep(2.1)                                   # the cache is now older than refresh
        out = io.StringIO()
        assert coalesce.rem_report(conf, out, wait=0.3) == 0
        assert out.getvalue().startswith(f"# note: another coalescer (pid {proc.pid}) is still "
                                          f"busy after 0.3 s; showing the previous report\n")
        assert out.getvalue().endswith(expected("expected.report.1"))
    finally:
        proc.kill()
        proc.wait(10)


# --------------------------------------------------------------------------- rem_report / cgi_main

def test_rem_report_builds_then_serves_the_cache(tmp_path, utc, monkeypatch):
    fetched(tmp_path)
    calls = []

    def runner(argv, timeout):
        calls.append(argv[0])
        return coalesce.Outcome(0)
    monkeypatch.setattr(coalesce, "run_bounded", runner)
    cfg = coalesce.rem_wchk(config(tmp_path))
    out, again = io.StringIO(), io.StringIO()
    assert coalesce.rem_report(cfg, out) == 0
    assert calls.count("ssh") == 3 and calls.count("rsync") == 3
    assert coalesce.rem_report(cfg, again) == 0
    assert len(calls) == 6                        # fresh cache: nothing fetched again
    assert out.getvalue() == again.getvalue() == expected("expected.report.1")
    assert not os.path.exists(cfg.cache_file() + ".lock")


def test_cgi_main_errors_are_one_escaped_line(tmp_path):
    out = io.StringIO()
    assert coalesce.cgi_main([], config={"cache": str(tmp_path / "c"),
                                         "src": {"<b>;x": {"fetch": "f"}}}, out=out) == 1
    assert out.getvalue() == "invalid source host name '&lt;b&gt;;x'\n"
    out = io.StringIO()
    assert coalesce.cgi_main(["-c", str(tmp_path / "missing.conf")], out=out) == 1
    assert out.getvalue().startswith("cannot read '")


def test_cgi_main_finds_its_config(tmp_path, monkeypatch):
    monkeypatch.delenv(coalesce.CGI_CONF_ENV, raising=False)
    program = tmp_path / "nc.sniffer.coalesce.cgi"
    (tmp_path / "nc.sniffer.coalesce.cgi.conf").write_text("{'cache': None}\n")
    out = io.StringIO()
    assert coalesce.cgi_main([], out=out, environ={}, program=str(program)) == 1
    assert out.getvalue() == "missing cache file entry\n"
    with pytest.raises(CoalesceError, match="no configuration"):
        coalesce.find_config(None, "X", str(tmp_path / "other"), "/nonexistent", {})


# --------------------------------------------------------------------------- nc.sniffer.dump

class FakeDaemon:
    """A UDP dump listener on loopback: on 'dump' it rewrites the stats file."""

    def __init__(self, stats: str):
        self.stats = stats
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self.running = True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while self.running:
            try:
                data, peer = self.sock.recvfrom(256)
            except socket.timeout:
                continue
            self.requests += 1
            with open(self.stats + ".tmp", "w") as fh:
                fh.write(open(os.path.join(DATA, "alpha.stats")).read())
            os.replace(self.stats + ".tmp", self.stats)
            self.sock.sendto(b"OK %d" % int(time.time()), peer)

    def close(self):
        self.running = False
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def daemon(tmp_path):
    fake = FakeDaemon(str(tmp_path / "nc.sniffer.stats"))
    try:
        yield fake
    finally:
        fake.close()


@pytest.mark.integration
def test_dump_requests_a_stale_file(tmp_path, daemon):
    err = io.StringIO()
    argv = ["--stats", daemon.stats, "--update", f"127.0.0.1:{daemon.port}", "--updto", "5"]
    assert coalesce.dump_main(argv + ["--age", "0"], err=err) == 0, err.getvalue()
    assert daemon.requests == 1 and os.path.exists(daemon.stats)
    assert coalesce.dump_main(argv, err=err) == 0          # fresh (< 300 s): no request
    assert daemon.requests == 1 and err.getvalue() == ""


@pytest.mark.integration
def test_dump_with_a_config_file(tmp_path, daemon):
    conf = tmp_path / "dump.conf"
    conf.write_text(f"{{'stats': {daemon.stats!r}, 'update': {daemon.port}, 'age': 0}}\n")
    assert coalesce.dump_main(["-c", str(conf)], err=io.StringIO()) == 0
    assert daemon.requests == 1


def test_dump_errors(tmp_path):
    err = io.StringIO()
    assert coalesce.dump_main(["--stats", str(tmp_path / "s"), "--age", "x",
                               "--update", "1"], err=err) == 1
    assert err.getvalue() == "nc.sniffer.dump: invalid characters in age: 'x'\n"
    err = io.StringIO()
    assert coalesce.dump_main(["--stats", str(tmp_path / "s")], err=err) == 1
    assert "missing 'update'" in err.getvalue()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    err = io.StringIO()
    assert coalesce.dump_main(["--stats", str(tmp_path / "s"), "--update", str(port),
                               "--updto", "1", "--age", "0"], err=err) == 1
    assert err.getvalue().startswith("nc.sniffer.dump: ")


@pytest.mark.integration
def test_local_daemon_is_refreshed_and_merged(tmp_path, daemon, utc):
    """With 'update', the web host's own daemon is asked for a dump and merged as 'localhost'."""
    fetched(tmp_path, ("beta", "gamma"))
    conf = config(tmp_path, update=f"127.0.0.1:{daemon.port}", stats=daemon.stats, updto=5)
    conf["src"] = {h: conf["src"][h] for h in ("beta", "gamma")}
    cfg = coalesce.rem_wchk(conf)
    failures = coalesce.rem_dump(cfg, lambda argv, timeout: coalesce.Outcome(0))
    assert failures == {"beta": "", "gamma": "", "localhost": ""} and daemon.requests == 1
    coalesce.rem_update(cfg, failures)
    text = (tmp_path / "sniffer.cache.1").read_text()
    assert "# host:\tlocalhost\n# ncsniffer version 0.1\n" in text
    # the same numbers as with alpha fetched over ssh: only the order of the blocks differs
    assert text.split("\nComposite report")[1] == \
        expected("expected.report.1").split("\nComposite report")[1]


def test_local_daemon_that_does_not_answer_is_named(tmp_path, utc):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    fetched(tmp_path, ("beta",))
    conf = config(tmp_path, update=str(port), stats=str(tmp_path / "none.stats"), updto=1)
    conf["src"] = {"beta": conf["src"]["beta"]}
    cfg = coalesce.rem_wchk(conf)
    failures = coalesce.rem_dump(cfg, lambda argv, timeout: coalesce.Outcome(0))
    assert failures["localhost"]
    coalesce.rem_update(cfg, failures)
    assert "# host:\tlocalhost\tFAILED (" in (tmp_path / "sniffer.cache.1").read_text()


# --------------------------------------------------------------------------- sources without fetch (11.11)

def test_source_without_fetch_merges_its_cached_file(tmp_path, utc):
    """``'host': {}``: its file arrives another way (pushed); the others are still fetched."""
    fetched(tmp_path)
    conf = config(tmp_path)
    conf["src"]["beta"] = {}
    conf["src"]["pushed"] = {"exec": "nc.sniffer.dump"}     # exec, but no copy to make
    cfg = coalesce.rem_wchk(conf)
    runner = FakeRunner([coalesce.Outcome(0)] * 5)
    failures = coalesce.rem_dump(cfg, runner)
    assert sorted(runner.calls) == ["rsync", "rsync", "ssh", "ssh", "ssh"]
    assert failures == {"alpha": "", "beta": "", "gamma": "", "pushed": ""}
    coalesce.rem_update(cfg, failures)
    text = (tmp_path / "sniffer.cache.1").read_text()
    assert "# host:\tbeta\n" in text                     # beta's cached file merged
    assert text.split("\nComposite report")[1] == \
        expected("expected.report.1").split("\nComposite report")[1]
    assert ("# host:\tpushed\tFAILED (no stats file "
            f"'{tmp_path / 'pushed.stats'}' (it has no 'fetch')), no stats file\n") in text
    assert "# failed hosts:\tpushed\n" in text


def test_source_with_a_bad_fetch_is_still_refused(tmp_path):
    conf = config(tmp_path)
    for bad in (5, "x\ny", ["f"]):
        conf["src"] = {"h": {"fetch": bad}}
        with pytest.raises(CoalesceError, match="'fetch' .* invalid"):
            coalesce.rem_wchk(conf)


# --------------------------------------------------------------------------- a hostile source (11.12, 11.18)

from tests import hostile  # noqa: E402


def body_of(text: str) -> str:
    return text.split("\nComposite report")[1]


@pytest.fixture
def without_beta(tmp_path_factory, utc):
    """The report of alpha and gamma alone: what a bad beta must leave."""
    base = tmp_path_factory.mktemp("twohosts")
    fetched(base, ("alpha", "gamma"))
    coalesce.rem_update(config(base), {})
    return body_of((base / "sniffer.cache.1").read_text())


@pytest.mark.parametrize("kind,fmt", hostile.BAD_CASES)
def test_one_hostile_source_is_named_and_skipped(tmp_path, utc, without_beta, kind, fmt):
    fetched(tmp_path, ("alpha", "gamma"))
    hostile.write(tmp_path / "beta.stats", kind, fmt)
    parts = coalesce.rem_update(config(tmp_path), {})
    assert [p.used for p in parts] == [True, False, True]
    text = (tmp_path / "sniffer.cache.1").read_text()
    line = next(x for x in text.splitlines() if x.startswith("# host:\tbeta"))
    assert line.startswith(f"# host:\tbeta\tFAILED ({tmp_path / 'beta.stats'}: not a readable "
                           "stats file: ") and line.endswith("), no stats file")
    assert "# failed hosts:\tbeta\n" in text
    assert body_of(text) == without_beta
    assert not os.path.exists("/tmp/ncs-hostile-ran")


@pytest.mark.parametrize("fmt", hostile.FORMATS)
def test_odd_names_are_merged_and_shown_harmlessly(tmp_path, utc, fmt):
    fetched(tmp_path, ("alpha", "gamma"))
    hostile.write(tmp_path / "beta.stats", "odd_names", fmt)
    coalesce.rem_update(config(tmp_path), {})
    out = io.StringIO()
    assert coalesce.rem_report(config(tmp_path), out, escape=True) == 0
    page = out.getvalue()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.evil.org" in page and "<script>" not in page
    assert "\x1b" not in page and "\x9b" not in page and "\x07" not in page
    assert "# host:\tbeta\n" in page
    composite = dumpfile.read_stats(str(tmp_path / "composite.stats"))
    assert composite.records["1.2.3.4"]["N"][0] == "<script>alert(1)</script>.evil.org"


def test_merged_sums_stay_readable_at_the_limit(tmp_path, utc):
    """A source at the largest accepted counter must not make composite.stats unreadable."""
    fetched(tmp_path, ("alpha", "gamma"))
    big = dumpfile.MAX_NUMBER
    with open(tmp_path / "beta.stats", "w") as fh:
        fh.write(hostile.python_text([("10.1.2.3", hostile.record(B=big, C=big, R=big, W=big))]))
    coalesce.rem_update(config(tmp_path), {})
    merged = dumpfile.read_stats(str(tmp_path / "composite.stats")).records["10.1.2.3"]
    assert merged["W"] == merged["B"] == big
    assert "# failed hosts" not in (tmp_path / "sniffer.cache.1").read_text()


def test_a_reader_bug_loses_one_host_only(tmp_path, utc, without_beta, monkeypatch):
    fetched(tmp_path)
    real = coalesce.read_stats

    def flaky(path):
        if path.endswith("beta.stats"):
            raise KeyError("boom")
        return real(path)
    monkeypatch.setattr(coalesce, "read_stats", flaky)
    coalesce.rem_update(config(tmp_path), {})
    text = (tmp_path / "sniffer.cache.1").read_text()
    assert "# host:\tbeta\tFAILED (internal error reading " in text
    assert body_of(text) == without_beta


@pytest.mark.integration
def test_coalescer_cgi_with_a_hostile_source(tmp_path):
    """The script as a process: sources without ssh ('host': {}), one of them hostile."""
    import sys
    fetched(tmp_path, ("alpha", "gamma"))
    hostile.write(tmp_path / "beta.stats", "deep_nesting", "json")
    hostile.write(tmp_path / "delta.stats", "odd_names", "perl")
    conf = tmp_path / "coalesce.conf"
    conf.write_text(repr({"cache": str(tmp_path / "sniffer.cache"),
                          "src": {h: {} for h in ("alpha", "beta", "gamma", "delta")}}))
    script = os.path.join(os.path.dirname(DATA), "..", "..", "scripts", "nc.sniffer.coalesce.cgi")
    proc = subprocess.Popen([sys.executable, script, "-c", str(conf)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TZ": "UTC"})
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert err == ""
    assert f"# host:\tbeta\tFAILED ({tmp_path / 'beta.stats'}: not a readable stats file: " in out
    assert "# failed hosts:\tbeta\n" in out and "# host:\talpha\n" in out
    assert "&lt;script&gt;" in out and "<script>" not in out and "\x1b" not in out


# --------------------------------------------------------------------------- K merged (10.3)

K0 = dumpfile.K_ZERO


def test_merge_sums_k_and_a_host_without_k_adds_zeros():
    ka = {**K0, "tcp": 2, "in": 2, "active": 1, "closed": 1}
    kb = {**K0, "udp": 5, "out": 5, "timedout": 5}
    both = coalesce.merge_record(dict(rec(), K=ka), dict(rec(), K=kb))
    assert both["K"] == {**K0, "tcp": 2, "udp": 5, "in": 2, "out": 5, "active": 1,
                         "closed": 1, "timedout": 5}
    assert coalesce.merge_record(rec(), dict(rec(), K=ka))["K"] == ka
    assert "K" not in coalesce.merge_record(rec(), rec())
    big = {**K0, "tcp": dumpfile.MAX_NUMBER}
    assert coalesce.merge_record(dict(rec(), K=big), dict(rec(), K=big))["K"]["tcp"] == \
        dumpfile.MAX_NUMBER
    merged = coalesce.merge_all(({"10.0.0.1": dict(rec(), K=ka)}, {"10.0.0.2": rec()}))
    merged["10.0.0.1"]["K"]["tcp"] = 99
    assert ka["tcp"] == 2 and "K" not in merged["10.0.0.2"]


def _with_k(path, k, connections):
    """Rewrite a test host's file as a daemon with connection tracking would have."""
    stats = dumpfile.read_stats(str(path))
    text = "".join(dumpfile.render_body(dumpfile.rows_from_dicts(
        {ip: dict(r, K=k) for ip, r in stats.records.items()}), "python"))
    header = stats.header + [dumpfile.connections_line(*connections)]
    path.write_text("\n" + "\n".join(header) + "\n" + text)


def test_composite_sums_k_and_connections_line(tmp_path, utc):
    fetched(tmp_path)
    one = {**K0, "tcp": 1, "in": 1, "active": 1}
    _with_k(tmp_path / "alpha.stats", one, (3, 4, 1))
    _with_k(tmp_path / "gamma.stats", one, (1, 1, 0))
    coalesce.rem_update(config(tmp_path), {})
    composite = dumpfile.read_stats(str(tmp_path / "composite.stats"))
    alpha = dumpfile.read_stats(str(tmp_path / "alpha.stats")).records
    gamma = dumpfile.read_stats(str(tmp_path / "gamma.stats")).records
    beta = dumpfile.read_stats(str(tmp_path / "beta.stats")).records
    for ip, r in composite.records.items():
        assert r["K"]["tcp"] == (ip in alpha) + (ip in gamma), ip
    assert set(beta) - set(alpha) - set(gamma) <= set(composite.records)
    total = composite.header.index("# grand total all hosts")
    assert "# connections:\t4 active, 5 started, 1 evicted" in composite.header[total:]
    report = (tmp_path / "sniffer.cache.1").read_text()
    assert report.split("\nComposite report")[1].count("\n") == \
        expected("expected.report.1").split("\nComposite report")[1].count("\n")


def test_composite_of_files_without_k_stays_without(tmp_path, utc):
    fetched(tmp_path)
    coalesce.rem_update(config(tmp_path), {})
    composite = dumpfile.read_stats(str(tmp_path / "composite.stats"))
    assert all("K" not in r for r in composite.records.values())
    assert composite.header_value("connections") is None
