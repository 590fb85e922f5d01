"""The fleet report from ClickHouse (issue 14, SPEC 11): the coalescer's
``source: 'clickhouse'`` keys, the composite from rows (pure), a store that is
down, and a fleet — two clickhouse-server shards behind a Distributed table,
three sniffers — whose report equals, number for number, the one the ssh +
rsync coalescing builds from the same three stats files, fetched over real ssh
and rsync from three sshd hosts in network namespaces."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from ncsniffer import coalesce, fleet
from ncsniffer.coalesceconf import DEFAULT_WINDOW, Store, rem_wchk
from ncsniffer.errors import CoalesceError
from tests.conftest import ROOT, run_cli, write_config
from tests.daemonutil import free_port
from tests.sshlab import remote_dump, ssh_lab

CGI = os.path.join(ROOT, "scripts", "nc.sniffer.coalesce.cgi")
URL = "clickhouse://127.0.0.1:9000/ncs"


def store_conf(tmp_path, **keys) -> dict:
    return {"cache": str(tmp_path / "sniffer.cache"), "source": "clickhouse", "url": URL,
            **keys}


# --------------------------------------------------------------------------- configuration

def test_clickhouse_source_keys_are_checked(tmp_path):
    cfg = rem_wchk(store_conf(tmp_path, sniffers=["s1", "s2"], window=600, timeout=5))
    assert cfg.sources == [] and cfg.store == Store("127.0.0.1", 9000, "ncs", window=600,
                                                    sniffers=("s1", "s2"), timeout=5)
    assert cfg.store.bounds(1_000_000.5) == (1_000_000 - 600, 1_000_000)
    fixed = rem_wchk(store_conf(tmp_path, database="other", sniffers="s1",
                                **{"from": "2020-09-13 12:26:40", "to": 1_600_003_600}))
    assert fixed.store.bounds(0) == (1_600_000_000, 1_600_003_600)
    assert (fixed.store.database, fixed.store.sniffers) == ("other", ("s1",))
    assert rem_wchk(store_conf(tmp_path)).store.window == DEFAULT_WINDOW
    assert rem_wchk(store_conf(tmp_path, url="clickhouse://u:pw@[::1]:9001/x")).store.url == \
        "clickhouse://[::1]:9001/x"                   # no password in messages


@pytest.mark.parametrize("keys,message", [
    ({"source": "rsync"}, "invalid source 'rsync': use 'ssh' or 'clickhouse'"),
    ({"url": None}, "missing url for source 'clickhouse'"),
    ({"url": "http://x:8123/"}, "invalid url 'http://x:8123/': use 'clickhouse://HOST:PORT/DB'"),
    ({"database": "a;b"}, "invalid database 'a;b': letters, digits and _"),
    ({"window": "1h"}, "invalid window '1h': whole seconds, 1 to 31622400"),
    ({"window": 0}, "invalid window '0': whole seconds, 1 to 31622400"),
    ({"window": 60, "from": 1}, "use 'window' or 'from' and 'to', not both"),
    ({"from": 1}, "a fixed window needs both 'from' and 'to'"),
    ({"from": "yesterday", "to": 5},
     "invalid from 'yesterday': epoch seconds or 'YYYY-MM-DD HH:MM:SS' (UTC)"),
    ({"from": 5, "to": 5}, "invalid window: 'from' (5) is not before 'to' (5)"),
    ({"sniffers": []}, "invalid sniffers '[]': use a list of names"),
    ({"sniffers": ["a", 3]}, "invalid sniffers '['a', 3]': use a list of names"),
    ({"src": {"h": {}}}, "'src' goes with source 'ssh', not 'clickhouse'"),
    ({"update": 10004}, "'update' goes with source 'ssh', not 'clickhouse'"),
])
def test_clickhouse_source_messages(tmp_path, keys, message):
    with pytest.raises(CoalesceError) as err:
        rem_wchk(store_conf(tmp_path, **keys))
    assert str(err.value) == message


def test_store_keys_need_the_clickhouse_source(tmp_path):
    with pytest.raises(CoalesceError) as err:
        rem_wchk({"cache": str(tmp_path / "c"), "src": {"h": {}}, "window": 60})
    assert str(err.value) == "'window' needs source 'clickhouse'"


# --------------------------------------------------------------------------- rows -> composite

def row(sniffer, peer, b, c, r, w, names=(), e=1000, s=900, last=1060, instance="nc.sniffer"):
    return (sniffer, instance, peer, b, c, r, w, list(names), e, s, last)


def test_rows_merge_per_peer_as_the_coalescer_merges_files():
    rows = [row("s2", "10.0.0.1", 100, 2, 60.0, 3600.0, ["b.example"], e=1010, s=950),
            row("s1", "10.0.0.1", 50, 1, 120.0, 7200.0, ["a.example"], e=1000, s=900),
            row("s1", "10.0.0.2", 7, 1, 1.5, 10.0, last=1200)]
    header, merged = fleet.composite(Store("h", 9000, "ncs"), rows, (0, 3600))
    assert merged["10.0.0.1"] == {"B": 150, "C": 3, "E": 1010, "N": ["a.example", "b.example"],
                                  "R": 180, "S": 900, "T": 0, "W": 10800}
    assert merged["10.0.0.2"]["N"] == [] and len(merged) == 2
    assert header == [
        "# ncsniffer composite of 2 sniffers from clickhouse://h:9000/ncs",
        "# window:\t1970-01-01 00:00:00 - 1970-01-01 01:00:00 UTC",
        "", "# host:\ts1/nc.sniffer", "# last interval:\t1970-01-01 00:20:00 UTC",
        "# traffic:\t57 bytes, 2 packets",
        "", "# host:\ts2/nc.sniffer", "# last interval:\t1970-01-01 00:17:40 UTC",
        "# traffic:\t100 bytes, 2 packets",
        "", "# grand total all hosts", "# traffic:\t157 bytes, 4 packets", "# users:\t2"]


def test_query_filters_sniffers_only_when_asked():
    only = fleet.query_text(Store("h", 9000, "ncs", sniffers=("a",)))
    assert "AND sniffer IN %(sniffers)s" in only
    text = fleet.query_text(Store("h", 9000, "ncs"))
    assert " IN " not in text and "FROM `ncs`.ncsniffer_traffic FINAL" in text


# --------------------------------------------------------------------------- real servers

integration = pytest.mark.integration


def cgi(conf_path: str, *args: str) -> subprocess.CompletedProcess:
    """The coalescer's terminal form, as a process (TZ=UTC: the report shows local times)."""
    return subprocess.run([sys.executable, CGI, "-c", conf_path, *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "TZ": "UTC"})


@integration
def test_a_store_that_is_down_is_one_line_and_exit_2(tmp_path):
    port = free_port(socket.SOCK_STREAM)             # nothing listens there
    conf = tmp_path / "coalesce.conf"
    conf.write_text(repr(store_conf(tmp_path, url=f"clickhouse://127.0.0.1:{port}/ncs",
                                    timeout=2)))
    result = cgi(str(conf))
    assert result.returncode == 2, result
    assert result.stdout == (f"cannot read clickhouse://127.0.0.1:{port}/ncs: Code: 210. "
                             f"Connection refused (127.0.0.1:{port})\n")
    assert result.stderr == ""
    bad = tmp_path / "bad.conf"
    bad.write_text(repr(store_conf(tmp_path, window="soon")))
    result = cgi(str(bad))
    assert (result.returncode, result.stdout) == (1, "invalid window 'soon': whole seconds, "
                                                     "1 to 31622400\n")


SNIFFERS = ("s1", "s2", "s3")          # s1, s2 export to shard A, s3 to shard B
DISTRIBUTED = """CREATE TABLE fleet.ncsniffer_traffic AS ncs.ncsniffer_traffic
ENGINE = Distributed(fleet, ncs, ncsniffer_traffic)"""


def body_of(report: str) -> str:
    """The report below its header (the header says where the numbers came from)."""
    return report[report.index("\nComposite report, "):]


def traffic(path: str, seed: int, peers: int, n: int = 1500, span: int = 1500) -> None:
    """``n`` UDP packets over ``span`` seconds (beyond the 300 s of a first rate
    update: R, W and E move) between ME and ``peers`` peers."""
    import random
    from ncsniffer import decode, pcapgen
    from tests.test_clickhouse import ME, T0
    rng = random.Random(seed)
    records = []
    for i in range(n):
        peer = f"198.51.100.{1 + rng.randrange(peers)}"
        src, dst = (peer, ME) if rng.random() < 0.5 else (ME, peer)
        pkt = pcapgen.ip_packet(src, dst, "udp", b"x" * rng.randrange(400))
        records.append((T0 + span * i / n, pcapgen.frame(decode.DLT_EN10MB, pkt)))
    pcapgen.write_pcap(path, decode.DLT_EN10MB, records)


def report_conf(path, cache, **keys) -> str:
    path.write_text(repr({"cache": str(cache), **keys}))
    return str(path)


def shown(records: dict) -> dict:
    """What the report shows of each record: R, W, E and the names."""
    return {ip: (r["R"], r["W"], r["E"], r["N"]) for ip, r in records.items()}


NO_DAEMON = "127.0.0.1:9"      # the replays are over: no daemon listens, none is asked


def ssh_conf(path, lab, cache, stats: dict) -> str:
    """The ssh road: each host runs nc.sniffer.dump over ssh (its file is fresh, so no
    daemon is asked) and rsync fetches its stats file."""
    src = {name: {"exec": remote_dump(file, NO_DAEMON, 3600), "fetch": file}
           for name, file in stats.items()}
    return report_conf(path, cache, src=src, ssh=["ssh", "-F", lab.ssh], timeout=20)


@integration
@pytest.mark.slow
def test_fleet_report_from_two_shards_equals_the_ssh_composite(tmp_path):
    """Three sniffers (replays of overlapping captures) export to two shards; the report
    through the Distributed table equals, number for number and in both groupings, the
    report the coalescer builds from the same three stats files over real ssh + rsync:
    each sniffer's host is a network namespace with its own sshd (tests/sshlab.py)."""
    from tests.chserver import Server
    from tests.test_clickhouse import ME, T0
    for d in ("a", "b", "ssh", "ch", "ch3"):
        (tmp_path / d).mkdir()
    a, b = Server(str(tmp_path / "a")), Server(str(tmp_path / "b"))
    a.write_config("fleet", (a.port, b.port))
    try:
        a.start(), b.start()
        with ssh_lab(str(tmp_path / "hosts"), SNIFFERS, prefix="ncfl", octet=214) as lab:
            stats = {}
            for i, name in enumerate(SNIFFERS):
                work = lab.home(name)                   # the sniffer runs "on" its host
                cap = os.path.join(work, "in.pcap")
                traffic(cap, seed=i + 1, peers=12 + 6 * i)     # peers in common and not
                server = b if name == "s3" else a
                conf = write_config(work, bpf=f"host {ME}", clickhouse={
                    "url": server.url, "sniffer": name, "interval": 30})
                result = run_cli("-c", conf, "-r", cap, "start")
                assert result.returncode == 0 and ", 0 rows lost" in result.stderr, \
                    result.stderr
                stats[name] = os.path.join(work, "nc.sniffer.stats")
            by_ssh = ssh_conf(tmp_path / "ssh.conf", lab, tmp_path / "ssh" / "cache", stats)
            reports = {grouping: cgi(by_ssh, grouping) for grouping in ("1", "0")}
            for name, file in stats.items():                # rsync copied each file as is
                with open(file, "rb") as there, open(tmp_path / "ssh" / f"{name}.stats",
                                                     "rb") as here:
                    assert here.read() == there.read()
        for ssh in reports.values():
            assert ssh.returncode == 0 and ssh.stderr == "", ssh
            assert "FAILED" not in ssh.stdout
            assert all(f"# host:\t{name}\n" in ssh.stdout for name in SNIFFERS)
        assert a.query("SELECT DISTINCT sniffer FROM ncs.ncsniffer_traffic ORDER BY sniffer") \
            == [("s1",), ("s2",)]
        a.query("CREATE DATABASE fleet")
        a.query(DISTRIBUTED)
        url = f"clickhouse://127.0.0.1:{a.port}/fleet"
        window = {"from": T0 - 60, "to": T0 + 7200}
        by_ch = report_conf(tmp_path / "ch.conf", tmp_path / "ch" / "cache",
                            source="clickhouse", url=url, **window)
        for grouping, ssh in reports.items():
            ch = cgi(by_ch, grouping)
            assert ch.returncode == 0, ch.stdout
            assert body_of(ch.stdout) == body_of(ssh.stdout)
            assert "users\t\t= 24\n" in ch.stdout            # 12, 18 and 24 peers overlap
        assert "# ncsniffer composite of 3 sniffers from clickhouse://" in ch.stdout
        ssh_recs = coalesce.read_stats(str(tmp_path / "ssh" / "composite.stats")).records
        ch_recs = coalesce.read_stats(str(tmp_path / "ch" / "composite.stats")).records
        assert len(ssh_recs) == 24 and shown(ch_recs) == shown(ssh_recs)
        assert all(r["W"] > 0 for r in ch_recs.values())            # rates have moved
        assert sum(r["C"] for r in ch_recs.values()) == 3 * 1500    # the window's packets
        one = cgi(report_conf(tmp_path / "ch3.conf", tmp_path / "ch3" / "cache",
                              source="clickhouse", url=url, sniffers=["s3"], **window), "0")
        assert "users\t\t= 24\n" in one.stdout and "# host:\ts3/nc.sniffer" in one.stdout
        assert "s1/" not in one.stdout and "s2/" not in one.stdout
    finally:
        a.kill()
        b.kill()
