"""SPEC 1: loading config files and validating them in the original's order and words."""

import ast
import os

import pytest

from ncsniffer import config, host
from ncsniffer.errors import ConfigError
from tests.conftest import write_config


def check(cfg, name="nc.sniffer", **kw):
    return config.validate(cfg, name, **kw)


def message(cfg, **kw):
    with pytest.raises(ConfigError) as info:
        check(cfg, **kw)
    return str(info.value)


@pytest.fixture
def base(workdir):
    return {"piddir": workdir, "sniffer": workdir, "bpf": "host 127.0.0.1", "resolve": False}


def test_valid_config_picks_loopback_without_promiscuity(base, workdir):
    s = check(base)
    assert (s.me, s.me_packed, s.interface, s.promiscuous) == ("127.0.0.1", b"\x7f\0\0\1", "lo", False)
    assert s.stats_file == os.path.join(workdir, "nc.sniffer.stats")
    assert s.snaplen == 38 and s.port is None and s.dump_format == "python"
    assert s.pid_file == os.path.join(workdir, "nc.sniffer.pid")


def test_address_in_subnet_is_promiscuous(base):
    s = check(dict(base, bpf="src host 127.0.0.5 and udp"))
    assert (s.interface, s.promiscuous, s.me) == ("lo", True, "127.0.0.5")


def test_missing_hostname(base):
    assert message(dict(base, bpf="udp port 53")) == "config: missing hostname in bpf string"
    assert message({k: v for k, v in base.items() if k != "bpf"}) == \
        "config: missing hostname in bpf string"


def test_first_host_counts_and_ipv6_works(base):
    s = check(dict(base, bpf="dst host ::1 and src host 127.0.0.1"))
    assert s.me == "::1" and len(s.me_packed) == 16 and s.interface == "lo"


def test_bad_hostname(base):
    assert message(dict(base, bpf="host 1.2.3.4.5")) == \
        "config: bad hostname '1.2.3.4.5' in bpf filter string"


def test_no_interface(base):
    assert message(dict(base, bpf="host 255.255.255.254")) == \
        "config: could not find interface for '255.255.255.254' in bpf string"


def test_offline_skips_interface_check(base):
    s = check(dict(base, bpf="host 255.255.255.254"), offline=True)
    assert s.interface is None


def test_sniffer_checks(base, workdir):
    assert message({k: v for k, v in base.items() if k != "sniffer"}) == \
        "config: sniffer directory missing from configuration"
    missing = os.path.join(workdir, "nope")
    assert message(dict(base, sniffer=missing)) == \
        f"config: sniffer directory '{missing}' missing or not writable"
    assert check(dict(base, sniffer="STDERR")).stats_file is None


def test_stats_file_not_writable():
    """Root may write anything, so the check runs in a child that became 'nobody'."""
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="ncs-perm-")
    try:
        os.chmod(d, 0o777)
        stats = os.path.join(d, "nc.sniffer.stats")
        open(stats, "w").close()
        os.chmod(stats, 0o444)
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: drop to nobody, validate, report through the pipe
            try:
                if os.geteuid() == 0:
                    os.setresgid(65534, 65534, 65534)
                    os.setresuid(65534, 65534, 65534)
                check({"bpf": "host 127.0.0.1", "sniffer": d})
                os.write(wfd, b"no error")
            except ConfigError as exc:
                os.write(wfd, str(exc).encode())
            finally:
                os._exit(0)
        os.close(wfd)
        os.waitpid(pid, 0)
        with os.fdopen(rfd) as fh:
            assert fh.read() == f"config: '{stats}' not writable"
    finally:
        shutil.rmtree(d)


def test_snaplen_clamped(base):
    assert check(dict(base, snaplen=100000)).snaplen == 65535


def test_payload_rules(base):
    assert message(dict(base, match="x")) == "config: invalid payload length"
    assert message(dict(base, match="x", payload=38)) == "config: invalid payload length"
    assert message(dict(base, nomatch="x", payload=0)) == "config: invalid payload length"
    s = check(dict(base, match="AbC\x00\xff", nomatch=b"Q", payload=37))
    assert (s.match, s.nomatch, s.payload) == (b"abc\x00\xff", b"q", 37)
    assert check(dict(base, payload=5)).payload is None


def test_listener_checks(base):
    assert message(dict(base, port="10x")) == "config: invalid port number '10x'"
    assert message(dict(base, port=10004, host="1.2.3.4.5")) == "config: bad dump host '1.2.3.4.5'"
    assert message(dict(base, port=10004, allowed=["127.0.0.1", "999.1.1.1"])) == \
        "config: invalid 'allowed' host or IP '999.1.1.1'"
    s = check(dict(base, port="10004", host="INADDR_ANY"))
    assert (s.port, s.listen_host, s.allowed) == (10004, "0.0.0.0", ["127.0.0.1"])
    s = check(dict(base, port=10004, allowed=["localhost"]))
    assert s.listen_host == "127.0.0.1" and s.allowed[0] in ("127.0.0.1", "::1")
    assert check(dict(base, port=0)).port is None


def test_order_bpf_before_sniffer(workdir):
    assert message({"piddir": workdir}) == "config: missing hostname in bpf string"


def test_new_keys(base):
    assert message(dict(base, dump_format="xml")).startswith("config: invalid dump_format 'xml'")
    assert message(dict(base, nameserver="10.0.0.1:x")).startswith("config: invalid nameserver")
    assert message(dict(base, bfp="host x")) == "config: unknown configuration key 'bfp'"
    s = check(dict(base, nameserver="127.0.0.1:5353", max_hosts=10, dump_format="perl"))
    assert (s.nameserver, s.max_hosts, s.dump_format) == ("127.0.0.1:5353", 10, "perl")
    assert config.parse_nameserver("[::1]:53") == ("::1", 53)
    assert config.parse_nameserver("::1") == ("::1", 53)


def test_connection_keys_default_off(base):
    """SPEC 10: tracking is off unless asked for; the defaults of its settings."""
    s = check(base)
    assert (s.connections, s.max_connections, s.events) == (False, 1_000_000, None)
    assert s.timeouts == {"tcp_establish": 5, "tcp": 300, "udp": 20, "icmp": 10, "tcp_linger": 10}
    assert "connections" not in config.describe(s)       # off: the config verb says as before


def test_connection_keys(base, workdir):
    events = os.path.join(workdir, "conn.jsonl")
    s = check(dict(base, connections=True, max_connections="10", timeouts={"udp": 60, "tcp": "7"},
                   events=events))
    assert (s.connections, s.max_connections, s.events) == (True, 10, events)
    assert s.timeouts == {"tcp_establish": 5, "tcp": 7, "udp": 60, "icmp": 10, "tcp_linger": 10}
    import ast
    shown = ast.literal_eval(config.describe(s))
    assert (shown["connections"], shown["max_connections"], shown["events"]) == (True, 10, events)
    assert shown["timeouts"]["udp"] == 60


@pytest.mark.parametrize("key,value,text", [
    ("connections", "yes", "config: invalid connections 'yes': use True or False"),
    ("max_connections", 0, "config: invalid max_connections '0': 1 to 1000000000"),
    ("max_connections", 10**10, "config: invalid max_connections '10000000000': 1 to 1000000000"),
    ("timeouts", 5, "config: invalid timeouts '5': a dict of seconds by tcp_establish, tcp, "
                    "udp, icmp, tcp_linger"),
    ("timeouts", {"tpc": 5}, "config: invalid timeouts key 'tpc': use tcp_establish, tcp, udp, "
                             "icmp, tcp_linger"),
    ("timeouts", {"udp": 0}, "config: invalid timeouts 'udp': '0': seconds, 1 to 1000000"),
    ("timeouts", {"tcp": -3}, "config: invalid timeouts 'tcp': '-3': seconds, 1 to 1000000"),
    ("timeouts", {"icmp": 1.5}, "config: invalid timeouts 'icmp': '1.5': seconds, "
                                "1 to 1000000"),
    ("timeouts", {"tcp": 1000001}, "config: invalid timeouts 'tcp': '1000001': seconds, "
                                   "1 to 1000000"),
    ("events", 5, "config: invalid events '5': a file path"),
])
def test_connection_keys_refused(base, key, value, text):
    assert message(dict(base, **{key: value})) == text


def test_every_timeout_the_config_takes_the_tracker_takes(base):
    """One bound (the timer wheel's size): the longest timeout that passes validation
    builds a tracker, one second more is a config error, not a failure at start."""
    from ncsniffer import conntrack
    longest = {key: conntrack.MAX_TIMEOUT for key in config.DEFAULT_TIMEOUTS}
    s = check(dict(base, connections=True, timeouts=longest))
    tracker = conntrack.Tracker(conntrack.Timeouts.from_config(s.timeouts), 10)
    assert tracker.timeouts.longest() == conntrack.MAX_TIMEOUT == config.MAX_TIMEOUT
    if conntrack.HAVE_CORE:                     # the C core's own bound is the same number
        with pytest.raises(ValueError):
            conntrack._conntrack.Core(5, conntrack.MAX_TIMEOUT + 1, 20, 10, 10, 10)
    assert message(dict(base, timeouts={"udp": conntrack.MAX_TIMEOUT + 1})).startswith(
        "config: invalid timeouts 'udp'")


def test_events_file_checks(base, workdir, tmp_path, monkeypatch):
    missing = os.path.join(workdir, "nope", "conn.jsonl")
    assert message(dict(base, events=missing)) == \
        f"config: events directory '{os.path.dirname(missing)}' missing or not writable"
    assert message(dict(base, events=workdir)) == f"config: events file '{workdir}' is a directory"
    monkeypatch.chdir(tmp_path)
    assert check(dict(base, events="conn.jsonl")).events == str(tmp_path / "conn.jsonl")


def test_piddir_check(workdir):
    with pytest.raises(ConfigError, match="pid directory not specified or not writable"):
        config.check_piddir({})
    assert config.check_piddir({"piddir": workdir}) == workdir


def test_instance_name():
    assert config.instance_name("/usr/sbin/nc.sniffer1.pl") == "nc.sniffer1"
    assert config.instance_name("nc.sniffer.py") == "nc.sniffer"
    assert config.instance_name("/x/nc.sniffer") == "nc.sniffer"


def test_load_python_literal(workdir):
    path = write_config(workdir, bpf="host 127.0.0.1")
    assert config.load_file(path)["bpf"] == "host 127.0.0.1"


def test_load_errors_name_file_and_line(workdir):
    path = os.path.join(workdir, "bad.conf")
    with open(path, "w") as fh:
        fh.write("{\n 'bpf': 'host x',\n 'piddir': __import__('os').getcwd(),\n}\n")
    with pytest.raises(ConfigError, match=rf"'{path}' line 3: only plain values"):
        config.load_file(path)
    with open(path, "w") as fh:
        fh.write("{\n 'bpf': 'host x'\n 'piddir': '/tmp',\n}\n")
    with pytest.raises(ConfigError, match=rf"'{path}' line [23]"):
        config.load_file(path)
    with pytest.raises(ConfigError, match="cannot read"):
        config.load_file(os.path.join(workdir, "missing.conf"))


def test_load_perl_script(workdir):
    from tests.test_perlval import ORIGINAL_SAMPLE
    path = os.path.join(workdir, "nc.sniffer.pl")
    with open(path, "w") as fh:
        fh.write(ORIGINAL_SAMPLE)
    cfg = config.load_file(path)
    assert cfg["match"] == "\nsomedomain\x03com" and cfg["port"] == 10004


def test_find_interface_table_rules():
    table = {"eth1": [("10.1.0.5", "255.255.0.0")], "eth0": [("10.1.2.3", "255.255.255.0")],
             "lo": [("127.0.0.1", "255.0.0.0")]}
    assert host.find_interface("10.1.2.3", table) == ("eth0", False)
    assert host.find_interface("10.1.2.9", table) == ("eth0", True)     # alphabetical first
    assert host.find_interface("10.1.9.9", table) == ("eth1", True)
    assert host.find_interface("192.0.2.1", table) is None


def test_describe_is_a_literal(base):
    import ast
    text = config.describe(check(dict(base, match="x", payload=10)))
    assert ast.literal_eval(text)["match"] == b"x"


def test_relative_directories_resolve_against_the_start_directory(tmp_path, monkeypatch):
    """Daemonizing changes to '/': paths are made absolute before (issue 11.9)."""
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = {"piddir": "out", "sniffer": "./out", "bpf": "host 127.0.0.1"}
    s = config.validate(cfg, "rel", offline=True)
    assert s.piddir == str(tmp_path / "out") and s.sniffer == str(tmp_path / "out")
    assert s.pid_file == str(tmp_path / "out" / "rel.pid")
    assert s.stats_file == str(tmp_path / "out" / "rel.stats")
    assert config.check_piddir(cfg) == str(tmp_path / "out")


# --------------------------------------------------------------------------- issue 11.19b

BAD_VALUES = [None, [], ["x"], {}, {"a": 1}, 10**30, -5, 1.5, "abc", "", True, False,
              b"x", "-3", float("nan")]
# The values of BAD_VALUES each key accepts (None and "" mean "not set"; 0 too
# where the original's false values mean it; snaplen clamps huge values).
ACCEPTED = {
    "piddir": [None, ""], "sniffer": [], "bpf": [],
    "snaplen": [None, "", 10**30], "match": [None, "", "abc", b"x", "-3"],
    "nomatch": [None, "", "abc", b"x", "-3"], "payload": [None, ""], "port": [None, ""],
    "host": [None, ""], "allowed": [None, "", []], "nameserver": [None, ""],
    "resolve": [None, True, False], "dump_format": [None, ""], "user": [None, ""],
    "group": [None, ""], "max_hosts": [None], "interface": [None, "", "abc", "-3"],
    "dns_max_outstanding": [None], "dns_max_qps": [None], "metrics": [None, ""],
    "metrics_top": [None],
    "connections": [None, True, False], "max_connections": [None], "timeouts": [None, {}],
    "events": [None, "", "abc", "-3"],       # relative names: in the (writable) start directory
    "clickhouse": [None],
}
NEEDS = {"payload": {"match": "x"}, "host": {"port": 10004}, "allowed": {"port": 10004}}


@pytest.fixture
def no_dns(monkeypatch):
    """Names other than localhost fail at once: the bad names of these tests must
    not become DNS queries to the machine's name server."""
    import socket
    real = socket.getaddrinfo

    def local_only(name, *args, **kw):
        if name != "localhost":
            raise socket.gaierror(socket.EAI_NONAME, "not looked up in tests")
        return real(name, *args, **kw)
    monkeypatch.setattr(socket, "getaddrinfo", local_only)


def bad_cases():
    for key in sorted(config.KNOWN_KEYS):
        for value in BAD_VALUES:
            if not any(value is ok or (type(value) is type(ok) and value == ok)
                       for ok in ACCEPTED[key]):
                yield key, value


@pytest.mark.parametrize("key,value", list(bad_cases()))
def test_every_bad_value_is_one_config_line(base, no_dns, key, value):
    """Issue 11.19b: wrong types and values gave tracebacks or passed silently."""
    cfg = dict(base, **NEEDS.get(key, {}), **{key: value})
    if key == "piddir":
        with pytest.raises(ConfigError, match="^pid directory not specified or not writable$"):
            config.check_piddir(cfg)
        return
    text = message(cfg)
    assert text.startswith("config: ") and "\n" not in text, text


@pytest.mark.parametrize("key,value", [(k, v) for k, v in bad_cases() if v == v])  # no nan: not a literal
def test_every_bad_value_through_the_config_verb(workdir, no_dns, key, value):
    import io

    from ncsniffer import cli
    cfg = {"bpf": "host 127.0.0.1", **NEEDS.get(key, {}), key: value}
    conf = write_config(workdir, **cfg)
    env = cli.Env(stdout=io.StringIO(), stderr=io.StringIO(), program="nc.sniffer")
    code = cli.main(["-c", conf, "config"], env)
    err = env.stderr.getvalue()
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith("config: " if key != "piddir" else "pid directory "), err


def test_negative_values_are_refused(base):
    assert message(dict(base, snaplen=-1)) == "config: invalid snaplen '-1'"
    assert message(dict(base, match="x", payload=-5)) == "config: invalid payload length"
    assert message(dict(base, max_hosts=-5)).startswith("config: invalid max_hosts '-5'")


from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402

ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-10**40, 10**40), st.floats(), st.text(max_size=12),
    st.binary(max_size=4), st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@pytest.mark.slow
@hsettings(max_examples=300, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(config.KNOWN_KEYS)), ANY_VALUE, st.booleans())
def test_any_value_of_any_key_is_settings_or_one_config_line(tmp_path_factory, no_dns, key,
                                                             value, offline):
    """Whatever the value: valid Settings within range, or one ``config:`` line."""
    d = str(tmp_path_factory.getbasetemp())
    cfg = {"piddir": d, "sniffer": d, "bpf": "host 127.0.0.1", "resolve": False,
           **NEEDS.get(key, {}), key: value}
    try:
        s = config.validate(cfg, "nc.sniffer", offline=offline)
    except ConfigError as exc:
        assert str(exc).startswith("config: ") and "\n" not in str(exc)
        return
    assert 1 <= s.snaplen <= 65535 and (s.payload is None or 1 <= s.payload < s.snaplen)
    assert s.port is None or 1 <= s.port <= 65535
    assert s.max_hosts is None or 1 <= s.max_hosts
    assert isinstance(s.connections, bool) and 1 <= s.max_connections
    assert set(s.timeouts) == set(config.DEFAULT_TIMEOUTS) and min(s.timeouts.values()) >= 1
    assert s.events is None or os.path.isabs(s.events)
    assert 1 <= s.dns_max_outstanding <= 4096 and 1 <= s.dns_max_qps
    assert isinstance(s.resolve, bool) and s.dump_format in config.FORMATS
    for text in (s.bpf, s.sniffer, s.interface or "", s.user or "", s.group or "",
                 s.nameserver or "", s.listen_host, *s.allowed):
        assert isinstance(text, str)


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="a test hosts file needs a mount namespace")
def test_allowed_name_admits_all_its_addresses(workdir):
    """Issue 11.19b: a name in 'allowed' admitted only its first address."""
    import ast
    import subprocess

    from tests.conftest import NC_SNIFFER, with_hosts_file
    name = f"ncs-peer-{os.getpid()}"
    prefix = with_hosts_file(workdir, {name: ["127.0.0.5", "127.0.0.6", "::1"]})
    conf = write_config(workdir, bpf="host 127.0.0.1", port=10004, allowed=[name, "127.0.0.6"])
    result = subprocess.run([*prefix, NC_SNIFFER, "-c", conf, "config"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert ast.literal_eval(result.stdout)["allowed"] == ["127.0.0.5", "127.0.0.6", "::1"]


def test_numbers_as_long_digit_strings_and_match_zero(base):
    assert message(dict(base, snaplen="9" * 5000)).startswith("config: invalid snaplen '999")
    assert check(dict(base, match="0", payload=5)).match == b"0"     # a string to look for


# --------------------------------------------------------------------------- issue 14: metrics

@pytest.mark.parametrize("value, where", [
    ("127.0.0.1:9108", ("127.0.0.1", 9108)), ("[::1]:9108", ("::1", 9108)),
    (" localhost:1 ", ("127.0.0.1", 1)), ("0.0.0.0:65535", ("0.0.0.0", 65535)),
])
def test_metrics_address_is_parsed_once(base, value, where):
    s = check(dict(base, metrics=value, metrics_top="25"))
    assert (s.metrics, s.metrics_top) == (where, 25)


def test_metrics_is_off_and_top_ten_by_default(base):
    s = check(base)
    assert (s.metrics, s.metrics_top) == (None, config.DEFAULT_METRICS_TOP) == (None, 10)


@pytest.mark.parametrize("value", ["9108", "127.0.0.1", "::1:9108", "[::1]", "127.0.0.1:0",
                                   "127.0.0.1:65536", "[::1]:x", "a b:1", 9108])
def test_bad_metrics_address_is_one_config_line(base, value):
    assert message(dict(base, metrics=value)) == \
        f"config: invalid metrics '{value}': use 'ADDR:PORT' or '[IPv6]:PORT'"


@pytest.mark.parametrize("value", [0, 1001, "x", -1, 2.5, True])
def test_metrics_top_is_1_to_1000(base, value):
    assert message(dict(base, metrics_top=value)) == \
        f"config: invalid metrics_top '{value}': 1 to 1000"


def test_describe_shows_metrics(base):
    import ast
    text = config.describe(check(dict(base, metrics="[::1]:9108")))
    assert ast.literal_eval(text)["metrics"] == "[::1]:9108"
    assert ast.literal_eval(text)["metrics_top"] == 10


def test_load_perl_script_with_qw_list(workdir):
    from tests.test_perlval import ORIGINAL_SAMPLE
    path = os.path.join(workdir, "nc.sniffer.pl")
    with open(path, "w") as fh:
        fh.write(ORIGINAL_SAMPLE.replace("""['127.0.0.1', "10.0.0.1",]""",
                                         "[qw(127.0.0.1 10.0.0.1)]"))
    assert config.load_file(path)["allowed"] == ["127.0.0.1", "10.0.0.1"]


def test_clickhouse_settings(base):
    """Issue 14: the export's dict, its defaults and its messages."""
    s = check(dict(base, clickhouse={"url": "clickhouse://127.0.0.1:19000/ncs"}))
    ch = s.clickhouse
    assert (ch.host, ch.port, ch.database, ch.interval, ch.sniffer, ch.spool_max, ch.timeout) == \
        ("127.0.0.1", 19000, "ncs", 60, None, 64 << 20, 10)
    assert check(base).clickhouse is None
    s = check(dict(base, clickhouse={"url": "clickhouse://u:pw@[::1]/x", "interval": "5",
                                     "sniffer": "edge1"}))
    assert (s.clickhouse.host, s.clickhouse.port, s.clickhouse.user, s.clickhouse.interval,
            s.clickhouse.sniffer) == ("::1", 9000, "u", 5, "edge1")
    assert "pw" not in config.describe(s) and "'url': 'clickhouse://[::1]:9000/x'" in config.describe(s)
    ast.literal_eval(config.describe(s))


@pytest.mark.parametrize("value,text", [
    ("clickhouse://h/db", "invalid clickhouse 'clickhouse://h/db': use {'url': "
                          "'clickhouse://HOST:PORT/DB', 'interval': SECONDS}"),
    ({"interval": 5}, "invalid clickhouse '{'interval': 5}'"),
    ({"url": "http://h:8123/"}, "invalid clickhouse url 'http://h:8123/': use "
                                "'clickhouse://HOST:PORT/DB'"),
    ({"url": "clickhouse://h:0/db"}, "invalid clickhouse url"),
    ({"url": "clickhouse://h/d;DROP"}, "invalid clickhouse url"),
    ({"url": "clickhouse://h", "interval": 0}, "invalid clickhouse interval '0': 1 to 86400"),
    ({"url": "clickhouse://h", "interval": 1.5}, "invalid clickhouse interval '1.5'"),
    ({"url": "clickhouse://h", "spool_max": -1}, "invalid clickhouse spool_max '-1'"),
    ({"url": "clickhouse://h", "timeout": "x"}, "invalid clickhouse timeout 'x'"),
    ({"url": "clickhouse://h", "sniffer": ""}, "invalid clickhouse sniffer ''"),
    ({"url": "clickhouse://h", "intervall": 5}, "invalid clickhouse key 'intervall': use one "
                                                "of url, interval, sniffer, spool_max, timeout"),
])
def test_clickhouse_bad_values(base, value, text):
    assert message(dict(base, clickhouse=value)).startswith("config: " + text)
