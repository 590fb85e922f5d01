"""Issue 16: an empty capture's replay without numpy writes what the replay writes,
and the short commands import no numpy (the import graph, not a timing)."""

import io
import itertools
import os
import struct
import subprocess
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ncsniffer import config, emptycapture, pcapgen, replay
from tests.conftest import NC_SNIFFER, imported_modules, write_config

MAGICS = [("<", 0xA1B2C3D4), (">", 0xA1B2C3D4), ("<", 0xA1B23C4D), (">", 0xA1B23C4D)]
VARIANTS = [
    {},
    {"max_hosts": 5000},
    {"match": "xyz", "payload": 54, "snaplen": 120},
    {"nomatch": "abc", "payload": 54, "snaplen": 120},
    {"dump_format": "perl"},
    {"dump_format": "json"},
]


def empty_file(path: str, order: str = "<", magic: int = 0xA1B2C3D4, linktype: int = 1) -> str:
    with open(path, "wb") as fh:
        fh.write(struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype))
    return path


def settings_of(directory: str, **cfg):
    cfg.setdefault("bpf", "host 192.0.2.10")
    conf = config.load_file(write_config(directory, **cfg))
    return config.validate(conf, "nc.sniffer", offline=True)


def both(directory: str, cap: str, **cfg) -> tuple:
    """(stats, log) of the empty-capture path, then of the replay itself."""
    out = []
    for run in (emptycapture.replay, lambda s, p, log: replay.replay(s, p, log, quiet=True)):
        settings = settings_of(directory, **cfg)
        log = io.StringIO()
        assert run(settings, cap, log) == 0
        with open(settings.stats_file, "rb") as fh:
            out.append((fh.read(), log.getvalue()))
        os.unlink(settings.stats_file)
    return out


# every setting once, the four magic numbers (byte order, µs/ns) in turn
CASES = [(order, magic, cfg) for (order, magic), cfg in zip(itertools.cycle(MAGICS), VARIANTS)]


@pytest.mark.parametrize("order,magic,cfg", CASES,
                         ids=[",".join(c) or "default" for _, _, c in CASES])
def test_the_empty_path_writes_what_the_replay_writes(tmp_path, order, magic, cfg):
    cap = empty_file(str(tmp_path / "empty.pcap"), order, magic)
    fast, plain = both(str(tmp_path), cap, **cfg)
    assert fast == plain
    assert cap.encode() in fast[0] and "0 packets" in fast[1]


WINDOWS = st.sampled_from([{}, {"match": "xyz", "payload": 54, "snaplen": 120},
                            {"nomatch": "a\\x00b", "payload": 14, "snaplen": 200},
                            {"match": "e", "nomatch": "f", "payload": 20, "snaplen": 70}])


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(magic=st.sampled_from(MAGICS), window=WINDOWS,
       max_hosts=st.sampled_from([None, 0, 1, 250_000]),
       fmt=st.sampled_from(["python", "perl", "json"]),
       bpf=st.sampled_from(["host 192.0.2.10", "ip6 or host 192.0.2.10",
                            "udp and host 192.0.2.10 and not port 53"]))
def test_equal_to_the_replay_for_any_settings(tmp_path, magic, window, max_hosts, fmt, bpf):
    """The fast path and its plain twin, the replay, over combinations of settings."""
    cfg = dict(window, dump_format=fmt, bpf=bpf)
    if max_hosts is not None:
        cfg["max_hosts"] = max_hosts
    d = tempfile.mkdtemp(dir=tmp_path)            # an example may run again
    cap = empty_file(os.path.join(d, "empty.pcap"), *magic)
    fast, plain = both(d, cap, **cfg)
    assert fast == plain


@pytest.mark.parametrize("serial", ["serial", "batch", "libpcap"])
def test_equal_to_every_replay_mode(tmp_path, monkeypatch, serial):
    monkeypatch.setenv("NCSNIFFER_REPLAY", serial)
    cap = empty_file(str(tmp_path / "empty.pcap"))
    fast, plain = both(str(tmp_path), cap, max_hosts=10)
    assert fast == plain


def test_files_and_settings_it_leaves_to_the_replay(tmp_path):
    d = str(tmp_path)
    one = str(tmp_path / "one.pcap")
    pcapgen.write_pcap(one, 1, [(1.5, pcapgen.frame(1, pcapgen.ip_packet(
        "192.0.2.10", "198.51.100.1", "udp", b"x")), 43)])
    ng = str(tmp_path / "empty.pcapng")
    pcapgen.write_pcapng(ng, 1, [])
    sll = empty_file(str(tmp_path / "sll.pcap"), linktype=113)
    bad_link = empty_file(str(tmp_path / "bad.pcap"), linktype=147)
    empty = empty_file(str(tmp_path / "empty.pcap"))
    log = io.StringIO()
    for path in (one, ng, sll, bad_link, str(tmp_path / "missing.pcap")):
        assert emptycapture.replay(settings_of(d), path, log) is None, path
    for cfg in ({"bpf": "host 192.0.2.10 and nonsense"}, {"connections": True},
                {"resolve": True}):
        assert emptycapture.replay(settings_of(d, **cfg), empty, log) is None, cfg
    assert log.getvalue() == ""


@pytest.mark.integration
def test_a_bad_filter_still_fails_on_an_empty_file(tmp_path):
    cap = empty_file(str(tmp_path / "empty.pcap"))
    conf = write_config(str(tmp_path), bpf="host 192.0.2.10 and nonsense")
    result = subprocess.run([NC_SNIFFER, "-q", "-c", conf, "-r", cap, "start"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "nonsense" in result.stderr


def _top(modules: set) -> set:
    return {m.split(".")[0] for m in modules}


HEAVY = {"numpy", "dns", "daemon", "psutil", "prometheus_client", "clickhouse_driver", "dpkt"}


@pytest.mark.integration
def test_status_and_an_empty_replay_import_nothing_heavy(tmp_path):
    d = str(tmp_path)
    conf = write_config(d, bpf="host 192.0.2.10")
    cap = empty_file(str(tmp_path / "empty.pcap"))
    status = imported_modules(["-c", conf, "status"], d)
    assert not _top(status) & HEAVY and "socket" not in status
    assert not _top(imported_modules(["-q", "-c", conf, "-r", cap, "start"], d)) & HEAVY
    assert os.path.exists(os.path.join(d, "nc.sniffer.stats"))
    replayed = imported_modules(["-q", "-c", conf, "-r", pcapgen_one(d), "start"], d)
    assert "numpy" in _top(replayed)              # a packet: the replay itself ...
    assert not {"ncsniffer.events", "logging", "threading"} & replayed   # ... no events file


def pcapgen_one(directory: str) -> str:
    path = os.path.join(directory, "one.pcap")
    pcapgen.write_pcap(path, 1, [(1.5, pcapgen.frame(1, pcapgen.ip_packet(
        "192.0.2.10", "198.51.100.1", "udp", b"x")), 43)])
    return path


@pytest.mark.integration
def test_a_cached_page_imports_no_renderer(tmp_path):
    (tmp_path / "stats").write_text("")
    (tmp_path / "cache.0").write_text("the cached report\n")
    conf = tmp_path / "cgi.conf"
    conf.write_text(repr({"stats": str(tmp_path / "stats"), "cache": str(tmp_path / "cache"),
                          "refresh": 86400}))
    code = ("import sys\nfrom ncsniffer.reportcgi import cgi_main\nrc = cgi_main()\n"
            "print('MODULES', ' '.join(sys.modules))\nsys.exit(rc)\n")
    result = subprocess.run([sys.executable, "-c", code, "-c", str(conf), "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "the cached report" in result.stdout
    loaded = set(result.stdout.split("MODULES", 1)[1].split())
    assert not loaded & {"ncsniffer.dumpfile", "ncsniffer.layout", "ncsniffer.htmlreport",
                         "numpy", "shutil", "socket", "urllib.parse", "ipaddress"}


@pytest.mark.integration
def test_numpy_starts_no_thread_pool(tmp_path):
    """OpenBLAS's threads spin beside a replay on two cores; the package keeps them
    from starting (a variable the user set wins)."""
    code = ("import os, ncsniffer.batch\n"
            "print(len(os.listdir('/proc/self/task')), os.environ['OPENBLAS_NUM_THREADS'])\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=env, check=True).stdout.split()
    assert out == ["1", "1"]
    env["OPENBLAS_NUM_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=env, check=True).stdout.split()
    assert out[1] == "2"
