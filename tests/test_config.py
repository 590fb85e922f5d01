"""SPEC 1: loading config files and validating them in the original's order and words."""

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
